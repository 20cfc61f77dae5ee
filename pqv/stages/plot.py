"""Plot stage: the trade-off figures, all drawn from results/summary.csv.

Fig. 2 latency and memory vs pruning ratio per precision; Fig. 4 accuracy vs pruning ratio per
precision; Fig. 5 accuracy per importance; Fig. 6 models; Fig. 7 engines; and accuracy vs
latency with the Pareto front. A sweep may hold any number of models, importances, engines and
formats, and a model may lack some formats: figures that compare recipes of one model have one
row of panels per model, and bars are keyed by every column that tells two rows apart.
The dense model (ratio 0) is the shared starting point of every importance's curve.
Artifacts that failed their export check (`status: rejected`) are drawn with a red cross over
their point (hatched bars) and never count on the Pareto front.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..plan import registry
from ..plan.registry import DENSE, EAGER, NO_ENGINE, NO_STATUS, Status

FIGURES = {}  # name -> drawing function, for every name of registry.FIGURES (in its order)
RECIPE = ["precision", "engine", "merge_r", "format"]  # merge_r: tokens merged per block (0: none)
REJECTED_LABEL = "rejected by the export check, failed, or unchecked"


def figure(name):
    if name not in registry.FIGURES:
        raise ValueError(f"figure {name!r} is not in pqv.plan.registry.FIGURES (the workflow names the files it draws)")

    def register(fn):
        FIGURES[name] = fn
        return fn

    return register


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _recipe_label(row) -> str:
    engine = "" if row["engine"] == NO_ENGINE else f" {row['engine']}"
    merged = f" merging {int(row['merge_r'])}" if row.get("merge_r", 0) else ""
    return f"{row['precision']}{engine}{merged} .{row['format']}"


def _per_model(table: pd.DataFrame, ncols: int, width: float = 5.0, height: float = 4.2):
    """A figure with one row of `ncols` panels per model: [(model, its rows, its axes)]."""
    plt = _plt()
    models = sorted(table["model"].unique(), key=str)
    fig, axes = plt.subplots(len(models), ncols, figsize=(width * ncols, height * len(models)), squeeze=False)
    return fig, [(m, table[table["model"] == m], axes[i]) for i, m in enumerate(models)]


def _colours(table: pd.DataFrame) -> dict[str, str]:
    """One colour per recipe across every panel, so a recipe looks the same for every model."""
    labels = sorted({_recipe_label(r) for _, r in table[RECIPE].drop_duplicates().iterrows()})
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def _curves(table: pd.DataFrame, importance: str):
    """Per recipe: rows of one importance plus the dense rows, by ratio."""
    sub = table[(table["importance"] == importance) | (table["ratio"] == 0)]
    for _, group in sub.groupby(RECIPE, sort=True):
        yield _recipe_label(group.iloc[0]), group.sort_values("ratio")


def _legend(ax, **kwargs) -> None:
    """The legend beside the panel, where it hides no point or bar."""
    if not ax.get_legend_handles_labels()[0]:
        return
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, **kwargs)


def rejected(table: pd.DataFrame) -> pd.Series:
    """Rows whose artifact is not shippable: it failed its export check or its branch, or has no status
    (a summary from before `status`): drawn struck through, kept off the Pareto front."""
    return ~table["status"].map(Status.shippable).astype(bool) if "status" in table else pd.Series(True, index=table.index)


def mark_rejected(ax, g: pd.DataFrame, x: str, y: str) -> None:
    """A red cross over every rejected point of a curve, labelled once per axes."""
    bad = g[rejected(g)]
    if bad.empty:
        return
    seen = any(h.get_label() == REJECTED_LABEL for h in ax.collections)
    ax.scatter(bad[x], bad[y], marker="x", s=90, color="red", zorder=5, label=None if seen else REJECTED_LABEL)


def main_importance(table: pd.DataFrame) -> str:
    pruned = [i for i in table["importance"].unique() if i != DENSE]
    return "taylor" if "taylor" in pruned else (sorted(pruned)[0] if pruned else DENSE)


def _title_row(ax, model: str, n_models: int, text: str) -> None:
    ax.set_title(f"{model}: {text}" if n_models > 1 else text)


# What the memory panel plots: the memory the model adds to its runtime (the runtime's own import is
# most of a process's RSS: 520 MB for a 0.23 MB file), or, in a summary from before that column, the peak.
MEMORY = {
    "rss_model_mb": ("memory the model adds (RSS after load + 1 image, less the runtime's)", "added RSS (MB)"),
    "peak_rss_mb": ("peak resident memory (runtime + load + 1 image)", "peak RSS (MB)"),
}


def _ratio_axis(table: pd.DataFrame, imp: str) -> str:
    """The ratio axis of a figure that draws one importance: it names the others it leaves out."""
    others = sorted(i for i in table["importance"].unique() if i not in (imp, DENSE))
    return f"pruning ratio ({imp} importance" + (f"; {', '.join(others)}: Fig. 5)" if others else ")")


@figure("fig2_latency_memory")
def latency_memory(table: pd.DataFrame):
    imp = main_importance(table)
    colour = _colours(table)
    memory = "rss_model_mb" if "rss_model_mb" in table and table["rss_model_mb"].notna().any() else "peak_rss_mb"
    fig, rows = _per_model(table, 3)
    for model, sub, axes in rows:
        for label, g in _curves(sub, imp):
            err = [g["latency_ms_median"] - g["latency_ms_min"], g["latency_ms_max"] - g["latency_ms_median"]]
            axes[0].errorbar(g["ratio"], g["latency_ms_median"], yerr=err, marker="o", capsize=3, label=label, color=colour[label])
            axes[1].plot(g["ratio"], g["size_mb"], marker="o", label=label, color=colour[label])
            axes[2].plot(g["ratio"], g[memory], marker="o", label=label, color=colour[label])
            for ax, y in zip(axes, ("latency_ms_median", "size_mb", memory)):
                mark_rejected(ax, g, "ratio", y)
        threads = ", ".join(str(int(t)) for t in sorted(sub["threads"].dropna().unique()))
        _title_row(axes[0], model, len(rows), f"latency per image (median, bars: min-max; threads: {threads})")
        _title_row(axes[1], model, len(rows), "model file size")
        _title_row(axes[2], model, len(rows), MEMORY[memory][0])
        for ax, ylabel in zip(axes, ("latency (ms)", "size (MB)", MEMORY[memory][1])):
            ax.set(xlabel=_ratio_axis(table, imp), ylabel=ylabel)
            ax.grid(alpha=0.3)
        _legend(axes[2])
    fig.suptitle("Fig. 2: latency and memory vs pruning and precision")
    return fig


@figure("fig4_accuracy")
def accuracy(table: pd.DataFrame):
    imp = main_importance(table)
    colour = _colours(table)
    fig, rows = _per_model(table, 1, width=7)
    for model, sub, (ax,) in rows:
        for label, g in _curves(sub, imp):
            ax.plot(g["ratio"], g["top1"], marker="o", label=label, color=colour[label])
            mark_rejected(ax, g, "ratio", "top1")
        ax.set(xlabel=_ratio_axis(table, imp), ylabel="top-1 accuracy (%)")
        _title_row(ax, model, len(rows), "accuracy of the exported artifact")
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.suptitle("Fig. 4: accuracy vs pruning and precision")
    return fig


def _reference_recipe(table: pd.DataFrame) -> pd.Series:
    """The recipe the importance figure compares: eager FP32 if measured, else the first present."""
    eager = table[(table["format"] == EAGER)]
    return (eager if not eager.empty else table).sort_values(RECIPE).iloc[0]


@figure("fig5_importance")
def importance(table: pd.DataFrame):
    ref = _reference_recipe(table)
    fig, rows = _per_model(table, 1, width=7)
    for model, sub, (ax,) in rows:
        sub = sub[(sub[RECIPE] == ref[RECIPE]).all(axis=1)]
        dense = sub[sub["ratio"] == 0]
        for imp, g in sub[sub["ratio"] > 0].groupby("importance", sort=True):
            g = pd.concat([dense, g]).sort_values("ratio")
            ax.plot(g["ratio"], g["top1"], marker="o", label=imp)
            mark_rejected(ax, g, "ratio", "top1")
        ax.set(xlabel="pruning ratio", ylabel="top-1 accuracy (%)")
        _title_row(ax, model, len(rows), f"importance criteria ({_recipe_label(ref)}, after finetune)")
        ax.grid(alpha=0.3)
        _legend(ax, title="importance")
    fig.suptitle("Fig. 5: importance criteria compared")
    return fig


def _grouped_bars(ax, frame: pd.DataFrame, x: str, series: str, value: str, fmt: str = "{:.1f}") -> None:
    """Bars of `value` at each `x`, one colour per `series`, labelled with their values; (x, series)
    must name one row (a missing combination leaves a gap)."""
    if frame.duplicated([x, series]).any():
        raise ValueError(f"grouped bars need one row per ({x}, {series})")
    xs = sorted(frame[x].unique(), key=str)
    groups = sorted(frame[series].unique(), key=str)
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        sub = frame[frame[series] == g].set_index(x)
        heights = [float(sub.at[v, value]) if v in sub.index else float("nan") for v in xs]
        bad = [bool(v in sub.index and not Status.shippable(sub.at[v, "status"])) for v in xs]
        bars = ax.bar([j + i * width for j in range(len(xs))], heights, width, label=str(g))
        for bar, is_bad in zip(bars, bad):
            if is_bad:  # a rejected recipe stays visible, struck through
                bar.set(hatch="xx", edgecolor="red")
        ax.bar_label(
            bars, labels=[("rejected " if b else "") + fmt.format(h) if h == h else "" for h, b in zip(heights, bad)], fontsize=7
        )
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(xs))], [str(v) for v in xs])
    ax.margins(y=0.15)


def _compressed_recipe(table: pd.DataFrame) -> pd.Series:
    """The most compressed shipped recipe that most models have: the one the model figure compares."""
    ours = table[~table["without_pqv"].fillna(False).astype(bool)] if "without_pqv" in table else table
    table = ours if not ours.empty else table  # the file without PQV is the bar, not one of the models' recipes
    shipped = table[(table["format"] != EAGER) & ~rejected(table)]
    shipped = shipped if not shipped.empty else table[table["format"] != EAGER]
    shipped = shipped if not shipped.empty else table
    order = ["int8_static", "int8_dynamic", "int4_weight", "fp16", "fp32"]
    recipes = shipped.groupby(RECIPE)["model"].nunique().rename("models").reset_index()
    recipes["rank"] = recipes["precision"].map({p: i for i, p in enumerate(order)}).fillna(len(order))
    return recipes.sort_values(["models", "rank", "engine", "format"], ascending=[False, True, True, True]).iloc[0]


@figure("fig6_models")
def models(table: pd.DataFrame):
    plt = _plt()
    ref = _compressed_recipe(table)
    imp = main_importance(table)
    sub = table[(table[RECIPE] == ref[RECIPE]).all(axis=1) & ((table["importance"] == imp) | (table["ratio"] == 0))]
    fig, axes = plt.subplots(1, 2, figsize=(min(18, max(12, 1.2 * sub["ratio"].nunique() * sub["model"].nunique())), 4.5))
    _grouped_bars(axes[0], sub, "ratio", "model", "latency_ms_median", "{:.2f}")
    _grouped_bars(axes[1], sub, "ratio", "model", "top1")
    axes[0].set(xlabel=f"pruning ratio ({imp})", ylabel="latency per image, median (ms)", title="Latency")
    axes[1].set(xlabel=f"pruning ratio ({imp})", ylabel="top-1 accuracy (%)", title="Accuracy")
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    _legend(axes[1], title="model")
    n = table["model"].nunique()
    fig.suptitle(f"Fig. 6: models compared ({_recipe_label(ref)}; {n} model{'s' * (n > 1)} configured)")
    return fig


@figure("fig7_engines")
def engines(table: pd.DataFrame):
    quantized = table[table["engine"] != NO_ENGINE]
    names = sorted(quantized["engine"].unique())
    if len(names) < 2:  # nothing to compare: say so rather than draw one engine as a comparison
        plt = _plt()
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        why = (
            f"one quantized engine configured ({names[0]}): nothing to compare\n(list more in quantize.engines)"
            if names
            else "no quantized precision configured"
        )
        for ax in axes:
            ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        fig.suptitle("Fig. 7: quantized engines compared")
        return fig
    imp = main_importance(table)
    sub = quantized[(quantized["importance"] == imp) | (quantized["ratio"] == 0)]
    merging = sub["merge_r"].map(lambda r: f" merging {r}" if r else "")  # token merging: a recipe of its own
    sub = sub.assign(recipe=sub["precision"] + "\n" + sub["engine"] + merging + " ." + sub["format"])
    width = max(6.0, 0.5 * sub["recipe"].nunique() * sub["ratio"].nunique())
    fig, rows = _per_model(sub, 2, width=width)
    for model, part, axes in rows:
        _grouped_bars(axes[0], part, "recipe", "ratio", "latency_ms_median", "{:.2f}")
        _grouped_bars(axes[1], part, "recipe", "ratio", "top1")
        _title_row(axes[0], model, len(rows), "latency per image, median (ms)")
        _title_row(axes[1], model, len(rows), "top-1 accuracy (%)")
        for ax in axes:
            ax.grid(alpha=0.3, axis="y")
        _legend(axes[1], title=f"pruning ratio ({imp})")
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


MARKERS = "osD^vP*Xhp<>"


@figure("pareto_accuracy_latency")
def pareto(table: pd.DataFrame):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, 5.5))
    models = sorted(table["model"].unique(), key=str)
    several = len(models) > 1
    colours = {}
    for (model, prec, engine, merge_r, fmt), g in table.groupby(["model", *RECIPE]):
        key = (prec, engine, merge_r, fmt)  # an engine is a recipe too (ONNX Runtime's): each its own colour
        colours.setdefault(key, f"C{len(colours) % 10}")
        recipe = _recipe_label(g.iloc[0])
        label = f"{model}: {recipe}" if several else recipe
        ax.scatter(
            g["latency_ms_median"],
            g["top1"],
            label=label,
            s=30,
            color=colours[key],
            marker=MARKERS[models.index(model) % len(MARKERS)],
        )
        mark_rejected(ax, g, "latency_ms_median", "top1")
    if "without_pqv" in table:  # the bar each pick is compared with (evaluate.without_pqv)
        bar = table[table["without_pqv"].fillna(False).astype(bool)]
        ax.scatter(
            bar["latency_ms_median"],
            bar["top1"],
            s=160,
            facecolors="none",
            edgecolors="k",
            linewidths=1.5,
            marker="s",
            label="without PQV: ONNX Runtime's plain int8 of the dense model",
            zorder=3,
        )
    front = pareto_front(table).sort_values("latency_ms_median")
    ax.plot(  # circled too: a front of one file has no line to dash
        front["latency_ms_median"], front["top1"], "k--", lw=1, marker="o", ms=10, mfc="none", label="Pareto front"
    )
    for k, (_, r) in enumerate(front.iterrows()):  # each label names its file; neighbours alternate sides
        name = f"{r['model']} " if several else ""
        ax.annotate(
            f"{name}{r['importance']} {r['ratio']:g} {_recipe_label(r)}",
            (r["latency_ms_median"], r["top1"]),
            fontsize=7,
            xytext=(4, -10 if k % 2 else 6),
            textcoords="offset points",
        )
    ax.set(
        xlabel="latency per image, median (ms)",
        ylabel="top-1 accuracy (%)",
        title="Accuracy vs latency of every artifact\n(circled, dashed: the Pareto front, nothing both faster and more accurate)",
    )
    ax.grid(alpha=0.3)
    _legend(ax, ncol=2 if len(ax.get_legend_handles_labels()[0]) > 16 else 1)
    return fig


def load(summary_csv: str) -> pd.DataFrame:
    return load_frame(pd.read_csv(summary_csv))


def load_frame(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    table["engine"] = table["engine"].fillna(NO_ENGINE)
    table["status"] = table["status"].map(Status.word) if "status" in table else NO_STATUS  # none is not verified
    table["model"] = table["model"].astype(str)
    table["merge_r"] = table["merge_r"].fillna(0).astype(int) if "merge_r" in table else 0  # a summary from before merging
    return table


def run(summary_csv: str, outdir: str) -> list[str]:
    from ..plan.fileio import atomic_path

    plt = _plt()
    table = load(summary_csv)
    Path(outdir).mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in FIGURES.items():
        fig = draw(table)
        fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the suptitle
        path = Path(outdir) / f"{name}.png"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            fig.savefig(f, dpi=100, format="png")
        plt.close(fig)
        written.append(str(path))
    return written
