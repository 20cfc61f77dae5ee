"""What each job asks a cluster for follows the config (pqv/resources.py)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pqv import config as pqv_config
from pqv import prune, resources

REPO = Path(__file__).resolve().parents[1]
STAGES = ("model", "prune", "finetune", "quantize", "export", "evaluate", "evaluate_eager", "profile")


def config(**sections) -> dict:
    """The embedded default with `sections` merged over it and the schema's defaults filled in."""
    cfg = pqv_config.load_yaml(REPO / "config/config.yaml")
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    pqv_config.fill_defaults(cfg, pqv_config.load_schema())
    return cfg


def test_gradient_importances_are_prunes():
    assert set(resources.GRADIENT_IMPORTANCES) == {n for n, i in prune.IMPORTANCES.items() if i.needs != "weights"}


def test_gpus_follow_device_nproc_and_importance():
    cfg = config(finetune={"nproc": 4})
    assert resources.gpus("finetune", cfg) == 4
    assert resources.gpus("model", cfg) == 1 and resources.gpus("evaluate_eager", cfg) == 1
    assert resources.gpus("prune", cfg, "taylor", 0.25) == 1 and resources.gpus("prune", cfg, "hessian", 0.5) == 1
    assert resources.gpus("prune", cfg, "l2", 0.25) == 0 and resources.gpus("prune", cfg, "taylor", 0.0) == 0
    assert all(resources.gpus(s, cfg) == 0 for s in ("quantize", "export", "evaluate", "profile"))
    cpu = config(device="cpu", finetune={"nproc": 4})
    assert all(resources.gpus(s, cpu, "taylor", 0.5) == 0 for s in STAGES)


def test_threads_and_memory_follow_processes_and_workers():
    data = {"name": "imagefolder", "root": "/data", "workers": 2}
    cpu = config(device="cpu", dataset=data, finetune={"nproc": 2})
    gpu = config(dataset=data, finetune={"nproc": 2})
    # per process: torch threads + 2 DataLoader workers; a process that drives a GPU needs fewer threads
    assert resources.threads("finetune", cpu) == 2 * (resources.SCALE["imagefolder"]["threads"] + 2)
    assert resources.threads("finetune", gpu) == 2 * (resources.GPU_PROCESS_THREADS + 2)
    assert resources.mem_mb("finetune", cpu) == 2 * resources.mem_mb("model", cpu)
    assert resources.mem_mb("model", cpu) > resources.mem_mb("model", config())
    # latency jobs: at least evaluate.threads
    assert resources.threads("evaluate", config(evaluate={"threads": 3})) == 3


def test_wall_time_follows_epochs_and_images():
    short, long = config(finetune={"epochs": 5}), config(finetune={"epochs": 60})
    assert resources.runtime("finetune", long) > resources.runtime("finetune", short)
    data = {"name": "imagefolder", "root": "/data"}
    subset = config(dataset={**data, "max_train": 20000, "max_eval": 2000})
    full = config(dataset=data)
    for stage in ("model", "finetune", "evaluate"):
        assert resources.runtime(stage, full) > resources.runtime(stage, subset) >= resources.MIN_RUNTIME
    # twice the finetune processes on CPUs: twice the cores, half the wall time
    one, two = (resources.runtime("finetune", config(device="cpu", dataset=data, finetune={"nproc": n})) - resources.MIN_RUNTIME
                for n in (1, 2))
    assert abs(one - 2 * two) <= 2


def test_only_latency_jobs_ask_for_the_node_to_themselves():
    cfg = config()
    for stage in STAGES:
        extra = resources.of(stage, cfg).get("slurm_extra")
        assert (extra == "--exclusive") == (stage in resources.TIMING_STAGES)


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "cifar10.yaml"])
def test_every_shipped_config_gets_whole_positive_resources(name):
    cfg = copy.deepcopy(pqv_config.load_yaml(REPO / "config" / name))
    if name != "config.yaml":
        cfg = {**config(), **cfg}
    cfg["dataset"] = {**cfg["dataset"], "root": cfg["dataset"].get("root") or "/data"}
    pqv_config.fill_defaults(cfg, pqv_config.load_schema())
    for stage in STAGES:
        res = resources.of(stage, cfg, "taylor", 0.25)
        assert resources.threads(stage, cfg) >= 1
        assert all(isinstance(res[k], int) and res[k] >= 0 for k in ("mem_mb", "runtime", "gpu"))
        assert res["mem_mb"] > 0 and res["runtime"] >= resources.MIN_RUNTIME
