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
    assert jobs == Counter(data_train=1, data_eval=1, summary=1, model=1, prune=3, keep_dense=1, finetune=2, quantize=6, export=6,
                           accuracy=9, latency=9, profile=1)


def test_snakemakes_plan_is_the_sweeps_jobs(tmp_path):
    config = C.filled(TINY_CONFIG)
    planned = scheduled(snakemake(tmp_path, "-n"))
    local = {"all", "plot", "stage_costs"}  # aggregates with no benchmark file
    assert Counter({r: n for r, n in planned.items() if r not in local}) == Counter(r for r, _ in sweep.jobs(config))
