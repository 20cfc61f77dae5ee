"""Issue 40 items 5b and 5c: one judge of a file's status (pqv.plan.registry.Status.shippable), asked by every
stage that judges one: a file without a status is never shippable, in `pqv choose`, the accuracy
job's record, the search and the figures alike; and no status word is typed outside the registry.
`pqv choose` names an app file only where it is."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pqv.plan import fileio, search
from pqv.plan.registry import NO_STATUS, Status
from pqv.stages import choose, evaluate, plot

from .conftest import DIGITS

REPO = Path(__file__).resolve().parents[1]
NaN = float("nan")


@pytest.mark.parametrize(
    "value, shippable",
    [
        ("verified", True),
        (Status.VERIFIED, True),
        ("rejected", False),
        (Status.FAILED, False),
        (None, False),
        (NaN, False),
        ("", False),
        (NO_STATUS, False),
    ],
)
def test_verified_alone_is_shippable_and_no_status_never_is(value, shippable):
    assert Status.shippable(value) is shippable


def test_no_status_word_is_typed_outside_the_registry():
    words = "|".join(s.value for s in Status) + f"|{NO_STATUS}"
    typed = {
        str(path.relative_to(REPO)): re.findall(rf"""["']({words})["']""", path.read_text())
        for path in (REPO / "pqv").glob("*.py")
        if path.name not in ("registry.py", "config_errors.py")
    }
    # config_errors.py: "missing" there is pydantic's kind of error, not a status
    assert {path: found for path, found in typed.items() if found} == {}


def _row(ratio, fmt, top1, latency, status, importance="l2", precision="int8_dynamic"):
    return {
        "model": "m",
        "importance": importance,
        "ratio": ratio,
        "precision": precision,
        "engine": "none" if precision == "fp32" else "x86",
        "format": fmt,
        "top1": top1,
        "latency_ms_median": latency,
        "size_mb": 1.0 + latency,
        "status": status,
        "artifact": f"results/m/{importance}_{ratio:g}/export/{precision}.{fmt}",
    }


def test_choose_never_picks_a_file_without_a_status():
    table = pd.DataFrame(
        [
            _row(0.0, "eager", 95.0, 3.0, "verified", "dense", "fp32"),
            _row(0.0, "ptl", 95.0, 1.0, "verified", "dense", "fp32"),
            _row(0.5, "ptl", 94.8, 0.2, NaN),  # the fastest, never checked
            _row(0.5, "pte", 94.8, 0.5, "verified"),
        ]
    )
    picks = choose.choose(table, 1.0)
    assert picks["fastest"]["format"] == "pte" and Status.shippable(picks["smallest"]["status"])
    assert len(choose.candidates(table, 1.0)) == 2


def test_a_summary_without_statuses_has_nothing_to_ship_and_says_why():
    table = pd.DataFrame([_row(0.0, "ptl", 95.0, 1.0, None, "dense", "fp32")]).drop(columns="status")
    with pytest.raises(Exception, match="no status"):
        choose.choose(table, 1.0)


def test_the_search_has_no_reference_from_files_without_a_status():
    rows = [_row(0.0, "eager", 95.0, 3.0, None, "dense", "fp32"), _row(0.0, "ptl", 94.0, 1.0, "verified", "dense", "fp32")]
    assert search.reference_top1(rows) == 94.0
    assert search.reference_top1(rows[:1]) is None


def test_a_file_without_a_status_is_off_the_pareto_front_and_drawn_struck_through():
    table = plot.load_frame(pd.DataFrame([_row(0.0, "ptl", 95.0, 1.0, "verified"), _row(0.5, "ptl", 96.0, 0.5, NaN)]))
    assert list(plot.pareto_front(table).index) == [0]
    assert list(plot.rejected(table)) == [False, True]


def test_the_accuracy_job_records_a_file_without_a_status_as_unshippable(saved_tiny, tmp_path):
    """An export sidecar from before statuses: the accuracy job used to record it `verified`."""
    from pqv.stages import export, quantize

    program, ptl = tmp_path / "fp32-none.ts", tmp_path / "fp32-none.ptl"
    quantize.run(str(saved_tiny), str(program), "fp32", "none")
    export.run(str(program), str(saved_tiny), str(ptl), "ptl", DIGITS, check_images=8)
    sidecar = fileio.sidecar_path(ptl)
    meta = json.loads(Path(sidecar).read_text())
    Path(sidecar).write_text(json.dumps({k: v for k, v in meta.items() if k not in ("status", "reason")}))
    try:
        scored = evaluate.run_accuracy(str(ptl), str(tmp_path / "a.json"), DIGITS, {}, threads=1)
    finally:
        evaluate.set_threads(1)
    assert not Status.shippable(scored["status"]) and scored["status"] == NO_STATUS
    eager = evaluate.describe(str(saved_tiny))  # a model is its own reference: verified unless its branch failed
    assert Status.shippable(eager["status"])


def test_choose_says_an_app_file_is_missing_rather_than_print_its_path(tmp_path, capsys, monkeypatch):
    """Issue 40 item 5c: a summary from before app files named `<file>.app.json` under each pick as
    if it were there. The path is printed where the file is (artifact paths are the workflow
    folder's, found from any folder), and its absence is said with the fix where it is not."""
    rows = [_row(0.0, "ptl", 95.0, 1.0, "verified", "dense", "fp32"), _row(0.5, "ptl", 94.5, 0.5, "verified")]
    (tmp_path / "results").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "results" / "summary.csv", index=False)
    monkeypatch.chdir(tmp_path)
    choose.run("results/summary.csv", 1.0)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("for the app")]
    assert len(lines) == 2 and all("missing" in x and "rerun the workflow" in x for x in lines), lines
    app = tmp_path / f"{rows[1]['artifact']}.app.json"
    app.parent.mkdir(parents=True)
    app.write_text("{}")
    monkeypatch.chdir(tmp_path / "results")  # another folder: the file is still found, and its path printed
    choose.run("summary.csv", 1.0)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("for the app")]
    assert len(lines) == 2 and all("missing" not in x and str(app) in x for x in lines), lines
