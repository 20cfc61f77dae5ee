"""The workflow on a real SLURM cluster: scripts/slurm-cluster.sh runs a single-node cluster
(slurm-wlm 22.05, munge, slurmdbd + MariaDB so that sacct works) on this Debian machine, and the
tiny config goes through profiles/slurm with the README's command.

Runs where the cluster runs (.ci/run starts it) or can be started (root and the packages);
skipped elsewhere. tests/test_slurm.py checks the submissions against stand-in commands."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import cluster_unavailable, write_data_manifests
from .test_workflow import TINY_CONFIG, scheduled

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts/slurm-cluster.sh"
# This cluster has no GPU, and the config keeps the default `device: auto`: the workflow asks SLURM
# (sinfo) what the partition has, and no job asks for a GPU. One pruned branch (the finetune that spans
# jobs), one precision: every kind of cluster job, one of each (each job pays SLURM's and Python's start-up).
# The base model trains one epoch: every job but the finetune must fit the `short` partition's minute
# on a busy machine.
CONFIG = {
    **TINY_CONFIG,
    "models": [{**TINY_CONFIG["models"][0], "train": {**TINY_CONFIG["models"][0]["train"], "epochs": 1}}],
    "prune": {**TINY_CONFIG["prune"], "importances": ["l2"], "ratios": [0.5]},
    "quantize": {"precisions": ["int8_dynamic"], "engines": ["x86"]},
    "profile": {"artifacts": []},
    "evaluate": {**TINY_CONFIG["evaluate"], "eager_baseline": False},
}
# What a user adds to the README's command: their partition and account (this cluster's).
SITE = ["--default-resources", "slurm_partition=pqv", "slurm_account=root"]
FAST = ["--slurm-init-seconds-before-status-checks", "5"]  # the plugin's first status check (default 40 s)


@pytest.fixture(scope="module")
def cluster():
    """The cluster (SLURM's commands find it through /etc/slurm/slurm.conf); started here if it is
    not running, and then stopped again afterwards."""
    env = dict(os.environ)
    started = False
    if subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True).returncode != 0:
        if (reason := cluster_unavailable()) is not None:
            pytest.skip(reason)
        subprocess.run([str(SCRIPT), "start"], env=env, check=True, capture_output=True)
        started = True
    yield env
    if started:
        subprocess.run([str(SCRIPT), "stop"], env=env, check=True, capture_output=True)


def snakemake(
    env: dict,
    workdir: Path,
    config: dict,
    *args: str,
    timeout: int = 1200,
    site: list[str] = SITE,
) -> subprocess.CompletedProcess:
    """The README's cluster command, in `workdir`."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--profile",
            str(REPO / "profiles/slurm"),
            "--configfile",
            str(workdir / "config.yaml"),
            *site,
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def submitted(result: subprocess.CompletedProcess) -> list[str]:
    """SLURM job ids of the jobs this run submitted."""
    return re.findall(r"has been submitted with SLURM jobid (\d+)", result.stdout + result.stderr)


def sacct_states(env: dict, jobs: list[str]) -> Counter:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", ",".join(jobs)], env=env, capture_output=True, text=True, check=True
    ).stdout
    return Counter(out.split())


def epochs_for(seconds: float) -> int:
    """Finetune epochs of the test config's model that take about `seconds` on this machine (1 thread),
    from a few timed ones: a job on `short` trains for 30-40 s of its minute (imports and Snakemake's
    jobstep before, the 10 s reserve for leaving after), whatever the CPU; at least 220 (about
    50 s on a quiet 2-vCPU EPYC), in case the machine was busy while they were timed."""
    import torch

    from pqv.stages import finetune

    from .conftest import DIGITS, tiny_arch, tiny_vit

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_vit(0)
        started = time.perf_counter()
        finetune.train(model, DIGITS, tiny_arch(model)["data_config"], {**CONFIG["finetune"], "epochs": 10})
        return max(220, int(seconds / ((time.perf_counter() - started) / 10)))
    finally:
        torch.set_num_threads(threads)


