"""The workflow on a real SLURM cluster: scripts/slurm-cluster.sh runs a single-node cluster
(slurm-wlm 22.05, munge, slurmdbd + MariaDB so that sacct works) on this Debian machine, and the
tiny config goes through profiles/slurm with the README's command.

Runs where the cluster runs (.ci/run starts it) or can be started (root and the packages);
skipped elsewhere. tests/test_slurm.py checks the submissions against stand-in commands."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .test_workflow import TINY_CONFIG, scheduled

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts/slurm-cluster.sh"
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch")
# This cluster has no GPU, and the config keeps the default `device: auto`: the workflow asks SLURM
# (sinfo) what the partition has, and no job asks for a GPU. One pruned branch and the dense one, one
# precision: every kind of cluster job, few of each (each job pays SLURM's and Python's start-up).
CONFIG = {**TINY_CONFIG, "prune": {**TINY_CONFIG["prune"], "importances": ["l2"]},
          "quantize": {"precisions": ["int8_dynamic"], "engines": ["x86"]}, "profile": {"artifacts": []},
          "evaluate": {**TINY_CONFIG["evaluate"], "eager_baseline": False}}
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
        if os.geteuid() != 0:
            pytest.skip("a SLURM cluster is not running and starting one needs root (scripts/slurm-cluster.sh)")
        conf = Path("/etc/slurm/slurm.conf")
        if conf.exists() and "# written by scripts/slurm-cluster.sh" not in conf.read_text():
            pytest.skip(f"{conf} belongs to another SLURM set-up: not starting a test cluster over it")
        missing = [d for d in DAEMONS if shutil.which(d) is None]
        if missing:
            pytest.skip(f"no SLURM cluster: {', '.join(missing)} not installed (apt-get install slurm-wlm munge "
                        "slurmdbd mariadb-server, or run .ci/run, which installs them and starts the cluster)")
        subprocess.run([str(SCRIPT), "start"], env=env, check=True, capture_output=True)
        started = True
    yield env
    if started:
        subprocess.run([str(SCRIPT), "stop"], env=env, check=True, capture_output=True)


def snakemake(env: dict, workdir: Path, config: dict, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """The README's cluster command, in `workdir`."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--profile", str(REPO / "profiles/slurm"), "--configfile", str(workdir / "config.yaml"), *SITE, *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def submitted(result: subprocess.CompletedProcess) -> list[str]:
    """SLURM job ids of the jobs this run submitted."""
    return re.findall(r"has been submitted with SLURM jobid (\d+)", result.stdout + result.stderr)


def sacct_states(env: dict, jobs: list[str]) -> Counter:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", ",".join(jobs)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return Counter(out.split())


def test_tiny_workflow_runs_on_the_cluster_and_a_rerun_schedules_nothing(cluster, tmp_path):
    plan = scheduled(snakemake(cluster, tmp_path, CONFIG, "-n"))
    local = {"all", "summary", "plot", "stage_costs", "keep_dense"}  # localrules: run by Snakemake itself
    on_cluster = sum(n for rule, n in plan.items() if rule not in local)
    assert on_cluster >= 10, plan

    result = snakemake(cluster, tmp_path, CONFIG, *FAST)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    jobs = submitted(result)
    assert len(jobs) == on_cluster, out[-4000:]
    # SLURM's accounting saw every one of them finish
    assert sacct_states(cluster, jobs) == Counter(COMPLETED=on_cluster)

    summary = pd.read_csv(tmp_path / "results/summary.csv")
    assert len(summary) == plan["latency"] == plan["accuracy"]
    assert "has no GPUs (sinfo): device auto asks for none" in out
    assert set(summary["device"].dropna()) == {"cpu (fp32)"}
    assert (summary["top1"] > 10).all()  # above chance on held-out digits
    assert summary["node_exclusive"].astype(bool).all()  # every latency had its node to itself (--exclusive)
    assert (tmp_path / "results/figures/fig4_accuracy.png").read_bytes()[:4] == b"\x89PNG"

    again = snakemake(cluster, tmp_path, CONFIG, *FAST)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    assert submitted(again) == []


def test_a_job_larger_than_the_cluster_fails_at_submission(cluster, tmp_path):
    # as many DataLoader workers as the node has CPUs, plus the torch threads: more than the node
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], env=cluster, capture_output=True, text=True, check=True)
    cpus = max(int(n) for n in nodes.stdout.split())
    config = {**CONFIG, "dataset": {"name": "digits", "workers": cpus}}
    result = snakemake(cluster, tmp_path, config, *FAST, "--", "results/tiny/model.safetensors", timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "SLURM sbatch failed" in out and "More processors requested than permitted" in out, out[-3000:]
    assert len(submitted(result)) == 1  # the data job (2 decoding threads) ran; the model job was refused


def test_an_error_inside_a_cluster_job_reaches_the_terminal(cluster, tmp_path):
    config = {**CONFIG, "models": [{"id": "tiny", "timm_name": "vit_tiny_patch16_224", "weights": "missing.safetensors"}]}
    result = snakemake(cluster, tmp_path, config, *FAST, "--", "results/tiny/model.safetensors", timeout=300)
    assert result.returncode != 0
    assert "pqv model: error: weights file missing.safetensors does not exist" in result.stdout + result.stderr
