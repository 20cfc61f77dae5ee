"""Print a results/summary.csv as the markdown table the README and docs show (they come from a
run's CSV, not retyped; tests/test_docs.py renders the README's CSV again and compares): one row
per artifact, the eager baseline first in each branch.

    python scripts/summary_table.py results/summary.csv
"""

import sys

import pandas as pd

from pqv.plan.registry import Status

FORMAT_ORDER = {"eager": 0, "ptl": 1, "pte": 2, "onnx": 3, "ort": 4}


def labels(r) -> tuple[str, str]:
    """A summary row's branch ('dense', 'l2 0.25') and precision ('fp32', 'int8_dynamic x86')."""
    branch = r["importance"] if r["ratio"] == 0 else f"{r['importance']} {r['ratio']:g}"
    return branch, r["precision"] if r["engine"] == "none" else f"{r['precision']} {r['engine']}"


def table(path: str) -> list[str]:
    """The table's lines, then a blank line and the line that says how it was measured."""
    t = pd.read_csv(path)
    t = t.assign(order=t["format"].map(FORMAT_ORDER)).sort_values(["model", "ratio", "importance", "order", "precision"])
    several = t["model"].nunique() > 1
    header = "| branch | precision | format | top-1 % | latency ms (min–max) | size MB | params | MACs |"
    lines = [("| model " if several else "") + header, ("|---" if several else "") + "|---|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        branch, precision = labels(r)
        status = "" if Status.shippable(r["status"]) else f" ({Status.word(r['status'])})"
        status += " (without PQV)" if r.get("without_pqv") in (True,) else ""  # the bar (evaluate.without_pqv); NaN: an older CSV
        lines.append(
            ("| " + r["model"] + " " if several else "") + f"| {branch} | {precision} | {r['format']}{status} | {r['top1']:.2f} | "
            f"{r['latency_ms_median']:.2f} ({r['latency_ms_min']:.2f}–{r['latency_ms_max']:.2f}) | "
            f"{r['size_mb']:.2f} | {r['params'] / 1e3:.0f} k | {r['macs'] / 1e6:.1f} M |"
        )
    first = t.iloc[0]
    return lines + [
        "",
        f"{first['cpu']}{_features(first)}, torch {first['torch']}; latency: batch {first['batch_size']}, "
        f"{first['threads']} thread(s), median of {first['runs']} after {first['warmup']} warm-ups.",
    ]


def _features(row) -> str:
    """The CPU's vector features: two hosts named alike (AVX2 or AVX-512 EPYC) train to other top-1s."""
    features = row.get("cpu_features")
    return f" ({features})" if isinstance(features, str) and features else ""


if __name__ == "__main__":
    print("\n".join(table(sys.argv[1])))
