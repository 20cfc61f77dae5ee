"""Choose for me: the fastest and the smallest artifact within an accuracy budget, from a summary."""

from __future__ import annotations

import pandas as pd

from ..plan.errors import PQVError
from ..plan.registry import EAGER, NO_STATUS, WITHOUT_PQV_HELP, Status
from ..plan.search import REFERENCE, reference_top1

SHOWN = [
    "model",
    "importance",
    "ratio",
    "precision",
    "engine",
    "merge_r",
    "format",
    "top1",
    "latency_ms_median",
    "size_mb",
    "artifact",
]


def candidates(table: pd.DataFrame, max_loss: float, model: str | None = None) -> pd.DataFrame:
    """Shippable artifacts whose top-1 is at most `max_loss` points below their model's dense FP32."""
    if model is not None:
        if model not in set(table["model"]):
            raise PQVError(f"model '{model}' is not in the summary", f"use one of {', '.join(sorted(set(table['model'])))}")
        table = table[table["model"] == model]
    unmerged = table["merge_r"].fillna(0) == 0 if "merge_r" in table else True  # the reference merges no token
    dense = table[(table["ratio"] == 0) & (table["precision"] == "fp32") & unmerged]
    if dense.empty:
        raise PQVError(
            "the summary has no dense FP32 row to measure accuracy loss against",
            "keep 0.0 in prune.ratios and fp32 in quantize.precisions",
        )
    reference = pd.Series(
        {m: reference_top1(rows.to_dict("records")) for m, rows in dense.groupby("model")}, name="reference_top1", dtype=float
    )  # NaN: no verified dense FP32 file
    table = table.join(reference, on="model")
    table = table.assign(accuracy_loss=table["reference_top1"] - table["top1"])
    shippable = table[table["format"] != EAGER]
    # a recipe that failed its export check is never picked, and neither is a file without a status
    shippable = shippable[statuses(shippable).map(Status.shippable).astype(bool)]
    return shippable[shippable["accuracy_loss"] <= max_loss]


def statuses(table: pd.DataFrame) -> pd.Series:
    """Each row's status; none at all in a summary from before statuses."""
    return table["status"] if "status" in table else pd.Series(None, index=table.index, dtype=object)


def choose(table: pd.DataFrame, max_loss: float, model: str | None = None) -> dict[str, pd.Series]:
    ok = candidates(table, max_loss, model)
    files = table[(table["format"] != EAGER) & ((table["model"] == model) if model is not None else True)]
    if ok.empty and not statuses(files).map(Status.shippable).any():
        words = statuses(files).map(Status.word).value_counts()
        raise PQVError(
            f"no file of the summary is {Status.VERIFIED} ("
            + ", ".join(f"{n} {word if word != NO_STATUS else 'with no status'}" for word, n in words.items())
            + "): nothing to ship",
            "rerun the workflow (snakemake --cores N), which checks every file",
        )
    if ok.empty:
        raise PQVError(f"no artifact loses at most {max_loss} top-1 points", "allow a larger --max-accuracy-loss")
    return {
        "fastest": ok.sort_values(["latency_ms_median", "size_mb"]).iloc[0],
        "smallest": ok.sort_values(["size_mb", "latency_ms_median"]).iloc[0],
    }


DEFAULT_SUMMARY = "results/summary.csv"


def summary_of(summary: str | None, configfiles: list[str] | None) -> str:
    """The summary to read: the one given, or the one in the results folder of the config files a run
    used (merged over the default as Snakemake merges them), or the default run's."""
    if configfiles:
        from ..plan.config import check_files

        return f"{check_files(configfiles)['results']}/summary.csv"
    return summary or DEFAULT_SUMMARY


