"""A tiny accuracy-budget search through Snakemake: checkpoints, probes that are the grid's own
branches, a rerun that schedules nothing, and a looser budget that reuses every probe. (A budget
that even the dense file fails is tests/test_search.py's: one line from the round, before any probe.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest

from .test_workflow import TINY_CONFIG, scheduled, snakemake

pytestmark = pytest.mark.usefixtures("warm_jobs")  # their jobs fork from a warm-start server (tests/conftest.py)

SEARCH = {
    "enabled": True,
    "budget": 2.0,
    "artifact": {"precision": "fp32", "engine": "none", "format": "ptl"},
    "lo": 0.0,
    "hi": 0.75,
    "resolution": 0.25,
    "max_probes": 3,
    "parallel": 1,
}
CONFIG = {
    **TINY_CONFIG,
    "prune": {**TINY_CONFIG["prune"], "importances": ["l2"], "ratios": [0.0]},
    "quantize": {"precisions": ["fp32"], "engines": ["x86"]},
    "profile": {"artifacts": []},
    "evaluate": {**TINY_CONFIG["evaluate"], "eager_baseline": False},
    "search": SEARCH,
}


def ran(result) -> Counter:
    """Jobs per rule that a real run executed, from its log."""
    return Counter(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", result.stdout + result.stderr, re.M))


def finetuned(result) -> set[str]:
    return set(re.findall(r"finetune --model \S*?/l2_([0-9.]+)/pruned", result.stdout + result.stderr))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("search")
    result = snakemake(workdir, "-p", config=CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


def test_the_search_probes_branches_and_reports_its_answer(searched):
    workdir, result = searched
    probes = pd.read_csv(workdir / "results/search/tiny/l2.csv")
    assert probes["ratio"].tolist()[0] == 0.0 and 2 <= len(probes) <= 4  # the dense file and at most 3 probes
    assert probes.columns[0] == "ratio" and probes["widths"].str.startswith("embed ").all()
    assert probes["widths"].nunique() == len(probes)  # each probe is as narrow as its ratio
    chosen = json.loads((workdir / "results/search/tiny/l2.json").read_text())
    passing = probes[probes["passed"]]["ratio"]
    failing = probes[~probes["passed"]]["ratio"]
    assert chosen["answer_ratio"] == max(r for r in passing if not (failing < r).any())
    assert (workdir / "results/search/tiny/l2.png").read_bytes()[:4] == b"\x89PNG"
    # a probe is the sweep's own branch: the same paths as a grid run would make
    for ratio in probes["ratio"][1:]:
        assert (workdir / f"results/tiny/l2_{ratio:g}/export/fp32-none.ptl").exists()
    summary = pd.read_csv(workdir / "results/summary.csv")
    marked = summary[summary["search"].notna()]
    assert len(marked) == 1 and marked.iloc[0]["ratio"] == chosen["answer_ratio"]
    assert marked.iloc[0]["search"] == "chosen by the l2 search (budget 2)"
    assert probes[probes["answer"]]["ratio"].tolist() == [chosen["answer_ratio"]]
    # the answer reaches the terminal, not only the files
    assert "search tiny, l2: the largest ratio within 2 top-1 points of the dense FP32 model" in result.stdout + result.stderr
    assert finetuned(result) == {f"{r:g}" for r in probes["ratio"][1:]}
    assert ran(result)["search_round"] == len(probes)  # one round per probe (parallel 1), plus the first


def test_a_finished_search_reruns_nothing(searched):
    workdir, _ = searched
    assert scheduled(snakemake(workdir, "-n", config=CONFIG)) == Counter()


def test_a_looser_budget_reuses_every_probe(searched):
    workdir, first = searched
    looser = {**CONFIG, "search": {**SEARCH, "budget": 50.0}}
    result = snakemake(workdir, "-p", config=looser)
    assert result.returncode == 0, result.stderr[-3000:]
    done_before = finetuned(first)
    assert not finetuned(result) & done_before  # no probe made again
    assert ran(result)["search_round"] >= 1 and ran(result)["search_report"] == 1


def test_a_search_whose_probe_diverges_still_answers(searched, tmp_path):
    """A finetune that diverges is a failed probe with its reason, not the end of the run. It runs on
    a copy of the finished search: the data, the base model and the dense file are reused, and the
    changed learning rate reruns the probe's finetune."""
    work = tmp_path / "work"
    shutil.copytree(searched[0], work, symlinks=True)
    config = {
        **CONFIG,
        "finetune": {**CONFIG["finetune"], "lr": 1e30, "warmup_epochs": 0},
        "search": {**SEARCH, "hi": 0.5, "resolution": 0.5},
    }  # one probe: 0.5
    result = snakemake(work, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    probes = pd.read_csv(work / "results/search/tiny/l2.csv").set_index("ratio")
    assert probes.loc[0.5, "status"] == "failed" and not probes.loc[0.5, "passed"]
    assert probes.loc[0.5, "reason"].startswith("training diverged at epoch 1")
    chosen = json.loads((work / "results/search/tiny/l2.json").read_text())
    assert chosen["answer_ratio"] == 0.0 and chosen["chosen"]["status"] == "verified"
    summary = pd.read_csv(work / "results/summary.csv")
    assert set(summary[summary["ratio"] == 0.5]["status"]) == {"failed"}
    assert "probe 0.5: failed (failed: training diverged at epoch 1" in result.stdout + result.stderr


def _interrupt_after_writing(workdir, outputs):
    """The state a run stopped between a job writing its files and Snakemake recording it leaves
    (Ctrl-C at that moment): the files exist, Snakemake's record of them is gone and they are marked
    incomplete (Snakemake's file-based metadata: one file per output, named by its base64 path)."""
    import base64

    for output in outputs:
        name = base64.b64encode(output.encode()).decode()
        (workdir / ".snakemake/metadata" / name).unlink()
        (workdir / ".snakemake/incomplete" / name).write_text(json.dumps({"external_jobid": None}))


def test_a_probe_an_interrupted_run_left_unrecorded_is_made_again(searched):
    """Issue 29's sequence: a probe's finetune wrote its files, the run was stopped before Snakemake
    recorded them; the next run must make that probe again (Snakemake checks incomplete files only
    among the jobs of its first plan, and probes are added behind checkpoints: pqv names them as
    targets), and a later changed setting must rerun it like every other probe."""
    workdir, _ = searched
    probes = pd.read_csv(workdir / "results/search/tiny/l2.csv")
    ratio = probes["ratio"].tolist()[1]  # the first probe, asked for by round 0
    branch = f"results/tiny/l2_{ratio:g}"
    _interrupt_after_writing(
        workdir, [f"{branch}/finetuned.safetensors", f"{branch}/finetuned.safetensors.json", f"{branch}/finetune_metrics.csv"]
    )
    plan = snakemake(workdir, "-n", "-p", config=CONFIG)
    assert finetuned(plan) == {f"{ratio:g}"}, plan.stdout[-3000:]
    resumed = snakemake(workdir, config=CONFIG)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = snakemake(workdir, "-n", config=CONFIG)
    assert scheduled(again) == Counter() and "missing metadata" not in again.stdout + again.stderr
    # a dry run sees the probes up to the first round whose inputs change (the rest wait on it)
    longer = {**CONFIG, "finetune": {**CONFIG["finetune"], "epochs": 2}}
    assert f"{ratio:g}" in finetuned(snakemake(workdir, "-n", "-p", config=longer))


def test_a_damaged_search_state_file_is_one_line_naming_it_and_the_fix(searched, tmp_path):
    """A round's file cut short (a full disk, a copy stopped mid-way) is read while Snakemake plans:
    one line naming the file and the fix, not a traceback; the fix works."""
    work = tmp_path / "work"
    shutil.copytree(searched[0], work, symlinks=True)
    damaged = work / "results/search/tiny/l2/round-0.json"
    damaged.write_text(damaged.read_text()[:40])
    result = snakemake(work, "-n", config=CONFIG)
    err = result.stdout + result.stderr
    assert result.returncode == 2, err[-3000:]
    lines = [ln for ln in err.splitlines() if "pqv search: error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "damaged search state results/search/tiny/l2/round-0.json" in lines[0]
    assert "(fix: delete it" in lines[0]
    damaged.unlink()  # the fix: the search's results are kept ...
    plan = snakemake(work, "-n", config=CONFIG)
    assert plan.returncode == 0 and scheduled(plan) == Counter(), (plan.stdout + plan.stderr)[-3000:]
    looser = snakemake(work, "-n", config={**CONFIG, "search": {**SEARCH, "budget": 50.0}})
    assert looser.returncode == 0, (looser.stdout + looser.stderr)[-3000:]
    assert scheduled(looser)["search_round"] >= 1 and scheduled(looser)["finetune"] == 0  # ... the round made again


def test_the_search_chooses_across_ratio_and_merged_tokens(searched, tmp_path):
    """merge.r (token merging) with the search on: one bisection per r, whose probes merge r tokens
    in the sweep's own branches (the prunes and finetunes the unmerged search made are reused:
    merging is applied after finetuning); each answer is marked in the summary, and `pqv choose`
    ships the fastest verified file within the budget of all of them, ratio x r. On a copy of the
    finished search."""
    work = tmp_path / "work"
    shutil.copytree(searched[0], work, symlinks=True)
    config = {**CONFIG, "merge": {"r": [0, 2]}}
    result = snakemake(work, "-p", config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not finetuned(result) & finetuned(searched[1])  # no branch made again
    assert "--merge-r 2" in result.stdout + result.stderr and ran(result)["search_report"] == 1  # the unmerged report stands
    merged = json.loads((work / "results/search/tiny/l2-tome2.json").read_text())
    assert merged["chosen"]["merge_r"] == 2 and merged["chosen"]["artifact"].endswith("-tome2.ptl")
    assert merged["reference_top1"] == json.loads((work / "results/search/tiny/l2.json").read_text())["reference_top1"]
    summary = pd.read_csv(work / "results/summary.csv")
    marked = summary[summary["search"].notna()]
    assert sorted(marked["merge_r"]) == [0, 2]
    assert "chosen by the l2 search merging 2 tokens per block (budget 2)" in set(marked["search"])
    probes = pd.read_csv(work / "results/search/tiny/l2-tome2.csv")
    assert probes["ratio"].tolist()[0] == 0.0 and len(probes) >= 2
    chosen = subprocess.run(
        [sys.executable, "-m", "pqv", "choose", "--summary", str(work / "results/summary.csv"), "--max-accuracy-loss", "2"],
        capture_output=True,
        text=True,
    )
    assert chosen.returncode == 0, chosen.stderr
    within = summary[
        (summary["status"] == "verified") & (summary["format"] != "eager") & (summary["top1"] >= merged["reference_top1"] - 2)
    ]
    fastest = within.sort_values(["latency_ms_median", "size_mb"]).iloc[0]
    assert str(fastest["artifact"]) in chosen.stdout.split("smallest")[0]
    assert set(within["merge_r"]) <= {0, 2}
