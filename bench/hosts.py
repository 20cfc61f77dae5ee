"""Render bench/latency.py (and bench/gemm_floor.py) CSVs of several runs as one markdown table,
one column per run and host, so docs/latency.md shows every host side by side from the CSVs the
runs wrote, not retyped.

    python bench/hosts.py docs/data/latency-hosts/*.csv
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROWS = ["eager fp32 dense", "paper recipe", "onnxruntime int8_dynamic", "pte int8_dynamic", "pte int8_dynamic round_to=64",
        "pte int8_static"]


def runs(paths: list[str]) -> list[tuple[str, pd.DataFrame, pd.DataFrame | None]]:
    """(label, latency rows, the gemm floor rows of the same run if given) per latency CSV."""
    out = []
    for path in sorted(p for p in paths if Path(p).name.startswith("latency-")):
        table = pd.read_csv(path).set_index("row")
        floor_path = Path(path).with_name(Path(path).name.replace("latency-", "gemm_floor-", 1))
        floor = pd.read_csv(floor_path).set_index("row") if floor_path.exists() else None
        first = table.iloc[0]
        label = f"{first['cpu']} ({first.get('cpu_features', '')}), {Path(path).stem.split('-', 1)[1][:10]}"
        out.append((label, table, floor))
    return out


def render(paths: list[str]) -> str:
    found = runs(paths)
    lines = ["| row | " + " | ".join(label for label, _, _ in found) + " |", "|---|" + "---|" * len(found)]
    for row in ROWS:
        cells = []
        for _, table, _ in found:
            if row not in table.index:
                cells.append("—")
                continue
            r = table.loc[row]
            cells.append(f"{r['latency_ms_median']:.1f} ms · ×{r['speedup_vs_ort']:.2f} ORT · ×{r['speedup_vs_paper']:.2f} paper"
                         f" · ×{r['speedup_vs_eager_dense']:.2f} eager")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    cells = []
    for _, table, floor in found:
        goals = []
        for row in ("pte int8_dynamic", "pte int8_dynamic round_to=64"):
            if row in table.index:
                x = table.loc[row, "speedup_vs_ort"]
                goals.append(f"{row}: ×{x:.2f} ORT ({'met' if x >= 1.2 else 'not met'})")
        if floor is not None:
            x = floor.loc["whole model (pte int8_dynamic)", "x_linears_only"]
            goals.append(f"whole ÷ its Linear layers {x:.2f} ({'met' if x <= 1.15 else 'not met'})")
        cells.append("; ".join(goals))
    lines.append("| goals (≥ 1.2× ORT; ≤ 1.15× the Linear layers) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(sys.argv[1:]))