def run(summary_csv: str, max_loss: float | None, model: str | None = None) -> dict[str, pd.Series]:
    """Print the fastest and the smallest file within `max_loss` points, and each search's choice;
    without `max_loss`, the searches' choices alone."""
    if max_loss is not None and max_loss < 0:
        raise PQVError(
            f"--max-accuracy-loss {max_loss:g} is negative: no file can be more accurate than its reference by budget",
            "give the top-1 points a file may lose, e.g. --max-accuracy-loss 1.0",
        )
    try:
        table = pd.read_csv(summary_csv)
    except FileNotFoundError:
        raise PQVError(
            f"no summary at {summary_csv}",
            "a run with its own results: folder: pqv choose --configfile FILE... (the files the run used) or "
            "--summary FOLDER/summary.csv; no run yet: snakemake --cores N first",
        ) from None
    except IsADirectoryError:
        raise PQVError(f"{summary_csv} is a folder, not a summary", "give its summary.csv (results/summary.csv)") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise PQVError(
            f"{summary_csv} is not a PQV summary ({type(e).__name__})",
            "give the summary.csv a run wrote, or run the workflow again (snakemake --cores N)",
        ) from None
    missing = [c for c in ("model", "ratio", "precision", "format", "top1") if c not in table]
    if missing:
        raise PQVError(
            f"{summary_csv} is not a PQV summary: no {', '.join(missing)} column",
            "give the summary.csv a run wrote (results/summary.csv)",
        )
    if max_loss is None and searched(table, model).empty:
        raise PQVError(
            f"{summary_csv} has no accuracy-budget search's choice to print",
            "give --max-accuracy-loss POINTS, or enable search: in the config (docs/search.md)",
        )
    picks = {} if max_loss is None else choose(table, max_loss, model)
    for name, row in picks.items():
        print(f"{name} within {max_loss:g} top-1 points of dense FP32 ({row['reference_top1']:.2f} %, {REFERENCE}):")
        for key in SHOWN:
            print(f"  {key:18} {row.get(key, 0) if key == 'merge_r' else row[key]}")  # no merge_r: a summary from before merging
        print(f"  {'for the app':18} {app_file(row['artifact'], summary_csv)}")
        print(f"  {'without PQV':18} {against_without_pqv(table, row)}")
    for _, row in searched(table, model).iterrows():
        print(f"{row['model']}: {row['search']}:")
        for key in SHOWN:
            print(f"  {key:18} {row.get(key, 0) if key == 'merge_r' else row[key]}")  # no merge_r: a summary from before merging
        print(f"  {'for the app':18} {app_file(row['artifact'], summary_csv)}")
        print(f"  {'without PQV':18} {against_without_pqv(table, row)}")
    return picks


def app_file(artifact: str, summary_csv: str) -> str:
    """Where a pick's app file is (docs/formats.md), or that it is missing and how to make it. An
    artifact's path is the workflow folder's: looked for from here, then from each folder above the
    summary (run from elsewhere, or `--summary` another sweep's)."""
    from pathlib import Path

    from ..common.appfile import path_of

    rel = Path(path_of(artifact))
    for folder in (Path.cwd(), *Path(summary_csv).resolve().parents):
        if (folder / rel).is_file():
            shown = rel if folder == Path.cwd() or rel.is_absolute() else folder / rel
            return f"{shown} (labels, input, preprocessing: docs/formats.md)"
    return (
        f"missing: no {rel} (a summary from before app files, or the file was moved; rerun the workflow, "
        "snakemake --cores N, which writes it beside the file)"
    )


def against_without_pqv(table: pd.DataFrame, row: pd.Series) -> str:
    """A pick's speed-up over the file its model's user gets without PQV (evaluate.without_pqv)."""
    bars = (
        table[(table["model"] == row["model"]) & table["without_pqv"].fillna(False).astype(bool)]
        if "without_pqv" in table
        else table.iloc[0:0]
    )
    if bars.empty:
        return "not measured (evaluate.without_pqv: true measures it)"
    bar = bars.iloc[0]
    status = bar.get("status")
    if not Status.shippable(status):  # no status is no verification either
        why = f": {bar['reason']}" if isinstance(bar.get("reason"), str) and bar["reason"] else ""
        return f"{bar['artifact']}'s status is {Status.word(status)}{why}: no bar to compare with"
    if row["artifact"] == bar["artifact"]:
        return f"this pick is the file without PQV ({WITHOUT_PQV_HELP}): none of PQV's own files is faster within the budget here"
    speedup = bar["latency_ms_median"] / row["latency_ms_median"]
    pace = f"{speedup:.2f}x the speed of" if speedup >= 1 else f"{1 / speedup:.2f}x slower than"
    return f"{pace} {bar['artifact']} ({bar['latency_ms_median']:.3g} ms, top-1 {bar['top1']:.2f} %; {WITHOUT_PQV_HELP})"


def searched(table: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """The rows an accuracy-budget search chose (docs/search.md): the fastest file of the largest
    ratio within its budget, found without running the grid."""
    if "search" not in table:
        return table.iloc[0:0]
    rows = table[table["search"].notna() & (table["search"] != "")]
    return rows if model is None else rows[rows["model"] == model]