def test_tiny_workflow_runs_on_a_partition_shorter_than_its_finetune_and_a_rerun_schedules_nothing(cluster, tmp_path):
    """The test cluster's partition `short` ends every job after one minute; the finetune trains for
    about 70 s, about twice one job's share of its minute. Only partition and account are given: each
    finetune job stops just before its limit with a checkpoint, and Snakemake's retries resume it
    until it finishes."""
    config = {**CONFIG, "finetune": {**CONFIG["finetune"], "epochs": epochs_for(70)}}
    # partition and account; and one CPU per job (docs/clusters.md: a smaller cluster), since the
    # test runner's other process shares this 2-core node, where a job's two torch threads would
    # spin-wait against it and train twenty times slower
    site = ["--default-resources", "slurm_partition=short", "slurm_account=root", "--max-threads", "1"]
    # sinfo, logged: the invocation that plans asks it once; the job processes read that plan
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/sinfo.log\nexec {shutil.which("sinfo")} "$@"\n')
    (bin_dir / "sinfo").chmod(0o755)
    env = {**cluster, "PATH": f"{bin_dir}{os.pathsep}{cluster['PATH']}"}
    env.pop("SLURM_JOB_ID", None)
    work = tmp_path / "work"
    work.mkdir()
    plan = scheduled(snakemake(env, work, config, "-n", site=site))
    local = {"all", "summary", "plot", "stage_costs", "keep_dense"}  # localrules: run by Snakemake itself
    on_cluster = sum(n for rule, n in plan.items() if rule not in local)
    assert on_cluster >= 9, plan
    (tmp_path / "sinfo.log").unlink()  # the dry run's own question

    run = snakemake(env, work, config, *FAST, site=site, timeout=1500)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    # the uninterrupted run of the same seed on this machine, after the cluster's (beside it, it would
    # slow the cluster's one-minute jobs; with the tests that run meanwhile, at a low priority it starved)
    pruned = work / "results/tiny/l2_0.5/pruned.safetensors"
    reference = tmp_path / "reference/finetuned.safetensors"
    whole = subprocess.run(
        [
            sys.executable,
            "-m",
            "pqv",
            "finetune",
            "--model",
            str(pruned),
            "--out",
            str(reference),
            "--data",
            str(work / "results/data/train.json"),
            "--hparams",
            json.dumps(config["finetune"]),
            "--metrics",
            str(reference.parent / "metrics.csv"),
            "--threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=900,
    )
    assert whole.returncode == 0, whole.stderr[-2000:]

    assert "it runs as about" in out and "successive jobs" in out
    restarts = out.count("Trying to restart job")
    assert restarts >= 1, out[-4000:]  # two jobs at least: the second resumes where the first stopped
    jobs = submitted(subprocess.CompletedProcess([], 0, out, ""))
    assert len(jobs) == on_cluster + restarts
    states = sacct_states(cluster, jobs)  # each stopped attempt failed on purpose (or hit the limit while leaving)
    assert states["COMPLETED"] == on_cluster and states["FAILED"] + states["TIMEOUT"] == restarts, states
    finetuned = work / "results/tiny/l2_0.5/finetuned.safetensors"
    facts = json.loads(Path(f"{finetuned}.json").read_text())
    assert facts["time_limit_stops"] == restarts and facts["resumed_after_epoch"] > 0
    log = (work / "results/logs/finetune/tiny/l2_0.5.log").read_text()
    assert log.count("resuming after epoch") == 1 and log.count("stopped before its time limit at epoch") == restarts
    assert len(pd.read_csv(work / "results/tiny/l2_0.5/finetune_metrics.csv")) == config["finetune"]["epochs"]
    planning = [line for line in (tmp_path / "sinfo.log").read_text().splitlines() if "%l" in line]
    assert len(planning) == 1, planning  # once, in the invocation that planned; no job asked again

    # the same model as the uninterrupted run, within noise (360 held-out digits: 1 image is 0.28 points)
    from pqv.common import store

    from .conftest import held_out_top1

    def top1(path):
        model, arch = store.load_model(path)
        return held_out_top1(model, arch["data_config"])

    assert abs(top1(finetuned) - top1(reference)) <= 1.0

    summary = pd.read_csv(work / "results/summary.csv")
    assert len(summary) == plan["latency"] == plan["accuracy"]
    assert "has no GPUs (sinfo): device auto asks for none" in out
    assert set(summary["device"].dropna()) == {"cpu (fp32)"}
    assert (summary["top1"] > 10).all()  # above chance on held-out digits
    assert summary["node_exclusive"].astype(bool).all()  # every latency had its node to itself (--exclusive)
    assert (work / "results/figures/fig4_accuracy.png").read_bytes()[:4] == b"\x89PNG"

    again = snakemake(env, work, config, *FAST, site=site)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    assert submitted(again) == []


def test_a_job_larger_than_the_cluster_fails_at_submission(cluster, tmp_path):
    # as many DataLoader workers as the node has CPUs, plus the torch threads: more than the node
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], env=cluster, capture_output=True, text=True, check=True)
    cpus = max(int(n) for n in nodes.stdout.split())
    config = {**CONFIG, "dataset": {"name": "digits", "workers": cpus}}
    write_data_manifests(tmp_path)  # the test needs one cluster job, the model's
    result = snakemake(cluster, tmp_path, config, *FAST, "--", "results/tiny/model.safetensors", timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "SLURM sbatch failed" in out and "More processors requested than permitted" in out, out[-3000:]
    assert submitted(result) == []  # the model job was refused


def test_an_error_inside_a_cluster_job_reaches_the_terminal(cluster, tmp_path):
    config = {**CONFIG, "models": [{"id": "tiny", "timm_name": "vit_tiny_patch16_224", "weights": "missing.safetensors"}]}
    write_data_manifests(tmp_path)  # the test needs one cluster job, the model's
    result = snakemake(cluster, tmp_path, config, *FAST, "--", "results/tiny/model.safetensors", timeout=300)
    assert result.returncode != 0
    assert "pqv model: error: weights file missing.safetensors does not exist" in result.stdout + result.stderr
