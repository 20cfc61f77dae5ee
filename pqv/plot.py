"""Plot stage: the trade-off figures, all drawn from results/summary.csv.

Fig. 2 latency and memory vs pruning ratio per precision; Fig. 4 accuracy vs pruning ratio per
precision; Fig. 5 accuracy per importance; Fig. 6 models; Fig. 7 engines; and accuracy vs
latency with the Pareto front.
The dense model (ratio 0) is the shared starting point of every importance's curve.
Artifacts that failed their export check (`status: rejected`) are drawn with a red cross over
their point and never count on the Pareto front.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

FIGURES = {}


def figure(name):
    def register(fn):
        FIGURES[name] = fn
        return fn

    return register


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row, with_model: bool) -> str:
    engine = "" if row["engine"] == "none" else f" {row['engine']}"
    return (f"{row['model']}: " if with_model else "") + f"{row['precision']}{engine} .{row['format']}"


def _curves(table: pd.DataFrame, importance: str):
    """Per (model, precision, engine, format): rows of one importance plus the dense rows, by ratio."""
    keys = ["model", "precision", "engine", "format"]
    sub = table[(table["importance"] == importance) | (table["ratio"] == 0)]
    with_model = table["model"].nunique() > 1
    for _, group in sub.groupby(keys, sort=True):
        group = group.sort_values("ratio")
        yield _label(group.iloc[0], with_model), group


def rejected(table: pd.DataFrame) -> pd.Series:
    """Rows whose artifact failed its export check (summaries from before `status` have none)."""
    return table["status"].eq("rejected") if "status" in table else pd.Series(False, index=table.index)


def mark_rejected(ax, g: pd.DataFrame, x: str, y: str) -> None:
    """A red cross over every rejected point of a curve, labelled once per axes."""
    bad = g[rejected(g)]
    if bad.empty:
        return
    seen = any(h.get_label() == REJECTED_LABEL for h in ax.collections)
    ax.scatter(bad[x], bad[y], marker="x", s=90, color="red", zorder=5, label=None if seen else REJECTED_LABEL)


REJECTED_LABEL = "rejected by the export check"


def main_importance(table: pd.DataFrame) -> str:
    pruned = [i for i in table["importance"].unique() if i != "none"]
    return "taylor" if "taylor" in pruned else (sorted(pruned)[0] if pruned else "none")


@figure("fig2_latency_memory")
def latency_memory(table: pd.DataFrame):
    plt = _plt()
    imp = main_importance(table)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for label, g in _curves(table, imp):
        err = [g["latency_ms_median"] - g["latency_ms_min"], g["latency_ms_max"] - g["latency_ms_median"]]
        axes[0].errorbar(g["ratio"], g["latency_ms_median"], yerr=err, marker="o", capsize=3, label=label)
        axes[1].plot(g["ratio"], g["size_mb"], marker="o", label=label)
        axes[2].plot(g["ratio"], g["peak_rss_mb"], marker="o", label=label)
        for ax, y in zip(axes, ("latency_ms_median", "size_mb", "peak_rss_mb")):
            mark_rejected(ax, g, "ratio", y)
    threads = ", ".join(str(int(t)) for t in sorted(table["threads"].unique()))
    axes[0].set(title=f"Latency per image (median, bars: min-max; threads: {threads})", ylabel="latency (ms)")
    axes[1].set(title="Model file size", ylabel="size (MB)")
    axes[2].set(title="Peak resident memory (load + 1 image)", ylabel="peak RSS (MB)")
    for ax in axes:
        ax.set_xlabel(f"pruning ratio ({imp} importance)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Fig. 2: latency and memory vs pruning and precision")
    return fig


@figure("fig4_accuracy")
def accuracy(table: pd.DataFrame):
    plt = _plt()
    imp = main_importance(table)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, g in _curves(table, imp):
        ax.plot(g["ratio"], g["top1"], marker="o", label=label)
        mark_rejected(ax, g, "ratio", "top1")
    ax.set(xlabel=f"pruning ratio ({imp} importance)", ylabel="top-1 accuracy (%)",
           title="Fig. 4: accuracy of the exported artifact vs pruning and precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


@figure("fig5_importance")
def importance(table: pd.DataFrame):
    plt = _plt()
    ref = table.sort_values(["precision", "engine", "format"]).iloc[0]
    sub = table[(table["precision"] == ref["precision"]) & (table["engine"] == ref["engine"]) & (table["format"] == ref["format"])]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    dense = sub[sub["ratio"] == 0]
    for (model, imp), g in sub[sub["ratio"] > 0].groupby(["model", "importance"]):
        g = pd.concat([dense[dense["model"] == model], g]).sort_values("ratio")
        label = f"{model}: {imp}" if table["model"].nunique() > 1 else imp
        ax.plot(g["ratio"], g["top1"], marker="o", label=label)
    ax.set(xlabel="pruning ratio", ylabel="top-1 accuracy (%)",
           title=f"Fig. 5: importance criteria compared ({ref['precision']} .{ref['format']}, after finetune)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _grouped_bars(ax, frame: pd.DataFrame, x: str, series: str, value: str, fmt: str = "{:.1f}") -> None:
    """Bars of `value` at each `x`, one colour per `series`, labelled with their values."""
    xs = sorted(frame[x].unique(), key=str)
    groups = sorted(frame[series].unique(), key=str)
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        sub = frame[frame[series] == g].set_index(x)
        heights = [sub[value].get(v, float("nan")) for v in xs]
        bad = [sub["status"].get(v) == "rejected" for v in xs]
        bars = ax.bar([j + i * width for j in range(len(xs))], heights, width, label=str(g))
        for bar, is_bad in zip(bars, bad):
            if is_bad:  # a rejected recipe stays visible, struck through
                bar.set(hatch="xx", edgecolor="red")
        ax.bar_label(bars, labels=[("rejected " if b else "") + fmt.format(h) if h == h else "" for h, b in zip(heights, bad)],
                     fontsize=7)
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(xs))], [str(v) for v in xs])
    ax.margins(y=0.15)


def _recipe(table: pd.DataFrame) -> pd.Series:
    """The most compressed shipped recipe present: the one the comparison figures use."""
    shipped = table[table["format"] != "eager"]
    shipped = shipped[~rejected(shipped)] if (~rejected(shipped)).any() else shipped
    order = ["int8_static", "int8_dynamic", "int4_weight", "fp16", "fp32"]
    shipped = shipped.assign(rank=shipped["precision"].map({p: i for i, p in enumerate(order)}))
    return shipped.sort_values(["rank", "engine", "format"]).iloc[0]


@figure("fig6_models")
def models(table: pd.DataFrame):
    plt = _plt()
    ref = _recipe(table)
    imp = main_importance(table)
    sub = table[(table["precision"] == ref["precision"]) & (table["engine"] == ref["engine"])
                & (table["format"] == ref["format"]) & ((table["importance"] == imp) | (table["ratio"] == 0))]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    _grouped_bars(axes[0], sub, "ratio", "model", "latency_ms_median", "{:.2f}")
    _grouped_bars(axes[1], sub, "ratio", "model", "top1")
    axes[0].set(xlabel=f"pruning ratio ({imp})", ylabel="latency per image, median (ms)", title="Latency")
    axes[1].set(xlabel=f"pruning ratio ({imp})", ylabel="top-1 accuracy (%)", title="Accuracy")
    for ax in axes:
        ax.legend(fontsize=8, title="model")
        ax.grid(alpha=0.3, axis="y")
    n = table["model"].nunique()
    fig.suptitle(f"Fig. 6: models compared ({ref['precision']} {ref['engine']} .{ref['format']}; {n} model{'s' * (n > 1)} configured)")
    return fig


@figure("fig7_engines")
def engines(table: pd.DataFrame):
    plt = _plt()
    quantized = table[table["engine"] != "none"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    if quantized.empty:
        for ax in axes:
            ax.text(0.5, 0.5, "no quantized precision configured", ha="center", va="center", transform=ax.transAxes)
    else:
        imp = main_importance(table)
        sub = quantized[(quantized["importance"] == imp) | (quantized["ratio"] == 0)]
        sub = sub.assign(engine_label=sub["precision"] + "\n" + sub["engine"] + " ." + sub["format"])
        _grouped_bars(axes[0], sub, "engine_label", "ratio", "latency_ms_median", "{:.2f}")
        _grouped_bars(axes[1], sub, "engine_label", "ratio", "top1")
        for ax in axes:
            ax.legend(fontsize=8, title=f"pruning ratio ({imp})")
            ax.grid(alpha=0.3, axis="y")
    axes[0].set(ylabel="latency per image, median (ms)", title="Latency")
    axes[1].set(ylabel="top-1 accuracy (%)", title="Accuracy")
    fig.suptitle("Fig. 7: quantized engines compared")
    return fig


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Verified rows not beaten by any other verified row in both latency (lower) and top-1 (higher)."""
    ordered = table[~rejected(table)].sort_values(["latency_ms_median", "top1"], ascending=[True, False])
    best, keep = float("-inf"), []
    for idx, row in ordered.iterrows():
        if row["top1"] > best:
            keep.append(idx)
            best = row["top1"]
    return table.loc[keep]


