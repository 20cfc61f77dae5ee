"""pqv.plan.run_plan: what one Snakemake invocation plans with (the machine check, the shared plan)
and each rule's threads and resources in it, as plain functions of the config, the invocation's
facts (pqv.plan.snakemake_api.Facts), a job's wildcards and its input files: no Snakemake run."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from pqv.plan import config as pqv_config
from pqv.plan import resources, run_plan
from pqv.plan.errors import PQVError
from pqv.plan.resources import Work
from pqv.plan.snakemake_api import Facts

REPO = Path(__file__).resolve().parents[1]
LOCAL = Facts(cores=2)
CLUSTER = Facts(cores=1, nodes=100)
IMAGENET = {"train": 1_281_167, "eval": 50_000}


def config(**sections) -> dict:
    """The embedded default with `sections` merged over it, its defaults filled in."""
    cfg = pqv_config.load_yaml(REPO / "config/config.yaml")
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return pqv_config.filled(cfg)


def paper(**sections) -> dict:
    """config/paper.yaml on a data set at /imagenet."""
    cfg = pqv_config.load_yaml(REPO / "config/paper.yaml")
    cfg["dataset"] = {**cfg["dataset"], "root": "/imagenet"}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return pqv_config.filled(cfg)


def plan(cfg: dict, facts: Facts = LOCAL, images: dict | None = None, **shared) -> run_plan.Plan:
    shared = {
        "device": cfg["device"],
        "partition": None,
        "max_minutes": None,
        "images": images or {"train": 1437, "eval": 360},
        **shared,
    }
    return run_plan.plan_of(cfg, facts, shared)


@pytest.fixture(autouse=True)
def _own_shared_plan(monkeypatch):
    """shared_plan puts the plan in this process's environment: each test's own, removed after it."""
    monkeypatch.setenv(resources.PLAN_ENV, "")


# ---- the machine check ------------------------------------------------------------------------


def test_a_local_run_asking_for_more_than_the_machine_has_is_one_line():
    cfg = config(evaluate={"threads": 1})
    with pytest.raises(PQVError) as e:
        run_plan.check_machine(cfg, Facts(cores=8), machine_cores=2, machine_mb=4000)
    assert str(e.value) == "--cores 8 exceeds the 2 cores of this machine (fix: --cores 2 or fewer)"
    with pytest.raises(PQVError, match=r"^evaluate.threads 4 exceeds the 2 cores this run may use \(fix: evaluate.threads <= 2, "):
        run_plan.check_machine(config(evaluate={"threads": 4}), Facts(cores=2), machine_cores=8, machine_mb=4000)
    with pytest.raises(PQVError, match=r"^--resources mem_mb=5000 exceeds this machine's 4000 MB \(fix: mem_mb <= 4000\)$"):
        run_plan.check_machine(cfg, Facts(cores=2, mem_mb=5000), machine_cores=2, machine_mb=4000)
    run_plan.check_machine(cfg, Facts(cores=2, mem_mb=4000), machine_cores=2, machine_mb=4000)
    # without --cores the machine's cores are the limit
    with pytest.raises(PQVError, match="exceeds the 2 cores this run may use"):
        run_plan.check_machine(config(evaluate={"threads": 4}), Facts(), machine_cores=2, machine_mb=4000)


def test_a_cluster_runs_requests_are_the_clusters_to_judge():
    big = config(evaluate={"threads": 64})
    for facts in (Facts(cores=1, nodes=10, mem_mb=10**9), Facts(cores=1024, remote=True)):
        assert facts.on_cluster
        run_plan.check_machine(big, facts, machine_cores=2, machine_mb=4000)


def test_a_results_folder_that_cannot_be_written_is_one_line_and_a_new_one_is_fine(tmp_path):
    with pytest.raises(PQVError) as e:  # /sys refuses every new file, root's too
        run_plan.check_results_writable("/sys/pqv-results")
    assert str(e.value).startswith("the results folder /sys/pqv-results cannot be written (")
    assert "in /sys)" in str(e.value)
    assert str(e.value).endswith("(fix: set results: to a folder you can write, or fix its permissions)")
    run_plan.check_results_writable(str(tmp_path / "not/made/yet"))
    assert list(tmp_path.iterdir()) == []  # the check leaves nothing, and makes no folder


# ---- the shared plan --------------------------------------------------------------------------


def test_a_local_plan_reads_the_manifests_once_made_and_asks_no_gpu_where_there_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(resources, "machine_has_gpus", lambda: False)
    monkeypatch.setattr(resources, "slurm_partition", lambda name: pytest.fail("a local run asked sinfo"))
    cfg = config()
    train, evaluation = tmp_path / "train.json", tmp_path / "eval.json"
    shared = run_plan.shared_plan(cfg, LOCAL, str(train), str(evaluation))
    assert shared["device"] == "cpu" and shared["partition"] is None and shared["max_minutes"] is None
    assert (shared["images"]["train"], shared["images"]["eval"]) == (1437, 360)  # the digits' estimate
    train.write_text(json.dumps(_manifest("train", 1000)))
    shared = run_plan.shared_plan(cfg, LOCAL, str(train), str(evaluation))
    assert (shared["images"]["train"], shared["images"]["eval"]) == (1000, 360)
    assert run_plan.shared_plan(config(device="cpu"), LOCAL, str(train), str(evaluation))["device"] == "cpu"
    monkeypatch.setattr(resources, "machine_has_gpus", lambda: True)
    assert run_plan.shared_plan(cfg, LOCAL, str(train), str(evaluation))["device"] == "auto"


def test_a_cluster_plan_asks_sinfo_once_and_its_jobs_read_it_back(tmp_path, monkeypatch, capsys):
    asked = []

    def partition(name):
        asked.append(name)
        return resources.Partition(name or "main", False, 720)

    monkeypatch.setattr(resources, "slurm_partition", partition)
    cfg = config()
    facts = Facts(nodes=10, default_resources={"slurm_partition": "cpu"})
    shared = run_plan.shared_plan(cfg, facts, str(tmp_path / "t.json"), str(tmp_path / "e.json"))
    assert asked == ["cpu"] and (shared["partition"], shared["max_minutes"], shared["device"]) == ("cpu", 720, "cpu")
    assert "partition cpu has no GPUs (sinfo): device auto asks for none" in capsys.readouterr().err
    # a job process the cluster started (same environment, same config) asks nothing again
    job = run_plan.shared_plan(cfg, Facts(remote=True, nodes=1), str(tmp_path / "t.json"), str(tmp_path / "e.json"))
    assert job == shared and asked == ["cpu"]
    # another config's plan is not its own
    run_plan.shared_plan(config(device="cpu"), Facts(remote=True, nodes=1), str(tmp_path / "t.json"), str(tmp_path / "e.json"))
    assert asked == ["cpu", None]  # (that job names no partition: the default one)


def _manifest(split: str, images: int, largest: int = 0) -> dict:
    return {
        "format": 1,
        "classes": ["a"],
        "fingerprint": "f",
        "largest_pixels": largest,
        "splits": {split: {"folder": f"/data/{split}", "items": [], "images": images, "counts": {}}},
    }


# ---- threads ----------------------------------------------------------------------------------


def test_locally_heavy_and_timing_stages_take_every_core_and_the_rest_one():
    p = plan(config(device="cpu"), Facts(cores=6))
    demo = {"model": "demo_vit"}
    assert {s: run_plan.threads(p, s) for s in ("latency", "profile", "quantize", "export")} == {
        "latency": 6,
        "profile": 6,
        "quantize": 1,
        "export": 1,
    }
    assert all(run_plan.threads_follow_wildcards(p, s) for s in ("prune", "model", "finetune", "accuracy"))
    assert run_plan.threads(p, "finetune", {**demo, "importance": "l2", "ratio": "0.25"}) == 6  # ~40 s of training
    assert run_plan.threads(p, "model", demo) == 6  # the demo trains its base model
    hub = config(device="cpu", models=[{"id": "d", "timm_name": "deit_tiny_patch16_224", "weights": "hub"}])
    assert run_plan.threads(plan(hub, Facts(cores=6)), "model", {"model": "d"}) == 1
    assert run_plan.threads(plan(config(), Facts()), "finetune", demo) == 1  # no --cores: one
    # the gradient importances rank channels on calibration batches: DeiT-B's take every core
    deit_b = plan(paper(device="cpu"), Facts(cores=6), images=IMAGENET)
    assert run_plan.threads(deit_b, "prune", {"model": "deit-b", "importance": "taylor", "ratio": "0.25"}) == 6
    assert run_plan.threads(deit_b, "prune", {"model": "deit-b", "importance": "l2", "ratio": "0.25"}) == 1
    assert run_plan.threads(deit_b, "prune", {"model": "deit-b", "importance": "taylor", "ratio": "0"}) == 1  # ranks nothing


def test_locally_a_heavy_stages_short_job_takes_one_core():
    """The digits demo's data jobs, accuracy passes (~1 s of work each, after ~4 s of imports) and
    its Taylor prune (4 calibration batches) take one core, so the next job runs beside them; the
    same stages on ImageNet's sizes take every core."""
    p = plan(config(device="cpu"), Facts(cores=6))
    assert run_plan.threads(p, "data") == 1
    for fmt in ("eager", "ptl", "pte"):
        assert run_plan.threads(p, "accuracy", {"model": "demo_vit", "format": fmt}) == 1
    assert run_plan.threads(p, "prune", {"model": "demo_vit", "importance": "taylor", "ratio": "0.25"}) == 1
    large = plan(config(device="cpu"), Facts(cores=6), images=IMAGENET)
    assert run_plan.threads(large, "data") == 6
    assert run_plan.threads(large, "accuracy", {"model": "demo_vit", "format": "ptl"}) == 6


