"""pqv.plan.sweep: the one enumeration of what a config makes; Snakemake's plan agrees with it."""

from __future__ import annotations

from collections import Counter

from pqv.plan import config as C
from pqv.plan import registry, sweep

from .test_workflow import TINY_CONFIG, scheduled, snakemake


def test_branches_artifacts_and_measurements():
    config = C.filled(TINY_CONFIG)
    assert sweep.branches(config) == [(registry.DENSE, "0"), ("l2", "0.5"), ("taylor", "0.5")]
    assert len(sweep.artifacts(config)) == 3 * 2 and len(sweep.measured(config)) == 3 * 3
    assert {a["format"] for a in sweep.eager_baselines(config)} == {registry.EAGER}
    assert [a["importance"] for a in sweep.profiled(config)] == ["l2"]
    jobs = Counter(rule for rule, _ in sweep.jobs(config))
    assert jobs == Counter(
        data_train=1,
        data_eval=1,
        summary=1,
        model=1,
        prune=3,
        keep_dense=1,
        finetune=2,
        quantize=6,
        export=6,
        accuracy=9,
        latency=9,
        profile=1,
    )


def test_snakemakes_plan_is_the_sweeps_jobs(tmp_path):
    config = C.filled(TINY_CONFIG)
    planned = scheduled(snakemake(tmp_path, "-n"))
    local = {"all", "plot", "stage_costs"}  # aggregates with no benchmark file
    assert Counter({r: n for r, n in planned.items() if r not in local}) == Counter(r for r, _ in sweep.jobs(config))


def test_token_merging_adds_files_and_leaves_the_unmerged_paths_and_params_alone():
    """merge.r: each r > 0 is one more file of every recipe (and eager baseline) of every branch,
    named -tome{r} after the engine; r = 0 names no merge, so a sweep that adds merging keeps every
    path, and every job's params, of the files it made before: nothing of them reruns."""
    merged = C.filled(merging := {**TINY_CONFIG, "merge": {"r": [0, 4]}, "evaluate": {**TINY_CONFIG["evaluate"], "without_pqv": True}})
    plain = C.filled({**TINY_CONFIG, "evaluate": merging["evaluate"]})
    assert [a for a in sweep.measured(merged) if a["merge"] == ""] == sweep.measured(plain)
    fours = [a for a in sweep.measured(merged) if a["merge"]]
    assert len(fours) == len(sweep.measured(plain)) - 1 and {a["merge"] for a in fours} == {"-tome4"}  # the bar is unmerged
    assert sweep.merge_r("-tome4") == 4 and sweep.merge_name(0) == "" and sweep.merge_r("") == 0
    jobs = Counter(rule for rule, _ in sweep.jobs(merged))
    assert (jobs["prune"], jobs["finetune"]) == (3, 2)  # merging is applied after finetuning: no new branch
    assert jobs["quantize"] == 2 * 6 + 1 and jobs["export"] == 2 * 6 + 1  # the bar's once
    # the quantize job of a merged file is told r on its command line (its params); no other job is
    from pqv.plan import reruns

    program = next(wc for rule, wc in sweep.jobs(merged) if rule == "quantize" and wc["merge"])
    assert reruns.options("quantize", merged, program).endswith("--merge-r 4")
    unmerged = next(wc for rule, wc in sweep.jobs(merged) if rule == "quantize" and not wc["merge"])
    assert reruns.options("quantize", merged, unmerged) == reruns.options("quantize", plain, unmerged)
    assert not any(sweep.is_without_pqv(a) for a in fours)  # Snakemake's plan of a merging sweep: tests/test_jobs.py
