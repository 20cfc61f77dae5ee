"""Render bench/latency.py (and bench/gemm_floor.py) CSVs of several runs as one markdown table,
one column per run and host, so docs/latency.md shows every host side by side from the CSVs the
runs wrote, not retyped.

    python bench/hosts.py docs/data/latency-hosts/*.csv

The first table is every row per host, the second where each host's time goes (gemm_floor's
programs: the int8 Linear layers alone, then with attention, then the whole model), the third the
same by operator, from the ETDump profiles (`pqv profile`) saved as `profile-<date>-<cpu>--<file>.csv`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

ROWS = [
    "eager fp32 dense",
    "without PQV",
    "paper recipe",
    "onnxruntime int8_dynamic",
    "onnxruntime int8_dynamic .ort",
    "onnxruntime int8_dynamic plain",
    "onnxruntime int8_dynamic plain .ort",
    "onnxruntime int8_dynamic per-tensor",
    "onnxruntime int8_dynamic plain per-tensor",
    "onnxruntime int8_dynamic plain round_to=64",
    "onnxruntime int8_static",
    "onnxruntime int8_static .ort",
    "onnxruntime int8_static plain",
    "onnxruntime int8_static QOperator",
    "pte int8_dynamic",
    "pte int8_dynamic round_to=64",
    "pte int8_static",
]
SHIPPED_FORMATS = ("ptl", "pte", "onnx", "ort")  # what `pqv choose` can ship (eager baselines are measured, never shipped)


def fastest_shipped(table: pd.DataFrame) -> str:
    """The fastest row of a run that the workflow ships (a verified file of a workflow recipe, at the
    run's thread count; lever rows say "not a workflow recipe" in their note), and its speed-up over
    the run's ONNX Runtime base (its fastest recipe since 2026-12-03): what `pqv choose` picks by
    latency on that host."""
    threads = table["threads"].mode()[0]
    pruned = table["pruned"] != "dense" if "pruned" in table else True  # the dense bar (without PQV) is not the pruned file
    shipped = table[
        table["format"].isin(SHIPPED_FORMATS)
        & (table["threads"] == threads)
        & pruned
        & ~table["note"].fillna("").str.contains("not a workflow recipe")
    ]
    best = shipped["latency_ms_median"].idxmin()
    bar = f", ×{shipped.loc[best, 'speedup_vs_without_pqv']:.2f} without PQV" if "speedup_vs_without_pqv" in shipped else ""
    return f"{best}: {shipped.loc[best, 'latency_ms_median']:.1f} ms, ×{shipped.loc[best, 'speedup_vs_ort']:.2f} ORT{bar}"


def features(text) -> str:
    """pqv.stages.evaluate.machine's feature names, comma-separated (CSVs before 2026-12 joined them with
    spaces, which reads "AVX-512 AVX-512 VNNI")."""
    from pqv.stages.evaluate import CPU_FEATURES

    found, text = [], str(text) if isinstance(text, str) else ""
    for name in sorted(CPU_FEATURES.values(), key=len, reverse=True):
        if name in text:
            found.append(name)
            text = text.replace(name, "")
    # runs before 2026-12-03 named only AVX-512 and its extensions: none named means an AVX2-class host
    return ", ".join(sorted(found, key=list(CPU_FEATURES.values()).index)) or "no AVX-512"


def stamp(path: str) -> tuple[str, int, str]:
    """(date, run number, what) of a bench CSV named `<kind>-<date>-<cpu>[-runN][--<what>].csv`
    (bench/latency.py's default_out; `--<what>` names a profiled file)."""
    stem, _, what = Path(path).stem.partition("--")
    date = stem.split("-", 1)[1][:10]
    return date, int(stem.rsplit("-run", 1)[1]) if "-run" in stem else 1, what


def runs(paths: list[str]) -> list[tuple[str, pd.DataFrame, pd.DataFrame | None]]:
    """(label, latency rows, the gemm floor rows of the same run if given) per latency CSV."""
    out = []
    for path in sorted((p for p in paths if Path(p).name.startswith("latency-")), key=lambda p: (*stamp(p), p)):
        table = pd.read_csv(path).set_index("row")
        floor_path = Path(path).with_name(Path(path).name.replace("latency-", "gemm_floor-", 1))
        floor = pd.read_csv(floor_path).set_index("row") if floor_path.exists() else None
        first, (date, run, _) = table.iloc[0], stamp(path)
        out.append((f"{first['cpu']} ({features(first.get('cpu_features', ''))}), {date}, run {run}", table, floor))
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
            bar = f" · ×{r['speedup_vs_without_pqv']:.2f} w/o PQV" if "speedup_vs_without_pqv" in r else ""
            cells.append(
                f"{r['latency_ms_median']:.1f} ms · ×{r['speedup_vs_ort']:.2f} ORT · ×{r['speedup_vs_paper']:.2f} paper"
                f" · ×{r['speedup_vs_eager_dense']:.2f} eager{bar}"
            )
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
    lines.append("| fastest file the workflow ships here | " + " | ".join(fastest_shipped(t) for _, t, _ in found) + " |")
    return "\n".join(lines)


# (file, its whole-model row, its Linears-only row, its Linears-and-attention row) in gemm_floor's CSV
PROGRAMS = [
    ("PQV .pte, workflow default", "whole model (pte int8_dynamic)", "its Linear layers only", "its Linear layers and attention"),
    (
        "PQV .pte, round_to: 64",
        "whole model (pte int8_dynamic, round_to=64)",
        "its Linear layers only, round_to=64",
        "its Linear layers and attention, round_to=64",
    ),
    ("ONNX Runtime", "ONNX Runtime: whole model (int8_dynamic)", "ONNX Runtime: its Linear layers only", None),
]
PARTS = [
    "whole model",
    "int8 Linear layers alone",
    "everything outside them (whole − Linear layers)",
    "attention between the Linear layers ((Linear layers + attention) − Linear layers alone)",
]


def split(paths: list[str]) -> str:
    """Where each host's time goes, from bench/gemm_floor.py's programs: each file whole, its int8
    Linear layers alone, everything outside them, and what PQV's attention between them costs."""
    found = [
        (label, floor) for label, _, floor in runs(paths) if floor is not None and "its Linear layers and attention" in floor.index
    ]
    lines = ["| file (widths) | part | " + " | ".join(label for label, _ in found) + " |", "|---|---|" + "---|" * len(found)]
    for name, whole_row, linears_row, attention_row in PROGRAMS:
        if not any(whole_row in floor.index for _, floor in found):
            continue
        widths = next(floor.loc[whole_row, "widths"] for _, floor in found if whole_row in floor.index)
        for part in PARTS:
            cells = []
            for _, floor in found:
                if whole_row not in floor.index or (part == PARTS[3] and attention_row is None):
                    cells.append("—")
                    continue
                ms = floor["latency_ms_median"]
                value = {
                    PARTS[0]: ms[whole_row],
                    PARTS[1]: ms[linears_row],
                    PARTS[2]: ms[whole_row] - ms[linears_row],
                    PARTS[3]: ms[attention_row] - ms[linears_row] if attention_row else None,
                }[part]
                cells.append(f"{value:.1f} ms ({value / ms[whole_row]:.0%})")
            lines.append(f"| {name} ({widths}) | {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ETDump operators (pqv profile on a .pte) in the groups the time outside the GEMMs is argued in
GROUPS = {
    "int8 Linear GEMMs (quantizing their inputs included)": ("QDU8",),
    "attention matmuls (`bmm`)": ("Batch Matrix Multiply",),
    "softmax": ("Softmax",),
    "dtype conversions (portable kernels)": ("_to_dim_order_copy",),
    "LayerNorm twin (FP32 means, subtract, square, multiply, rsqrt)": (
        "Fully Connected (NC, F32)",
        "Subtract",
        "Square",
        "Reciprocal Square Root",
        "Multiply (ND)",
    ),
    "transposes, slices, reshapes, copies": ("Transpose", "Slice", "Static Reshape", "Copy"),
    "GELU": ("GELU",),
    "patch embedding (convolution)": ("Convolution",),
    "residual adds": ("Add (ND)",),
}


def operators(paths: list[str]) -> str:
    """`profile-<date>-<cpu>--<file>.csv` (pqv profile of a .pte): milliseconds (share) per group
    of operators, one column per file; what no group names (delegate entry, portable dispatch,
    runtime) is the last row."""
    tables = {f"{stamp(p)[2]}, {stamp(p)[0]}": pd.read_csv(p) for p in sorted(paths, key=len) if Path(p).name.startswith("profile-")}
    for t in tables.values():  # each operator's group, or None: no group names it
        t["group"] = t["operator"].map(lambda op: next((g for g, needles in GROUPS.items() if any(n in op for n in needles)), None))
    lines = ["| operators | " + " | ".join(f"{label} (ms, share)" for label in tables) + " |", "|---|" + "---|" * len(tables)]
    for group in [*GROUPS, None]:
        cells = []
        for t in tables.values():
            rows = t[t["group"].isna()] if group is None else t[t["group"] == group]
            ms = rows["self_cpu_ms"].sum()
            cells.append("—" if rows.empty else f"{ms:.1f} ({ms / t['self_cpu_ms'].sum():.0%})")
        lines.append(f"| {group or 'delegate entry, portable dispatch, runtime'} | " + " | ".join(cells) + " |")
    lines.append("| total | " + " | ".join(f"{t['self_cpu_ms'].sum():.1f}" for t in tables.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(sys.argv[1:]))
    print()
    print(split(sys.argv[1:]))
    print()
    print(operators(sys.argv[1:]))
