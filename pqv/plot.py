"""Plot stage: the trade-off figures, all drawn from results/summary.csv.

Fig. 2 latency and memory vs pruning ratio per precision; Fig. 4 accuracy vs pruning ratio per
precision; Fig. 5 accuracy per importance; and accuracy vs latency with the Pareto front.
The dense model (ratio 0) is the shared starting point of every importance's curve.
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
    threads = ", ".join(str(t) for t in sorted(table["threads"].unique()))
    axes[0].set(title=f"Latency per image (median, bars: min-max; {threads} threads)", ylabel="latency (ms)")
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


def pareto_front(table: pd.DataFrame) -> pd.DataFrame:
    """Rows not beaten by any other row in both latency (lower) and top-1 (higher)."""
    ordered = table.sort_values(["latency_ms_median", "top1"], ascending=[True, False])
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
