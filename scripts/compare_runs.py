"""Print two runs' summary.csv side by side as a markdown table: the accuracy of each artifact both
runs made, and what the change between the runs (a config key, such as prune.round_to) did to its
size and accuracy. docs/ show such tables rendered from the runs' CSVs, not retyped.

    python scripts/compare_runs.py results/summary.csv results-other/summary.csv --labels before after
"""

import argparse

import pandas as pd
import summary_table  # scripts/summary_table.py, beside this script

KEYS = ["model", "importance", "ratio", "precision", "engine", "format"]


def table(first: str, second: str, labels: tuple[str, str]) -> list[str]:
    """One line per artifact of both runs: params, MACs and top-1 of each, and the top-1 change."""
    a, b = pd.read_csv(first), pd.read_csv(second)
    both = a.merge(b, on=KEYS, suffixes=("_a", "_b")).sort_values(["model", "ratio", "importance", "format", "precision"])
    x, y = labels
    lines = [
        f"| branch | precision | format | params {x} / {y} | MACs {x} / {y} | top-1 % {x} | top-1 % {y} | Δ top-1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in both.iterrows():
        branch, precision = summary_table.labels(r)
        lines.append(
            f"| {branch} | {precision} | {r['format']} | {r['params_a'] / 1e6:.2f} M / {r['params_b'] / 1e6:.2f} M | "
            f"{r['macs_a'] / 1e6:.1f} M / {r['macs_b'] / 1e6:.1f} M | {r['top1_a']:.2f} | {r['top1_b']:.2f} | "
            f"{r['top1_b'] - r['top1_a']:+.2f} |"
        )
    return lines


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("first")
    p.add_argument("second")
    p.add_argument("--labels", nargs=2, default=("first", "second"))
    args = p.parse_args()
    print("\n".join(table(args.first, args.second, tuple(args.labels))))
