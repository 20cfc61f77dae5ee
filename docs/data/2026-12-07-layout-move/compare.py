import pandas as pd, sys
a = pd.read_csv(sys.argv[2])
b = pd.read_csv(sys.argv[1])
keys = ["model", "importance", "ratio", "precision", "engine", "format"]
timing = {"latency_ms_median", "latency_ms_min", "latency_ms_max", "latency_ms_p90", "latency_ms_paper_method", "peak_rss_mb",
          "rss_model_mb", "accuracy_images_per_s", "cpu", "cpu_features", "node_exclusive", "accuracy_threads", "threads"}
print("rows", len(a), len(b), "new columns", sorted(set(b) - set(a)), "gone", sorted(set(a) - set(b)))
m = a.merge(b, on=keys, suffixes=("_a", "_b"), how="outer", indicator=True)
print(m["_merge"].value_counts().to_dict())
diff = []
for c in sorted((set(a) & set(b)) - set(keys) - timing):
    x, y = m[c + "_a"], m[c + "_b"]
    same = (x == y) | (x.isna() & y.isna())
    if not same.all():
        diff.append((c, int((~same).sum()), list(zip(x[~same][:3], y[~same][:3]))))
print("columns that differ (not timing):", diff)
