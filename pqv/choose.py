"""Choose for me: the fastest and the smallest artifact within an accuracy budget, from a summary."""
from __future__ import annotations

import pandas as pd

from .errors import PQVError
from .registry import EAGER, WITHOUT_PQV_HELP, Status
from .search import REFERENCE, reference_top1

SHOWN = ["model", "importance", "ratio", "precision", "engine", "format", "top1", "latency_ms_median", "size_mb", "artifact"]


def candidates(table: pd.DataFrame, max_loss: float, model: str | None = None) -> pd.DataFrame:
    """Shippable artifacts whose top-1 is at most `max_loss` points below their model's dense FP32."""
    if model is not None:
        if model not in set(table["model"]):
            raise PQVError(f"model '{model}' is not in the summary", f"use one of {', '.join(sorted(set(table['model'])))}")
        table = table[table["model"] == model]
    dense = table[(table["ratio"] == 0) & (table["precision"] == "fp32")]
    if dense.empty:
        raise PQVError("the summary has no dense FP32 row to measure accuracy loss against",
                       "keep 0.0 in prune.ratios and fp32 in quantize.precisions")
    reference = dense.groupby("model").apply(lambda rows: reference_top1(rows.to_dict("records"))).rename("reference_top1")
    table = table.join(reference, on="model")
    table = table.assign(accuracy_loss=table["reference_top1"] - table["top1"])
    shippable = table[table["format"] != EAGER]
    if "status" in shippable:  # a recipe that failed its export check is never picked
        shippable = shippable[shippable["status"].fillna(Status.VERIFIED.value) == Status.VERIFIED.value]
    return shippable[shippable["accuracy_loss"] <= max_loss]


def choose(table: pd.DataFrame, max_loss: float, model: str | None = None) -> dict[str, pd.Series]:
    ok = candidates(table, max_loss, model)
    if ok.empty:
        raise PQVError(f"no artifact loses at most {max_loss} top-1 points", "allow a larger --max-accuracy-loss")
    return {
        "fastest": ok.sort_values(["latency_ms_median", "size_mb"]).iloc[0],
        "smallest": ok.sort_values(["size_mb", "latency_ms_median"]).iloc[0],
    }


def run(summary_csv: str, max_loss: float | None, model: str | None = None) -> dict[str, pd.Series]:
    """Print the fastest and the smallest file within `max_loss` points, and each search's choice;
    without `max_loss`, the searches' choices alone."""
    if max_loss is not None and max_loss < 0:
        raise PQVError(f"--max-accuracy-loss {max_loss:g} is negative: no file can be more accurate than its "
                       "reference by budget", "give the top-1 points a file may lose, e.g. --max-accuracy-loss 1.0")
    try:
        table = pd.read_csv(summary_csv)
    except FileNotFoundError:
        raise PQVError(f"no summary at {summary_csv}", "run the workflow first (snakemake --cores N)") from None
    except IsADirectoryError:
        raise PQVError(f"{summary_csv} is a folder, not a summary", "give its summary.csv (results/summary.csv)") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise PQVError(f"{summary_csv} is not a PQV summary ({type(e).__name__})",
                       "give the summary.csv a run wrote, or run the workflow again (snakemake --cores N)") from None
    missing = [c for c in ("model", "ratio", "precision", "format", "top1") if c not in table]
    if missing:
        raise PQVError(f"{summary_csv} is not a PQV summary: no {', '.join(missing)} column",
                       "give the summary.csv a run wrote (results/summary.csv)")
    if max_loss is None and searched(table, model).empty:
        raise PQVError(f"{summary_csv} has no accuracy-budget search's choice to print",
                       "give --max-accuracy-loss POINTS, or enable search: in the config (docs/search.md)")
    picks = {} if max_loss is None else choose(table, max_loss, model)
    for name, row in picks.items():
        print(f"{name} within {max_loss:g} top-1 points of dense FP32 ({row['reference_top1']:.2f} %, {REFERENCE}):")
        for key in SHOWN:
            print(f"  {key:18} {row[key]}")
        print(f"  {'for the app':18} {row['artifact']}.app.json (labels, input, preprocessing: docs/formats.md)")
        print(f"  {'without PQV':18} {against_without_pqv(table, row)}")
    for _, row in searched(table, model).iterrows():
        print(f"{row['model']}: {row['search']}:")
        for key in SHOWN:
            print(f"  {key:18} {row[key]}")
        print(f"  {'without PQV':18} {against_without_pqv(table, row)}")
    return picks


def against_without_pqv(table: pd.DataFrame, row: pd.Series) -> str:
    """A pick's speed-up over the file its model's user gets without PQV (evaluate.without_pqv)."""
    bars = table[(table["model"] == row["model"]) & table["without_pqv"].fillna(False).astype(bool)] \
        if "without_pqv" in table else table.iloc[0:0]
    if bars.empty:
        return "not measured (evaluate.without_pqv: true measures it)"
    bar = bars.iloc[0]
    status = bar.get("status")
    if status != Status.VERIFIED.value:  # no status is no verification either
        why = f": {bar['reason']}" if isinstance(bar.get("reason"), str) else ""
        return f"{bar['artifact']} is {status if isinstance(status, str) else 'unchecked'}{why}: no bar to compare with"
    speedup = bar["latency_ms_median"] / row["latency_ms_median"]
    return (f"{speedup:.2f}x the speed of {bar['artifact']} ({bar['latency_ms_median']:.3g} ms, top-1 {bar['top1']:.2f} %; "
            f"{WITHOUT_PQV_HELP})")


def searched(table: pd.DataFrame, model: str | None = None) -> pd.DataFrame:
    """The rows an accuracy-budget search chose (docs/search.md): the fastest file of the largest
    ratio within its budget, found without running the grid."""
    if "search" not in table:
        return table.iloc[0:0]
    rows = table[table["search"].notna() & (table["search"] != "")]
    return rows if model is None else rows[rows["model"] == model]
