"""docs/latency.md's token-merging table, rendered from the CSV bench/latency.py wrote (issue 42).

    python bench/merge_table.py docs/data/latency-merge-2026-12-07.csv

One row per file: the model (dense or the 9.375 %-pruned one), the tokens merged per block, the
format, the median latency with the spread of its calls, the speed-up over the file without PQV
(the median of the per-round ratios), the size and the export check's cosine against the parent.
"""

from __future__ import annotations

import sys

import pandas as pd

ORDER = ["without PQV"]  # the bar first, then by format, model and r


def table(csv: str) -> list[str]:
    runs = pd.read_csv(csv)
    runs = runs[runs["row"].isin(ORDER) | (runs["merge_r"] > 0) | runs["row"].str.startswith("pte int8_dynamic")]
    runs = runs.assign(bar=~runs["row"].isin(ORDER), merged=runs["merge_r"]).sort_values(["bar", "format", "pruned", "merged"])
    head = runs.iloc[0]
    lines = [
        f"{head['cpu']} ({head['cpu_features']}), {head['threads']} threads, batch 1, median of {head['runs']} calls after "
        f"{head['warmup']} warm-ups per round, {head['rounds']} interleaved rounds (`{csv}`)",
        "",
        "| file | model | tokens merged per block | format | latency ms, median (min–max) | × without PQV | size MB | cosine |",
        "|---|---|---:|---|---|---:|---:|---:|",
    ]
    for _, r in runs.iterrows():
        rounded = ", round_to 64" if "round_to" in r["pruned"] else ""
        model = "dense" if r["pruned"] == "dense" else f"pruned {r['ratio']:g}{rounded}"
        lines.append(
            f"| {r['row']} | {model} | {int(r['merge_r'])} | .{r['format']} | {r['latency_ms_median']:.1f} "
            f"({r['latency_ms_min']:.1f}–{r['latency_ms_max']:.1f}) | {r['speedup_vs_without_pqv']:.2f} | {r['size_mb']:.1f} | "
            f"{r['cosine_min_vs_parent']:.4f} |"
        )
    return lines


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print("\n".join(table(path)))
