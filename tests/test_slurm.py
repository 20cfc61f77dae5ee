"""The SLURM profile makes valid submissions: Snakemake's SLURM executor plugin runs for real
against stand-in sbatch/sacct/sacctmgr/sinfo commands that record what they were asked."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE = {
    "sbatch": 'echo "$@" >> "$FAKE_SLURM_LOG"\necho 4242',
    "sacct": "echo '4242|FAILED'",  # every job 'fails' at once, so the run ends after submitting
    "sacctmgr": "echo acct",  # the plugin checks the account exists
    "squeue": "true",
    "sinfo": "true",
    "scontrol": "true",
}


def test_slurm_profile_submits_jobs_with_their_resources(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    work = tmp_path / "work"
    branch = work / "results/demo_vit/taylor_0.25"
    branch.mkdir(parents=True)
    for name in ("pruned.safetensors", "pruned.safetensors.json"):  # lets finetune be submitted directly
        (branch / name).touch()
    log = tmp_path / "sbatch.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_LOG": str(log)}

    def submit(target: str) -> str:
        """The sbatch arguments of the one job that makes `target`."""
        log.unlink(missing_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
             "--profile", str(REPO / "profiles/slurm"), "--jobs", "1",
             "--slurm-init-seconds-before-status-checks", "1",
             "--default-resources", "slurm_account=acct", "slurm_partition=part", "--", target],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert log.exists(), result.stderr[-3000:]
        (call,) = log.read_text().splitlines()
        assert "-A acct -p part" in call and "--parsable" in call
        return call

    model = submit("results/demo_vit/model.safetensors")
    finetune = submit("results/demo_vit/taylor_0.25/finetuned.safetensors")
    # per-rule threads, memory, runtime and GPUs come from the profile
    assert "--cpus-per-task=8" in model and "--mem 32000" in model and "-t 240" in model and "--gpus" not in model
    assert "--cpus-per-task=16" in finetune and "--mem 64000" in finetune and "-t 2880" in finetune
    assert "--gpus=4" in finetune
    assert "--wrap=" in model and "--executor slurm-jobstep" in model  # the job runs Snakemake's jobstep
