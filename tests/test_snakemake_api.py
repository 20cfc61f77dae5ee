"""pqv.plan.snakemake_api, the one place PQV reads Snakemake's objects, against the installed
Snakemake: its real settings objects as its command line makes them, and tiny Snakefiles run by it
(a dry run each, a second or so). Checked against Snakemake 9.27.1, the version pyproject.toml pins;
run these first when Snakemake is upgraded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pqv.plan import snakemake_api
from pqv.plan.snakemake_api import Facts

REPO = Path(__file__).resolve().parents[1]

# A Snakefile that writes the facts the adapter reads while it is read, and, from an input
# function of its target (called once Snakemake keeps records), what it says of two files' records.
SNAKEFILE = f"""
import dataclasses, json, os, sys
sys.path.insert(0, {str(REPO)!r})
from pqv.plan import snakemake_api

with open("facts.json", "w") as f:
    json.dump({{**dataclasses.asdict(snakemake_api.facts(workflow)), "keeps_records": snakemake_api.keeps_records(workflow)}}, f)


def records(wildcards):
    with open("records.json", "w") as f:
        json.dump({{"keeps_records": snakemake_api.keeps_records(workflow),
                   "made": os.path.exists("made.txt") and snakemake_api.has_record(workflow, "made.txt"),
                   "outside": snakemake_api.has_record(workflow, "outside.txt")}}, f)
    return []


rule all:
    input: records, "made.txt"

rule make:
    output: "made.txt"
    shell: "echo made > {{output}}"
"""


@pytest.fixture
def snakemake(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)

    def run(*args: str) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "snakemake", "--quiet", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads((tmp_path / "facts.json").read_text())

    run.folder = tmp_path
    return run


def test_the_snakemake_version_is_the_one_checked():
    """The adapter's facts were checked against 9.27 (pyproject.toml pins it): a new release is read
    here before the pin moves."""
    from importlib.metadata import version

    assert version("snakemake").startswith("9.27."), version("snakemake")


def test_a_local_runs_cores_memory_and_site_settings(snakemake):
    facts = snakemake(
        "-n",
        "--cores",
        "2",
        "--resources",
        "mem_mb=1500",
        "--default-resources",
        "slurm_partition=gpu",
        "slurm_extra='--qos=high'",
        "--set-resources",
        "finetune:runtime=5h",
        "latency:runtime=attempt*10",
    )
    assert facts["cores"] == 2 and facts["nodes"] is None and facts["remote"] is False
    assert facts["mem_mb"] == 1500
    # a default resource is an expression: a quoted string is its text, a bare word as given
    assert facts["default_resources"]["slurm_partition"] == "gpu"
    assert facts["default_resources"]["slurm_extra"] == "--qos=high"
    # Snakemake reads 5h as minutes; an expression it computes for each job stays text
    assert facts["set_resources"] == {"finetune": {"runtime": 300}, "latency": {"runtime": "attempt*10"}}
    assert not Facts(**{k: v for k, v in facts.items() if k != "keeps_records"}).on_cluster


def test_a_cluster_run_is_one_given_jobs_without_cores(snakemake):
    facts = snakemake("-n", "--jobs", "3")
    assert facts["nodes"] == 3 and facts["cores"] == 1  # a dry run's one core
    assert facts["default_resources"] == {} and facts["set_resources"] == {} and facts["mem_mb"] is None
    assert Facts(nodes=facts["nodes"]).on_cluster


def test_a_job_process_a_cluster_executor_started_is_remote(snakemake):
    facts = snakemake("-n", "--mode", "remote", "--jobs", "1")  # how a cluster executor starts Snakemake in a job
    assert facts["remote"] is True and Facts(remote=True).on_cluster


def test_records_are_known_once_snakemake_keeps_them_and_name_the_files_it_made(snakemake):
    facts = snakemake("-n", "--cores", "1")
    records = json.loads((snakemake.folder / "records.json").read_text())
    assert facts["keeps_records"] is False  # while the Snakefile is read: no persistence yet
    assert records == {"keeps_records": True, "made": False, "outside": False}
    (snakemake.folder / "outside.txt").write_text("written by no job\n")
    snakemake("--cores", "1")  # makes made.txt, and records it
    snakemake("-n", "--cores", "1")
    records = json.loads((snakemake.folder / "records.json").read_text())
    assert records == {"keeps_records": True, "made": True, "outside": False}


def test_settings_given_through_snakemakes_python_api_read_the_same():
    """The settings objects as Snakemake's own command line builds them (snakemake.cli), and as its
    Python API may give them: plain mappings."""
    from snakemake.cli import parse_set_resources
    from snakemake.resources import Resources
    from snakemake.settings.types import ResourceSettings

    cli = ResourceSettings(
        cores=4,
        nodes=None,
        resources=Resources.parse(["mem_mb=2000"], allow_expressions=False),
        overwrite_resources=parse_set_resources(["finetune:runtime=600"]),
        default_resources=Resources.parser_factory(defaults="full", allow_expressions=True)(["slurm_account=acct"]),
    )
    facts = snakemake_api.facts(SimpleNamespace(resource_settings=cli, remote_exec=False))
    assert (facts.cores, facts.nodes, facts.mem_mb, facts.remote) == (4, None, 2000, False)
    assert facts.default_resources["slurm_account"] == "acct" and facts.set_resources == {"finetune": {"runtime": 600}}

    plain = ResourceSettings(
        cores=None,
        nodes=8,
        resources={"mem_mb": 1000},
        overwrite_resources={"finetune": {"runtime": 90}},
        default_resources={"slurm_partition": "cpu"},
    )
    facts = snakemake_api.facts(SimpleNamespace(resource_settings=plain, remote_exec=False))
    assert (facts.cores, facts.nodes, facts.mem_mb) == (None, 8, 1000) and facts.on_cluster
    assert facts.default_resources == {"slurm_partition": "cpu"} and facts.set_resources == {"finetune": {"runtime": 90}}
    none = snakemake_api.facts(SimpleNamespace(resource_settings=ResourceSettings(), remote_exec=False))
    assert none == Facts()