def test_on_a_cluster_threads_follow_the_data_sets_size_not_the_cores():
    cfg = config(dataset={"workers": 0})
    small, large = plan(cfg, CLUSTER), plan(cfg, CLUSTER, images=IMAGENET)
    assert not run_plan.threads_follow_wildcards(small, "prune")
    for stage in ("data", "model", "prune", "finetune", "quantize", "accuracy", "latency"):
        assert run_plan.threads(small, stage) == resources.threads(stage, cfg, 1437 + 360), stage
        assert run_plan.threads(large, stage) == resources.threads(stage, cfg, sum(IMAGENET.values())), stage
    assert run_plan.threads(small, "finetune") < run_plan.threads(large, "finetune")


# ---- resources --------------------------------------------------------------------------------


def test_a_jobs_resources_follow_its_manifest_and_its_input_models_sidecar(tmp_path):
    cfg = config(device="cpu")
    p = plan(cfg, CLUSTER, images=IMAGENET)
    wc = {"model": "demo_vit", "importance": "taylor", "ratio": "0.25"}
    data, sidecar = tmp_path / "train.json", tmp_path / "pruned.safetensors.json"
    estimated = resources.estimate_macs(cfg["models"][0])
    # before the files exist (a dry run of a new sweep): the data set's estimate and the config's model
    assert run_plan.job_work(p, "finetune", wc, str(data), str(sidecar)) == Work(*IMAGENET.values(), *estimated, "digits")
    data.write_text(json.dumps(_manifest("train", 5000, largest=4_000_000)))
    sidecar.write_text(json.dumps({"macs": 9e6, "params": 4e5}))
    work = run_plan.job_work(p, "finetune", wc, str(data), str(sidecar))
    assert work == Work(5000, 0, 9e6, 4e5, "digits", 4_000_000)
    got = run_plan.job_resources(p, "finetune", wc, str(data), str(sidecar))
    assert got == resources.of("finetune", p.config, work, "taylor", "0.25", sum(IMAGENET.values()), "", None)
    assert got["mem_mb"] < run_plan.job_resources(p, "finetune", wc, str(data), None)["mem_mb"]  # estimated model: larger
    # a job that reads no images; a damaged sidecar leaves the estimate (the job itself says what is wrong)
    sidecar.write_text("{")
    assert run_plan.job_work(p, "quantize", wc, None, str(sidecar)) == Work(0, 0, *estimated, "digits")
    # each data job reads its own split; neither has a model
    assert run_plan.job_work(p, "data_eval", {}) == Work(0, IMAGENET["eval"], 0, 0, "digits")
    assert run_plan.job_resources(p, "data_train", {}) == resources.of(
        "data", p.config, Work(IMAGENET["train"], 0, 0, 0, "digits"), planned_images=sum(IMAGENET.values())
    )


