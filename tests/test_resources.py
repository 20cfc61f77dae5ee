"""What each job asks a cluster for follows the data and the model (pqv/plan/resources.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from pqv.plan import config as pqv_config
from pqv.plan import resources
from pqv.plan.errors import PQVError
from pqv.plan.resources import Work

REPO = Path(__file__).resolve().parents[1]
STAGES = ("data", "model", "prune", "finetune", "quantize", "export", "accuracy", "latency", "profile")
DEIT_B = {"timm_name": "deit_base_patch16_224"}
DEIT_TINY = {"timm_name": "deit_tiny_patch16_224"}
IMAGENET = Work(1_281_167, 50_000, *resources.estimate_macs(DEIT_B), data="imagefolder")
# a 398-image photo set (300 train, 98 val) and DeiT-tiny
PHOTOS = Work(300, 98, *resources.estimate_macs(DEIT_TINY), data="imagefolder")


def config(**sections) -> dict:
    """The embedded default with `sections` merged over it and the schema's defaults filled in."""
    cfg = pqv_config.load_yaml(REPO / "config/config.yaml")
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return pqv_config.filled(cfg)


def test_macs_of_a_timm_vit_are_estimated_from_its_name_and_kwargs():
    macs, params = resources.estimate_macs(DEIT_B)
    assert macs == pytest.approx(17.6e9, rel=0.03) and params == pytest.approx(85e6, rel=0.03)  # timm: 17.6 G, 86.6 M
    demo = pqv_config.load_yaml(REPO / "config/config.yaml")["models"][0]
    assert resources.estimate_macs(demo)[0] == pytest.approx(11.7e6, rel=0.03)  # measured: 11.7 M (README)
    assert resources.estimate_macs(DEIT_TINY)[0] == pytest.approx(1.26e9, rel=0.05)


def test_a_small_photo_set_asks_for_minutes_and_imagenet_for_hours():
    tiny = config(
        dataset={"name": "imagefolder", "root": "/photos"},
        models=[{"id": "t", **DEIT_TINY, "weights": "hub"}],
        finetune={"epochs": 10},
        device="cpu",
    )
    big = config(
        dataset={"name": "imagefolder", "root": "/imagenet"},
        models=[{"id": "b", **DEIT_B, "weights": "hub"}],
        finetune={"epochs": 60},
        device="cpu",
    )
    for stage in STAGES:
        small = resources.of(stage, tiny, PHOTOS, "taylor", 0.25, 398)
        large = resources.of(stage, big, IMAGENET, "taylor", 0.25, 1_331_167)
        assert small["runtime"] <= 30, (stage, small)  # minutes
        assert large["mem_mb"] > small["mem_mb"], stage
        # timing jobs: a few images either way; the model job with hub weights: a download, no training
        assert large["runtime"] > small["runtime"] or stage in ("latency", "profile", "model"), stage
        if stage in ("finetune", "accuracy"):
            assert large["runtime"] >= 60, (stage, large)  # hours
    assert resources.of("finetune", big, IMAGENET, planned_images=1_331_167)["runtime"] > 24 * 60  # 60 CPU epochs: days
    assert resources.of("finetune", tiny, PHOTOS, planned_images=398)["mem_mb"] < 4000
    assert resources.threads("finetune", tiny, 398) < resources.threads("finetune", big, 1_331_167)


