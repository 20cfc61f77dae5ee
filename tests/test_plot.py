"""Every figure draws any sweep: several models, importances, engines and formats, rejected rows,
and a model that has only some of the formats (issue 20: a four-model sweep crashed in `plot`)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from pqv.plan import registry
from pqv.stages import plot

RECIPES = [
    ("fp32", "none", "eager"),
    ("fp32", "none", "ptl"),
    ("int8_dynamic", "x86", "ptl"),
    ("int8_dynamic", "onednn", "ptl"),
    ("int8_static", "x86", "ptl"),
    ("fp32", "none", "pte"),
    ("int8_dynamic", "xnnpack", "pte"),
]
BRANCHES = [("dense", 0.0)] + [(i, r) for i in ("taylor", "l2", "hessian") for r in (0.25, 0.5)]


def summary(models, recipes=RECIPES, branches=BRANCHES) -> pd.DataFrame:
    rows = []
    for k, model in enumerate(models):
        own = [r for r in recipes if not (model == "vit_reg" and r[2] == "pte")]  # a model without .pte files
        for importance, ratio in branches:
            for j, (precision, engine, fmt) in enumerate(own):
                bad = precision == "int8_static" and ratio == 0.5
                rows.append(
                    {
                        "model": model,
                        "importance": importance,
                        "ratio": ratio,
                        "precision": precision,
                        "engine": engine,
                        "format": fmt,
                        "status": "rejected" if bad else "verified",
                        "reason": "cosine below 0.98" if bad else "",
                        "top1": 90 - 30 * ratio - j * 0.1 - k,
                        "latency_ms_median": 10 * (1 - ratio) + j,
                        "latency_ms_min": 9 * (1 - ratio) + j,
                        "latency_ms_max": 12 * (1 - ratio) + j,
                        "size_mb": 5 * (1 - ratio),
                        "peak_rss_mb": 500 + j,
                        "threads": 1,
                        "params": 1e6,
                        "macs": 1e8,
                        "artifact": f"{model}/{importance}_{ratio}/{j}",
                    }
                )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("models", [["demo"], ["deit3", "vit_reg"], ["deit3", "vit_avg", "vit_reg", "deit_dist"]])
def test_every_figure_draws_any_number_of_models_recipes_and_rejected_rows(tmp_path, models):
    path = tmp_path / "summary.csv"
    summary(models).to_csv(path, index=False)
    written = plot.run(str(path), str(tmp_path / "figures"))
    assert [p.rsplit("/", 1)[-1] for p in written] == [f"{name}.png" for name in plot.FIGURES]
    assert tuple(plot.FIGURES) == registry.FIGURES  # every figure the workflow names is drawn, in its order
    for p in written:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_panels_per_model_and_bars_per_model_recipe_and_ratio():
    table = plot.load_frame(summary(["deit3", "vit_avg", "vit_reg", "deit_dist"]))
    assert len(plot.FIGURES["fig7_engines"](table).axes) == 4 * 2  # a row of two panels per model
    assert len(plot.FIGURES["fig2_latency_memory"](table).axes) == 4 * 3
    bars = plot.FIGURES["fig6_models"](table).axes[0].patches
    assert len(bars) == 4 * 3  # 4 models x 3 ratios of the recipe all four models have
    with pytest.raises(ValueError, match="one row per"):
        plot._grouped_bars(None, table, "ratio", "model", "top1")  # two rows would share a bar


def test_a_sweep_without_quantized_or_pruned_rows_still_draws(tmp_path):
    path = tmp_path / "summary.csv"
    summary(["a", "b"], recipes=[("fp32", "none", "ptl")], branches=[("dense", 0.0)]).to_csv(path, index=False)
    assert len(plot.run(str(path), str(tmp_path / "figures"))) == len(plot.FIGURES)


def test_pqv_plot_draws_a_two_model_summary(tmp_path):
    path = tmp_path / "summary.csv"
    summary(["deit3", "vit_reg"]).to_csv(path, index=False)
    result = subprocess.run(
        [sys.executable, "-m", "pqv", "plot", "--summary", str(path), "--outdir", str(tmp_path / "figures")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "figures").glob("*.png"))) == len(plot.FIGURES)


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_each_figure_shows_what_it_says(tmp_path):
    """(issue 43) Read as a picture: the memory panel plots what the model adds, not the runtime's
    import; an axis that draws one importance names the ones it leaves out; every Pareto label names
    one file; Fig. 7 with one engine says there is nothing to compare."""
    table = summary(["demo"]).assign(rss_model_mb=lambda t: 1 + t["size_mb"])
    table = plot.load_frame(table)
    fig2 = plot.FIGURES["fig2_latency_memory"](table)
    memory = fig2.axes[2]
    assert "adds" in memory.get_title() and memory.get_ylabel() == "added RSS (MB)"
    plotted = {tuple(line.get_ydata()) for line in memory.get_lines()}
    taylor = table[
        (table["importance"].isin(["taylor", "dense"]))
        & (table["format"] == "ptl")
        & (table["engine"] == "x86")
        & (table["precision"] == "int8_dynamic")
    ].sort_values("ratio")
    assert tuple(taylor["rss_model_mb"]) in plotted and tuple(taylor["peak_rss_mb"]) not in plotted
    assert memory.get_xlabel() == "pruning ratio (taylor importance; hessian, l2: Fig. 5)"
    pareto = plot.FIGURES["pareto_accuracy_latency"](table)
    labels = _texts(pareto)
    assert labels and len(labels) == len(set(labels))
    assert all(any(f" .{fmt}" in label for fmt in ("ptl", "pte", "eager")) for label in labels)
    one_engine = plot.load_frame(summary(["demo"], recipes=[("fp32", "none", "ptl"), ("int8_dynamic", "x86", "ptl")]))
    fig7 = plot.FIGURES["fig7_engines"](one_engine)
    assert any("one quantized engine configured (x86): nothing to compare" in t for t in _texts(fig7))
    assert not any(ax.patches for ax in fig7.axes)
    two = plot.FIGURES["fig7_engines"](table)
    assert any(ax.patches for ax in two.axes)


def test_the_model_figure_compares_the_models_recipes_not_the_file_without_pqv():
    """(found by a new-user trial) Fig. 6 picked the most compressed recipe every model has, which
    was the file without PQV (a dense .onnx), and showed no PQV file at all."""
    table = summary(["demo"])
    bar = table.iloc[[0]].assign(precision="int8_dynamic", engine="mlas_plain", format="onnx", without_pqv=True)
    table = plot.load_frame(pd.concat([table.assign(without_pqv=False), bar], ignore_index=True))
    assert "mlas_plain" not in plot.FIGURES["fig6_models"](table)._suptitle.get_text()


def test_a_merged_file_is_a_recipe_of_its_own_in_every_figure(tmp_path):
    """merge.r (token merging): a file merging tokens shares precision, engine, format and ratio with
    its unmerged twin; every figure keeps them apart (grouped bars would otherwise meet two rows)."""
    table = summary(["demo"])
    merged = table[table["format"] != "eager"].assign(merge_r=8)
    merged[["latency_ms_median", "latency_ms_min", "latency_ms_max"]] /= 2
    path = tmp_path / "summary.csv"
    pd.concat([table.assign(merge_r=0), merged]).to_csv(path, index=False)
    assert len(plot.run(str(path), str(tmp_path / "figures"))) == len(plot.FIGURES)
    loaded = plot.load(str(path))
    labels = [t.get_text() for t in plot.FIGURES["pareto_accuracy_latency"](loaded).axes[0].get_legend().get_texts()]
    assert "int8_dynamic x86 merging 8 .ptl" in labels and "int8_dynamic x86 .ptl" in labels