def test_a_timing_rule_adds_exclusive_to_the_sites_own_slurm_extra_and_gpus_follow_the_wildcards():
    cfg = config(device="cuda")
    site = plan(cfg, Facts(nodes=4, default_resources={"slurm_extra": "--qos=high"}))
    assert run_plan.rule_resources(site, "latency") == {"slurm_extra": "--qos=high --exclusive"}
    assert run_plan.rule_resources(plan(cfg, CLUSTER), "profile") == {"slurm_extra": "--exclusive"}
    assert run_plan.rule_resources(site, "accuracy") == {}  # the site's own stays Snakemake's default
    assert run_plan.per_job_resources(site, "latency") == ["mem_mb", "runtime"]
    assert run_plan.per_job_resources(site, "data_train") == ["mem_mb", "runtime"]
    assert run_plan.job_gpus(site, "prune", {"importance": "taylor", "ratio": "0.25"}) == 1
    assert run_plan.job_gpus(site, "prune", {"importance": "l2", "ratio": "0.25"}) == 0
    assert run_plan.job_gpus(site, "accuracy", {"format": "eager"}) == 1
    assert run_plan.job_gpus(plan(config(device="cpu"), CLUSTER), "finetune", {}) == 0


def test_the_partitions_limit_caps_every_jobs_wall_time():
    cfg = paper(device="cpu")
    wc = {"model": cfg["models"][0]["id"], "importance": "taylor", "ratio": "0.25", "format": "eager"}
    unlimited = run_plan.job_resources(plan(cfg, CLUSTER, images=IMAGENET), "accuracy", wc, "/no/manifest")["runtime"]
    p = plan(cfg, CLUSTER, images=IMAGENET, partition="cpu", max_minutes=60)
    assert run_plan.job_resources(p, "accuracy", wc, "/no/manifest")["runtime"] == 60 < unlimited


