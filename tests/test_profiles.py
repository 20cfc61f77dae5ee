"""The workflow profile (profiles/default/, which Snakemake loads by itself) and the shipped profiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import job_environment

pytestmark = pytest.mark.usefixtures("warm_jobs")  # their jobs fork from a warm-start server (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]
MISSING = {"models": [{"id": "m", "timm_name": "vit_tiny_patch16_224", "weights": "missing.safetensors"}]}
ERROR = "pqv model: error: weights file missing.safetensors does not exist"


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The README's plain command (`snakemake --cores 2`), run from another folder."""
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(MISSING))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--cores",
            "2",
            "--configfile",
            str(tmp_path / "my.yaml"),
            *args,
            "--",
            "results/m/model.safetensors",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env=job_environment(),
    )


def test_an_error_inside_a_job_reaches_the_terminal(tmp_path):
    result = run(tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "workflow specific profile" in out and str(REPO / "profiles/default") in out
    assert ERROR in out
    # without the workflow profile the line stays in the job's log only
    bare = run(tmp_path, "--workflow-profile", "none")
    assert bare.returncode != 0 and ERROR not in bare.stdout + bare.stderr
    assert ERROR in (tmp_path / "results/logs/model/m.log").read_text()


def test_profiles_hold_no_resources():
    """Resources live in the rules (pqv/plan/resources.py): on the command line Snakemake replaces a
    profile's resource options instead of merging them, so a profile holding them loses them."""
    resource_keys = {"default-resources", "set-resources", "set-threads", "resources", "cores", "jobs", "executor"}
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    # the workflow profile's keys replace the same keys of --profile: it must not hold site settings
    assert set(default) == {"show-failed-logs", "rerun-incomplete"} and not set(default) & resource_keys
    for name in ("local", "slurm"):
        profile = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
        assert not set(profile) & {"default-resources", "set-resources", "set-threads"}, name
        assert not set(profile) & set(default), name  # nothing the workflow profile would override