def test_wall_time_follows_images_epochs_and_model_size():
    cfg = config(finetune={"epochs": 5})
    longer = config(finetune={"epochs": 60})
    half = Work(IMAGENET.train_images // 2, IMAGENET.eval_images // 2, IMAGENET.macs, IMAGENET.params)
    smaller = Work(IMAGENET.train_images, IMAGENET.eval_images, IMAGENET.macs / 4, IMAGENET.params / 4)
    assert resources.runtime("finetune", longer, IMAGENET) > resources.runtime("finetune", cfg, IMAGENET)
    for stage in ("model", "finetune", "accuracy"):
        assert resources.runtime(stage, cfg, IMAGENET) > resources.runtime(stage, cfg, half) >= resources.MIN_RUNTIME
        assert resources.runtime(stage, cfg, IMAGENET) > resources.runtime(stage, cfg, smaller)
    # twice the finetune processes on CPUs: twice the cores, half the wall time
    one, two = (
        resources.runtime("finetune", config(device="cpu", finetune={"nproc": n}), IMAGENET) - resources.MIN_RUNTIME for n in (1, 2)
    )
    assert abs(one - 2 * two) <= 2


def test_gpus_follow_device_nproc_and_importance():
    cfg = config(finetune={"nproc": 4})
    assert resources.gpus("finetune", cfg) == 4
    assert resources.gpus("model", cfg) == 1 and resources.gpus("accuracy", cfg, fmt="eager") == 1
    assert resources.gpus("prune", cfg, "taylor", 0.25) == 1 and resources.gpus("prune", cfg, "hessian", 0.5) == 1
    assert resources.gpus("prune", cfg, "l2", 0.25) == 0 and resources.gpus("prune", cfg, "taylor", 0.0) == 0
    assert all(
        resources.gpus(s, cfg, fmt=f) == 0
        for s in ("data", "quantize", "export", "accuracy", "latency", "profile")
        for f in ("ptl", "pte")
    )
    assert resources.gpus("latency", cfg, fmt="eager") == 0  # latency is timed on the CPU
    cpu = config(device="cpu", finetune={"nproc": 4})
    assert all(resources.gpus(s, cpu, "taylor", 0.5, "eager") == 0 for s in STAGES)


def test_threads_and_memory_follow_processes_and_workers():
    data = {"name": "imagefolder", "root": "/data", "workers": 2}
    cpu = config(device="cpu", dataset=data, finetune={"nproc": 2})
    gpu = config(dataset=data, finetune={"nproc": 2})
    big = 1_000_000
    # per process: torch threads + 2 DataLoader workers; a process that drives a GPU needs fewer threads
    assert resources.threads("finetune", cpu, big) == 2 * (resources.LARGE_THREADS + 2)
    assert resources.threads("finetune", gpu, big) == 2 * (resources.GPU_PROCESS_THREADS + 2)
    assert resources.mem_mb("finetune", cpu, IMAGENET) > 2 * resources.mem_mb("finetune", config(dataset=data), IMAGENET) / 2
    assert resources.mem_mb("accuracy", cpu, IMAGENET) > resources.mem_mb("accuracy", config(), PHOTOS)
    # latency jobs: evaluate.threads, no workers; the accuracy pass: every core and its workers
    assert resources.threads("latency", config(evaluate={"threads": 3}, dataset=data), big) == 3
    assert resources.threads("accuracy", cpu, big) == resources.LARGE_THREADS + 2
    assert resources.threads("quantize", cpu, big) == resources.STAGE_THREADS["quantize"]  # no DataLoader there


def test_only_latency_jobs_ask_for_the_node_to_themselves():
    cfg = config()
    for stage in STAGES:
        extra = resources.of(stage, cfg, PHOTOS).get("slurm_extra")
        assert (extra == "--exclusive") == (stage in ("latency", "profile"))
    # and they are short: the accuracy pass over ImageNet is not timed on an exclusive node
    assert resources.of("latency", cfg, IMAGENET)["runtime"] <= 15 < resources.of("accuracy", cfg, IMAGENET)["runtime"]


@pytest.mark.parametrize(
    "sinfo, partition, gpus, minutes",
    [
        ("pqv* infinite (null)\ngpu 2-00:00:00 gpu:a100:4", None, False, None),
        ("pqv* infinite (null)\ngpu 2-00:00:00 gpu:a100:4", "gpu", True, 2880),
        ("main* 1-00:00:00 gpu:h100:8,shard:2", None, True, 1440),
        ("short 1:00 (null)\nshort 30:00 (null)", "short", False, 1),  # a partition over two node sets: the tighter
        ("main* 4:00:00 (null)", "other", None, None),
        ("", None, None, None),
    ],
)
def test_slurm_partitions_say_whether_they_have_gpus_and_their_time_limit(tmp_path, monkeypatch, sinfo, partition, gpus, minutes):
    fake = tmp_path / "sinfo"
    fake.write_text(f"#!/bin/bash\nprintf '{sinfo}\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{__import__('os').environ['PATH']}")
    found = resources.slurm_partition(partition)
    assert (found.has_gpus, found.max_minutes) == (gpus, minutes)


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("infinite", None),
        ("UNLIMITED", None),
        ("30", 1800),
        ("5:00", 300),
        ("2:00:00", 7200),
        ("1-12:00:00", 129600),
        ("1-12", 129600),
        ("x", None),
    ],
)
def test_slurm_times_are_read_in_every_form_sinfo_and_squeue_print(text, seconds):
    assert resources.slurm_seconds(text) == seconds