# ---- a finetune over several jobs -------------------------------------------------------------


def test_a_finetune_spans_jobs_on_a_partitions_limit_or_the_users_own_runtime():
    cfg = paper()  # device auto, 4 GPUs per finetune: DeiT-B on ImageNet takes a day or so
    day = plan(cfg, CLUSTER, images=IMAGENET, partition="gpu", max_minutes=1440)
    half = plan(cfg, CLUSTER, images=IMAGENET, partition="gpu", max_minutes=720)
    assert run_plan.finetune_jobs(day, CLUSTER) == 1 and run_plan.finetune_jobs(half, CLUSTER) == 2
    # off a cluster, in a job process, or on a partition without a known limit: one job
    assert run_plan.finetune_jobs(plan(cfg, LOCAL, images=IMAGENET, max_minutes=720), LOCAL) == 1
    assert run_plan.finetune_jobs(half, Facts(nodes=1, remote=True)) == 1
    assert run_plan.finetune_jobs(plan(cfg, CLUSTER, images=IMAGENET), CLUSTER) == 1
    # --set-resources finetune:runtime=M: the finetune spans its budget in jobs of M minutes
    longest = max(
        resources.runtime("finetune", cfg, Work(IMAGENET["train"], 0, *resources.estimate_macs(m), "imagefolder"))
        for m in cfg["models"]
    )
    user = Facts(nodes=100, set_resources={"finetune": {"runtime": 300}})
    assert run_plan.finetune_jobs(half, user) == math.ceil(longest / 300) > 2
    # more than the partition gives: one line, before any job
    with pytest.raises(PQVError) as e:
        run_plan.finetune_jobs(half, Facts(nodes=100, set_resources={"finetune": {"runtime": 3000}}))
    assert str(e.value) == (
        "--set-resources finetune:runtime=3000 exceeds partition gpu's limit of 720 minutes "
        "(fix: runtime <= 720, or another partition)"
    )
    # an expression Snakemake computes for each job is the user's own time: not checked here
    assert run_plan.finetune_jobs(half, Facts(nodes=100, set_resources={"finetune": {"runtime": "attempt*600"}})) == 1


def test_a_finetune_on_cpus_longer_than_pqv_spans_stops_the_plan_in_one_line():
    cpu = plan(paper(device="cpu"), CLUSTER, images=IMAGENET, partition="gpu", max_minutes=1440)
    with pytest.raises(PQVError, match=r"^finetune of deit-b asks for [\d,]+ h on CPUs \(\d+ jobs at partition gpu's limit of 24 h\)"):
        run_plan.finetune_jobs(cpu, CLUSTER)


def test_the_plan_takes_the_shared_device_and_the_sites_settings():
    cfg = config()
    facts = Facts(cores=3, default_resources={"slurm_extra": "--qos=high", "slurm_partition": "gpu"})
    p = run_plan.plan_of(cfg, facts, {"device": "cpu", "partition": "gpu", "max_minutes": 60, "images": {"train": 10, "eval": 5}})
    assert p.config == {**cfg, "device": "cpu"} and cfg["device"] == "auto"
    assert (p.cores, p.on_cluster, p.partition, p.max_minutes) == (3, False, "gpu", 60)
    assert (p.slurm_extra, p.planned_images) == ("--qos=high", 15)
    assert os.environ[resources.PLAN_ENV] == ""  # plan_of shares nothing: shared_plan does
