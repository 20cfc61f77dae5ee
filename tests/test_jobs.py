"""pqv.plan.jobs: the job graph stated once (each rule's job, the file it makes, its log and its
benchmark file) is what Snakemake plans, what pqv.plan.sweep names, and what `pqv costs` is handed."""

from __future__ import annotations

import re

import pytest

from pqv.plan import config as C
from pqv.plan import jobs, sweep

from .test_workflow import TINY_CONFIG, snakemake


def test_each_rules_job_names_its_log_and_benchmark_file():
    wc = dict(model="m", importance="l2", ratio="0.5", precision="int8_dynamic", engine="x86", merge="-tome2", format="ptl")
    assert jobs.made("results", "export", wc) == "results/m/l2_0.5/export/int8_dynamic-x86-tome2.ptl"
    assert jobs.log("results", "export", wc) == "results/logs/export/m/l2_0.5/int8_dynamic-x86-tome2.ptl.log"
    assert jobs.benchmark("results", "export", wc) == "results/benchmarks/export/m/l2_0.5/int8_dynamic-x86-tome2.ptl.tsv"
    # evaluate's two rules share a folder; the dense branch passed through logs where its finetune would
    assert jobs.log("r", "accuracy", wc) == "r/logs/evaluate/m/l2_0.5/int8_dynamic-x86-tome2.ptl.accuracy.log"
    assert jobs.log("r", "keep_dense", wc) == jobs.log("r", "finetune", wc) == "r/logs/finetune/m/l2_0.5.log"
    assert jobs.benchmark("r", "keep_dense", wc) == "r/benchmarks/keep_dense/m/l2_0.5.tsv"
    assert jobs.made("r", "quantize", {**wc, "ir": "ts"}) == "r/m/l2_0.5/quantized/int8_dynamic-x86-tome2.ts"
    # a rule with one job per run
    assert (jobs.made("r", "summary"), jobs.log("r", "summary"), jobs.benchmark("r", "summary")) == (
        "r/summary.csv",
        "r/logs/summary.log",
        "r/benchmarks/summary.tsv",
    )
    with pytest.raises(ValueError, match="no benchmark file"):
        jobs.benchmark("r", "stage_costs")
    # patterns, for the rules
    assert jobs.log("r", "search_round") == "r/logs/search/{model}/{importance}{merge}/round-{round}.log"
    assert jobs.keys("quantize") == ("model", "importance", "ratio", "precision", "engine", "merge", "ir")


def test_a_benchmark_file_names_its_rule_and_job_and_so_its_log():
    for rule, name in [
        ("prune", "prune/m/l2_0.5.tsv"),
        ("data_train", "data_train.tsv"),
        ("accuracy", "accuracy/m/dense_0/fp32-none.eager.tsv"),
    ]:
        found, job = jobs.of_benchmark(name)
        assert found == rule and jobs.benchmark_name(rule, job) == name
    assert jobs.log_name(*jobs.of_benchmark("latency/m/dense_0/fp32-none.ptl.tsv")) == "evaluate/m/dense_0/fp32-none.ptl.latency.log"
    with pytest.raises(ValueError, match="no rule"):
        jobs.of_benchmark("nonesuch/x.tsv")


def test_the_sweep_names_each_jobs_wildcards_as_the_table_does():
    config = C.filled({**TINY_CONFIG, "merge": {"r": [0, 2]}})
    for rule, wc in sweep.jobs(config):
        assert set(wc) == set(jobs.keys(rule)), (rule, wc)
    files = jobs.costs_files("results", sweep.jobs(config))  # every job its own benchmark file, and its log
    assert len(files) == len(set(files.values())) == len(sweep.jobs(config))
    assert files["results/benchmarks/model/tiny.tsv"] == "results/logs/model/tiny.log"


def _planned(text: str) -> list[dict]:
    """Each job of a dry run: its rule, wildcards, first output, log and benchmark file."""
    out = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", text):
        head = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, re.M))
        wc = dict(kv.split("=", 1) for kv in fields["wildcards"].split(", ")) if "wildcards" in fields else {}
        out.append(
            {
                "rule": head[1],
                "wildcards": wc,
                "output": fields.get("output", "").split(", ")[0],
                "log": fields.get("log"),
                "benchmark": fields.get("benchmark"),
            }
        )
    return out


def test_snakemakes_plan_takes_every_file_log_and_benchmark_from_the_table(tmp_path):
    config = {**TINY_CONFIG, "merge": {"r": [0, 2]}, "search": {"enabled": True}}
    done = snakemake(tmp_path, "-n", config=config)
    assert done.returncode == 0, done.stderr[-3000:]
    planned = _planned(done.stdout)
    rules = {job["rule"] for job in planned}
    assert rules >= {
        "data_train",
        "model",
        "prune",
        "finetune",
        "keep_dense",
        "quantize",
        "export",
        "accuracy",
        "latency",
        "profile",
        "summary",
        "plot",
        "stage_costs",
        "search_round",
    }, rules
    for job in planned:
        rule, wc = job["rule"], job["wildcards"]
        if rule == "all":
            continue
        assert set(wc) == set(jobs.keys(rule)), job
        assert job["log"] == jobs.log("results", rule, wc), job
        assert job["benchmark"] == (jobs.benchmark("results", rule, wc) if jobs.RULES[rule].benchmark else None), job
        if rule != "plot":
            assert job["output"] == jobs.made("results", rule, wc), job