@figure("pareto_accuracy_latency")
def pareto(table: pd.DataFrame):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for (prec, fmt), g in table.groupby(["precision", "format"]):
        ax.scatter(g["latency_ms_median"], g["top1"], label=f"{prec} .{fmt}", s=30)
        mark_rejected(ax, g, "latency_ms_median", "top1")
    front = pareto_front(table).sort_values("latency_ms_median")
    ax.plot(front["latency_ms_median"], front["top1"], "k--", lw=1, label="Pareto front")
    for _, r in front.iterrows():
        ax.annotate(f"{r['importance']} {r['ratio']:g}", (r["latency_ms_median"], r["top1"]), fontsize=7,
                    xytext=(4, -10), textcoords="offset points")
    ax.set(xlabel="latency per image, median (ms)", ylabel="top-1 accuracy (%)",
           title="Accuracy vs latency of every artifact (front: nothing is both faster and more accurate)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def run(summary_csv: str, outdir: str) -> list[str]:
    from .io import atomic_path

    plt = _plt()
    table = pd.read_csv(summary_csv)
    table["engine"] = table["engine"].fillna("none")
    table["status"] = table["status"].fillna("verified") if "status" in table else "verified"
    Path(outdir).mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        fig = draw(table)
        fig.tight_layout()
        path = Path(outdir) / f"{name}.png"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            fig.savefig(f, dpi=120, format="png")
        plt.close(fig)
        written.append(str(path))
    return written