def test_every_request_fits_the_partition_and_only_a_finetune_spans_jobs():
    day = resources.Partition("gpu", True, 1440)
    # the finetune of DeiT-B on ImageNet on 4 GPUs: within a day, consistent with docs/paper.md (5-10 h)
    gpu = config(finetune={"nproc": 4, "epochs": 60})
    minutes = resources.runtime("finetune", gpu, IMAGENET)
    assert 5 * 60 <= (minutes - resources.MIN_RUNTIME) / resources.MARGIN <= 10 * 60
    assert resources.fit("finetune", minutes, day, "finetune", "GPUs") == 1
    # on a 12-hour partition: two jobs, each capped
    half = resources.Partition("gpu", True, 720)
    assert resources.fit("finetune", minutes, half, "finetune", "GPUs") == 2
    assert resources.of("finetune", gpu, IMAGENET, max_minutes=720)["runtime"] == 720
    # on CPUs the same finetune is thousands of hours: one line, naming the stage, the hours and the fix
    cpu = config(device="cpu", finetune={"nproc": 4, "epochs": 60})
    with pytest.raises(PQVError, match=r"finetune of deit-b asks for [\d,]+ h on CPUs .* more than the 7 days.*device: cuda"):
        resources.fit("finetune", resources.runtime("finetune", cpu, IMAGENET), day, "finetune of deit-b", "CPUs")
    # a stage that cannot resume: its margin is capped, but not its estimate
    assert resources.fit("accuracy", 30, resources.Partition("p", None, 20), "accuracy", "CPUs") == 1
    with pytest.raises(PQVError, match="cannot resume"):
        resources.fit("accuracy", 200, resources.Partition("p", None, 20), "accuracy", "CPUs")
    assert resources.fit("accuracy", 10**6, resources.Partition("p", None, None), "accuracy", "CPUs") == 1  # no limit


def test_a_machine_shows_its_gpus_to_device_auto(tmp_path, monkeypatch):
    proc, dev = tmp_path / "gpus", tmp_path / "dev"
    proc.mkdir(), dev.mkdir()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert not resources.machine_has_gpus(str(proc), str(dev))
    (proc / "0000:17:00.0").mkdir()  # what an NVIDIA driver lists per GPU
    assert resources.machine_has_gpus(str(proc), str(dev))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not resources.machine_has_gpus(str(proc), str(dev))


def test_on_one_machine_without_a_gpu_no_job_asks_for_one(tmp_path):
    """`device: auto` on a machine that shows no GPU: the plan's `gpu` resources say what will run."""
    import subprocess
    import sys

    import yaml

    from .test_workflow import TINY_CONFIG

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    plan = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "c.yaml"),
            "--cores",
            "2",
            "-n",
        ],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert plan.returncode == 0 and "rule finetune:" in plan.stdout, plan.stderr[-2000:]
    assert "gpu=1" not in plan.stdout and "gpu=2" not in plan.stdout


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "cifar10.yaml", "cifar10-wide.yaml", "deit_b.yaml"])
def test_every_shipped_config_gets_whole_positive_resources(name):
    cfg = copy.deepcopy(pqv_config.load_yaml(REPO / "config" / name))
    if name != "config.yaml":
        cfg = {**config(), **cfg}
    cfg["dataset"] = {**cfg["dataset"], "root": cfg["dataset"].get("root") or "/data"}
    cfg = pqv_config.filled(cfg)
    work = Work(10_000, 1_000, *resources.estimate_macs(cfg["models"][0]))
    for stage in STAGES:
        res = resources.of(stage, cfg, work, "taylor", 0.25, 11_000)
        assert resources.threads(stage, cfg, 11_000) >= 1
        assert all(isinstance(res[k], int) and res[k] >= 0 for k in ("mem_mb", "runtime", "gpu"))
        assert res["mem_mb"] > 0 and res["runtime"] >= resources.MIN_RUNTIME_TIMING


def test_onnx_runtimes_quantize_job_asks_for_the_memory_it_was_measured_to_take():
    """ONNX Runtime's quantize job holds the exported, optimized, pre-processed and quantized models
    beside the eager one: DeiT-B at 9.375 % (71.2 M params) peaked at 2,663 MB (docs/latency.md)."""
    pruned = Work(256, 200, 14.5e9, 71.2e6, data="imagefolder")
    onnx = resources.of("quantize", config(), pruned, fmt="onnx")["mem_mb"]
    assert onnx >= 2663 and onnx > resources.of("quantize", config(), pruned, fmt="pt2")["mem_mb"]
    assert resources.of("export", config(), pruned, fmt="ort")["mem_mb"] >= 1282  # its export job, measured
