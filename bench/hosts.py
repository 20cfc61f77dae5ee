"""Render bench/latency.py (and bench/gemm_floor.py) CSVs of several runs as one markdown table,
one column per run and host, so docs/latency.md shows every host side by side from the CSVs the
runs wrote, not retyped.

    python bench/hosts.py docs/data/latency-hosts/*.csv

The first table is every row per host, the second where each host's time goes (gemm_floor's
programs: the int8 Linear layers alone, then with attention, then the whole model).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROWS = ["eager fp32 dense", "paper recipe", "onnxruntime int8_dynamic", "onnxruntime int8_dynamic .ort", "pte int8_dynamic",
        "pte int8_dynamic round_to=64",
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
        for row, suffix in (("pte int8_dynamic", ""), ("pte int8_dynamic round_to=64", ", round_to=64")):
            if row in table.index:
                x = table.loc[row, "speedup_vs_ort"]
                goals.append(f"{row}: ×{x:.2f} ORT ({'met' if x >= 1.2 else 'not met'})")
            whole = f"whole model (pte int8_dynamic{suffix})"
            if floor is not None and whole in floor.index:
                x = floor.loc[whole, "x_linears_only"]
                goals.append(f"its whole ÷ its Linear layers {x:.2f} ({'met' if x <= 1.15 else 'not met'})")
        cells.append("; ".join(goals))
    lines.append("| goals (≥ 1.2× ORT; ≤ 1.15× the Linear layers) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PARTS = {  # a part's time: one gemm_floor program's median minus the one below it
    "int8 Linear layers": ("its Linear layers only", None),
    "FP32 attention (matmuls, softmax, slices, transposes)": ("its Linear layers and attention", "its Linear layers only"),
    "LayerNorm, GELU, patch embedding, class token, head": ("whole model (pte int8_dynamic)", "its Linear layers and attention"),
}


def split(paths: list[str]) -> str:
    """Where each host's time goes, from bench/gemm_floor.py's programs: the int8 Linear layers
    alone, what adding PQV's attention between them costs, and what the rest of the model adds."""
    found = [(label, floor) for label, _, floor in runs(paths)
             if floor is not None and "its Linear layers and attention" in floor.index]
    lines = ["| model | part | " + " | ".join(label for label, _ in found) + " |", "|---|---|" + "---|" * len(found)]
    for suffix, model in (("", "workflow default"), (", round_to=64", "round_to: 64")):
        for part, (top, below) in PARTS.items():
            cells = []
            for _, floor in found:
                top_row = top.replace(")", f"{suffix})") if top.endswith(")") else top + suffix
                if top_row not in floor.index:
                    cells.append("—")
                    continue
                whole = floor.loc[f"whole model (pte int8_dynamic{suffix})", "latency_ms_median"]
                ms = floor.loc[top_row, "latency_ms_median"] - (floor.loc[below + suffix, "latency_ms_median"] if below else 0)
                cells.append(f"{ms:.1f} ms ({ms / whole:.0%})")
            widths = found[0][1].loc[f"whole model (pte int8_dynamic{suffix})", "widths"] if found else ""
            lines.append(f"| {model} ({widths}) | {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

if __name__ == "__main__":
    print(render(sys.argv[1:]))
    print()
    print(split(sys.argv[1:]))
