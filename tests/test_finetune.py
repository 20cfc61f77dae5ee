"""Finetune: recovery after pruning, exact resume after a kill, DDP = one process, distillation, wiring."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pqv.common import checkpoint, datasets, store, timelimit
from pqv.plan import fileio
from pqv.plan.errors import PQVError
from pqv.stages import data, finetune, prune

from .conftest import DIGITS, TINY_KWARGS, held_out_top1, manifest_file, tiny_arch, tiny_vit

REPO = Path(__file__).resolve().parents[1]
SMALL = {"name": "digits", "max_train": 192, "max_eval": 64}  # 6 steps of 32 per epoch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: fast on a shared 2-core machine (two threads spin-wait against each other)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _save(path: Path, seed: int = 0) -> Path:
    m = tiny_vit(seed)
    store.save_model(m, path, tiny_arch(m))
    store.write_sidecar(path, "prune", params=1, macs=1)
    return path


def test_pruned_demo_model_recovers_within_two_points_of_dense(trained_tiny):
    """25 % L2-pruned, then the default workflow's finetune (config/config.yaml) recovers."""
    dense, a, dense_top1 = trained_tiny
    hparams = yaml.safe_load((REPO / "config/config.yaml").read_text())["finetune"]
    example = datasets.sample_batch(DIGITS, a["data_config"], 1, split="train")
    pruned = prune.prune(copy.deepcopy(dense), "l2", 0.25, example)
    before = held_out_top1(pruned, a["data_config"])
    finetune.train(pruned, DIGITS, a["data_config"], hparams)
    after = held_out_top1(pruned, a["data_config"])
    print(f"dense {dense_top1:.2f}  pruned {before:.2f}  finetuned {after:.2f}")
    assert before < dense_top1 - 2  # pruning did cost accuracy ...
    assert after >= dense_top1 - 2  # ... and the finetune gave it back


def test_killed_finetune_resumes_to_the_same_weights(tmp_path, monkeypatch):
    src = _save(tmp_path / "pruned.safetensors")
    hp = {"epochs": 3, "lr": 1e-3, "batch_size": 32, "mixup": 0.8, "cutmix": 1.0}  # mixup: RNG must resume too
    whole = tmp_path / "whole" / "finetuned.safetensors"
    finetune.run(str(src), str(whole), data.scan(SMALL), hp, str(whole.parent / "metrics.csv"))

    out = tmp_path / "resumed" / "finetuned.safetensors"
    metrics = out.parent / "metrics.csv"
    save = checkpoint.save_checkpoint

    def killed_after_epoch_2(ckpt_dir, epoch, *args):
        save(ckpt_dir, epoch, *args)
        if epoch == 2:
            raise KeyboardInterrupt  # as if the job was killed here

    monkeypatch.setattr(checkpoint, "save_checkpoint", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(str(src), str(out), data.scan(SMALL), hp, str(metrics))
    monkeypatch.undo()
    ckpt = Path(checkpoint.checkpoint_dir(out))
    assert not out.exists() and not metrics.exists()  # Snakemake never sees a partial output
    assert [p.name for p in ckpt.iterdir()] == ["epoch-0002"]
    state = torch.load(ckpt / "epoch-0002" / "state.pt", weights_only=True)  # no pickle needed
    assert state["epoch"] == 2

    result = finetune.run(str(src), str(out), data.scan(SMALL), hp, str(metrics))
    assert result["resumed_after_epoch"] == 2 and fileio.read_sidecar(out)["resumed_after_epoch"] == 2
    assert not ckpt.exists()
    a, b = load_file(str(whole)), load_file(str(out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics.read_text() == (whole.parent / "metrics.csv").read_text()


def test_a_finetune_stopped_by_its_deadline_mid_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A job's time limit stops training at a step (here: every 4th step of an attempt), a checkpoint
    keeps the step and the random generators, and the next attempts resume there: after as many
    attempts as it takes, the weights and the metrics are those of an uninterrupted run."""
    src = _save(tmp_path / "pruned.safetensors")
    hp = {"epochs": 3, "lr": 1e-3, "batch_size": 32, "mixup": 0.8, "cutmix": 1.0, "color_jitter": 0.0}
    whole = tmp_path / "whole" / "finetuned.safetensors"
    finetune.run(str(src), str(whole), data.scan(SMALL), hp, str(whole.parent / "metrics.csv"))

    out = tmp_path / "stopped" / "finetuned.safetensors"
    metrics = out.parent / "metrics.csv"
    calls = iter(range(10_000))
    monkeypatch.setattr(timelimit, "job_deadline", lambda: 0.0)  # as if in a SLURM job
    monkeypatch.setattr(timelimit, "out_of_time", lambda deadline, longest, ctx: next(calls) % 4 == 3)
    attempts = 0
    while True:
        attempts += 1
        calls = iter(range(10_000))  # a new job: its clock starts again
        try:
            result = finetune.run(str(src), str(out), data.scan(SMALL), hp, str(metrics))
            break
        except timelimit.TimeLimit as e:
            assert "the next attempt resumes from it" in str(e) and not out.exists() and not metrics.exists()
            (ckpt,) = Path(checkpoint.checkpoint_dir(out)).iterdir()
            state = torch.load(ckpt / "state.pt", weights_only=True)  # no pickle, RNG states included
            assert len(state["stops"]) == attempts and (state.get("step", 0) > 0) == ("-step-" in ckpt.name)
    assert attempts >= 4  # 18 steps, 4 per attempt (an epoch boundary counts too)
    assert result["time_limit_stops"] == attempts - 1 == fileio.read_sidecar(out)["time_limit_stops"]
    a, b = load_file(str(whole)), load_file(str(out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics.read_text() == (whole.parent / "metrics.csv").read_text()
    assert not Path(checkpoint.checkpoint_dir(out)).exists()


def test_a_retry_runs_again_only_after_a_time_limit_stop(tmp_path, monkeypatch, capsys):
    """Issue 40: Snakemake's retries of rule finetune follow any failure. A time-limit stop exits
    75 and its retry resumes; a failure for a real reason (here a bug) leaves its line beside the
    output, and the retry fails at once with it instead of training again. A new run (attempt 1,
    after a fix) runs."""
    from pqv import cli

    src = _save(tmp_path / "pruned.safetensors")
    out = tmp_path / "b" / "finetuned.safetensors"
    hp = {"epochs": 2, "lr": 1e-3, "batch_size": 32}

    def pqv(number):
        return cli.main(
            [
                "finetune",
                "--model",
                str(src),
                "--out",
                str(out),
                "--data",
                manifest_file(SMALL),
                "--hparams",
                json.dumps(hp),
                "--metrics",
                str(out.parent / "m.csv"),
                "--attempt",
                str(number),
            ]
        )

    real, runs = finetune.run, []

    def buggy(*args, **kwargs):
        runs.append(1)
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(finetune, "run", buggy)
    with pytest.raises(ZeroDivisionError):  # a bug: its traceback, as before
        pqv(1)
    assert len(runs) == 1
    marker = Path(timelimit.failure_marker(out))
    assert marker.read_text() == "ZeroDivisionError: division by zero\n"
    capsys.readouterr()
    assert pqv(2) == 2 and len(runs) == 1  # the retry does not train again ...
    (line,) = capsys.readouterr().err.strip().splitlines()  # ... and says why in one line
    assert line == (
        "pqv finetune: error: not run again: attempt 1 failed for a reason other than its time limit, "
        "which a retry cannot fix: ZeroDivisionError: division by zero"
    )

    monkeypatch.setattr(finetune, "run", real)  # fixed; a new Snakemake run starts at attempt 1
    calls = iter(range(10_000))
    monkeypatch.setattr(timelimit, "job_deadline", lambda: 0.0)
    monkeypatch.setattr(timelimit, "out_of_time", lambda deadline, longest, ctx: next(calls) == 2)
    assert pqv(1) == timelimit.TimeLimit.exit_status == 75 and not marker.exists()
    assert "stopped before the job's time limit" in capsys.readouterr().err
    assert pqv(2) == 0 and out.exists() and not marker.exists()  # the retry resumes
    assert fileio.read_sidecar(out)["time_limit_stops"] == 1


def test_the_deadline_is_the_slurm_jobs_end_less_a_reserve(tmp_path, monkeypatch):
    import time

    squeue = tmp_path / "squeue"
    squeue.write_text('#!/bin/bash\n[ "$3" = 77 ] && echo "2:00 10:00"\n[ "$3" = 79 ] && echo "30:00 1:00:00"\n')
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert timelimit.job_deadline() is None  # not a SLURM job: no deadline
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert abs(timelimit.job_deadline() - (time.time() + 120 - 30)) < 5  # 5 % of the 10-minute limit kept
    monkeypatch.setenv("SLURM_JOB_ID", "79")  # 30 minutes left of an hour: 5 % of the limit kept
    assert abs(timelimit.job_deadline() - (time.time() + 1800 - 180)) < 5
    monkeypatch.setenv("SLURM_JOB_ID", "78")  # squeue says nothing
    assert timelimit.job_deadline() is None


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    src = _save(tmp_path / "pruned.safetensors")
    out = tmp_path / "finetuned.safetensors"
    m, arch = store.load_model(src)
    dc = arch["data_config"]
    ckpt = checkpoint.checkpoint_dir(out)
    finetune.train(m, data.scan(SMALL), dc, {"epochs": 1, "batch_size": 32}, ckpt_dir=ckpt, resume_key="x")
    result = finetune.run(str(src), str(out), data.scan(SMALL), {"epochs": 1, "batch_size": 32}, str(tmp_path / "m.csv"))
    assert result["resumed_after_epoch"] == 0  # the key differs (input hash): start over


def test_two_ddp_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """torchrun --nproc_per_node=2 (gloo on CPU), batch 16 each == one process with batch 32."""
    src = _save(tmp_path / "pruned.safetensors")
    hp = {"epochs": 2, "lr": 1e-3, "warmup_epochs": 1}
    ddp = tmp_path / "ddp" / "finetuned.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pqv",
        "finetune",
        "--model",
        str(src),
        "--out",
        str(ddp),
        "--data",
        manifest_file(SMALL),
        "--hparams",
        json.dumps({**hp, "batch_size": 16}),
        "--metrics",
        str(ddp.parent / "m.csv"),
        "--threads",
        "4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    side = fileio.read_sidecar(ddp)
    assert side["world_size"] == 2 and side["global_batch"] == 32
    assert side["threads_per_process"] == 2  # each of the 2 ranks takes half the job's 4 cores, not all 4
    assert sorted(p.name for p in ddp.parent.iterdir()) == ["finetuned.safetensors", "finetuned.safetensors.json", "m.csv"]

    one = tmp_path / "one" / "finetuned.safetensors"
    finetune.run(str(src), str(one), data.scan(SMALL), {**hp, "batch_size": 32}, str(one.parent / "m.csv"))
    a, b = load_file(str(one)), load_file(str(ddp))
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"largest weight difference DDP vs one process: {worst:.2e}")
    assert worst < 1e-4, worst
    dc = store.load_model(one)[1]["data_config"]
    assert held_out_top1(store.load_model(ddp)[0], dc) == pytest.approx(held_out_top1(store.load_model(one)[0], dc), abs=2.0)


STOPPING = """import itertools, sys
from pqv import cli
from pqv.common import timelimit
stop_at = int(sys.argv[1])  # the deadline check that says stop (each rank counts the same checks)
calls = itertools.count()
timelimit.job_deadline = lambda: 0.0  # as if in a SLURM job
timelimit.out_of_time = lambda deadline, longest, ctx: next(calls) == stop_at
sys.exit(cli.main(sys.argv[2:]))
"""


def test_two_ddp_processes_stopped_mid_epoch_resume_each_with_its_own_state(tmp_path):
    """Issue 40: a DDP finetune stopped by its deadline mid-epoch resumes every rank with its own
    random generators (rank 1 must not replay rank 0's augmentation and mixup) and its own loss so
    far: weights and metrics equal those of an uninterrupted two-process run."""
    src = _save(tmp_path / "pruned.safetensors")
    hp = {"epochs": 2, "lr": 1e-3, "batch_size": 16, "mixup": 0.8, "cutmix": 1.0, "color_jitter": 0.0}
    script = tmp_path / "stopping.py"
    script.write_text(STOPPING)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    manifest = manifest_file(SMALL)

    def attempt(out: Path, stop_at: int) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(stop_at),
            "finetune",
            "--model",
            str(src),
            "--out",
            str(out),
            "--data",
            manifest,
            "--hparams",
            json.dumps(hp),
            "--metrics",
            str(out.parent / "m.csv"),
            "--threads",
            "2",
        ]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    whole = tmp_path / "whole" / "finetuned.safetensors"
    proc = attempt(whole, -1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "stopped" / "finetuned.safetensors"
    proc = attempt(out, 2)  # 6 steps of 2 x 16 per epoch: stops after step 3 of epoch 1
    assert proc.returncode != 0 and "stopped before the job's time limit after 3 of 12 steps" in proc.stderr, proc.stderr[-3000:]
    (ckpt,) = Path(checkpoint.checkpoint_dir(out)).iterdir()
    assert ckpt.name == "epoch-0000-step-00000003"
    state = torch.load(ckpt / "state.pt", weights_only=True)  # no pickle: every rank's state in it
    assert len(state["ranks"]) == 2
    assert not torch.equal(state["ranks"][0]["rng"]["torch"], state["ranks"][1]["rng"]["torch"])
    assert not torch.equal(state["ranks"][0]["partial"], state["ranks"][1]["partial"])
    proc = attempt(out, -1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert fileio.read_sidecar(out)["resumed_at_step"] == 3
    a, b = load_file(str(whole)), load_file(str(out))
    assert all(torch.equal(a[k], b[k]) for k in a), max((a[k] - b[k]).abs().max().item() for k in a)
    assert (out.parent / "m.csv").read_text() == (whole.parent / "m.csv").read_text()


def test_distillation_from_the_parent(tmp_path):
    x = torch.randn(4, 10)
    assert finetune.distill_loss(x, x, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert finetune.distill_loss(x, torch.randn(4, 10), 2.0).item() > 0

    src = _save(tmp_path / "pruned.safetensors")
    teacher = _save(tmp_path / "model.safetensors", seed=1)
    out = tmp_path / "finetuned.safetensors"
    hp = {"epochs": 1, "batch_size": 32, "distill": {"enabled": True, "alpha": 0.7, "temperature": 2.0}}
    with pytest.raises(PQVError, match="distill.enabled needs"):
        finetune.run(str(src), str(out), data.scan(SMALL), hp, str(tmp_path / "m.csv"))
    assert not out.exists()
    finetune.run(str(src), str(out), data.scan(SMALL), hp, str(tmp_path / "m.csv"), teacher=str(teacher))
    assert fileio.read_sidecar(out)["teacher"] == str(teacher)


@pytest.mark.parametrize(
    "cores, workers, processes, torch_threads", [(2, 2, 1, 2), (2, 0, 1, 2), (8, 4, 1, 8), (16, 2, 4, 4), (8, 2, 2, 4), (1, 4, 2, 1)]
)
def test_torch_takes_every_core_the_job_holds_and_workers_do_not_subtract(tmp_path, cores, workers, processes, torch_threads):
    """The threads a finetune process really runs with, for (job cores, DataLoader workers,
    torchrun processes on the node): its share of the cores, whatever the workers."""
    src = _save(tmp_path / "pruned.safetensors")
    m, arch = store.load_model(src)
    os.environ["LOCAL_WORLD_SIZE"] = str(processes)  # as torchrun sets it for each of its processes
    try:
        result = finetune.train(
            m,
            data.scan({**SMALL, "max_train": 64}),
            arch["data_config"],
            {"epochs": 1, "batch_size": 32},
            threads=cores,
            workers=workers,
        )
    finally:
        del os.environ["LOCAL_WORLD_SIZE"]
    assert result["threads_per_process"] == torch_threads


def test_bad_settings_are_clear_errors():
    with pytest.raises(PQVError, match=r"unknown key 'finetune.epoch' \(did you mean 'epochs'\?\)"):
        finetune.resolve_hparams({"epoch": 3})
    with pytest.raises(PQVError, match="even batch_size"):
        finetune.resolve_hparams({"mixup": 0.8, "batch_size": 33})


def test_imagefolder_training_gets_timm_augmentation(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (60 * i, 30, 200)).save(tmp_path / split / cls / f"{i}.png")
    spec = data.scan({"name": "imagefolder", "root": str(tmp_path)})
    dc = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}
    augment = {"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25, "color_jitter": 0.4, "hflip": 0.5}
    loader = datasets.loader(spec, "train", dc, 4, training=True, augment=augment)
    transform = repr(loader.dataset.transform)
    assert "RandAugment" in transform and "RandomErasing" in transform
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 32, 32)


def _image_folder(root: Path, per_class: int = 8) -> dict:
    """A tiny ImageFolder of noise images (so every augmentation shows), scanned by the data stage."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (20, 20, 3)).astype(np.uint8) // (1 + c)
                Image.fromarray(pixels, "RGB").save(root / split / cls / f"{i}.png")
    return data.scan({"name": "imagefolder", "root": str(root)})


def test_any_worker_count_gives_the_same_weights_and_resumes_to_them(tmp_path, monkeypatch):
    """Issue 40: dataset.workers reruns nothing, so it must change nothing. Each image's augmentation
    draws from its own stream, seeded from (seed, epoch, image index): workers 0 and 2 give the same
    finetuned weights bit for bit (timm's RandAugment, crop, flip, colour jitter and random erasing,
    with Mixup/CutMix drawn in the loop's process), and so does a run with 2 workers stopped
    mid-epoch every 3 steps and resumed."""
    manifest = _image_folder(tmp_path / "images")
    m = tiny_vit(0, in_chans=3, num_classes=2, img_size=16, patch_size=4)
    kwargs = {"num_classes": 2, **TINY_KWARGS, "in_chans": 3, "img_size": 16, "patch_size": 4}
    from pqv.common.arch import describe
    from pqv.stages import model as pqv_model

    src = tmp_path / "pruned.safetensors"
    store.save_model(m, src, describe(m, "vit_tiny_patch16_224", kwargs, pqv_model.data_config_of(m)))
    store.write_sidecar(src, "prune", params=1, macs=1)
    hp = {
        "epochs": 2,
        "lr": 1e-3,
        "batch_size": 4,
        "mixup": 0.8,
        "cutmix": 1.0,
        "warmup_epochs": 0,
        "auto_augment": "rand-m9-n2-inc1",
        "reprob": 0.5,
    }

    def finetuned(name: str, workers: int) -> dict:
        out = tmp_path / name / "finetuned.safetensors"
        finetune.run(str(src), str(out), manifest, hp, str(out.parent / "metrics.csv"), workers=workers)
        return load_file(str(out))

    one = finetuned("workers0", 0)
    two = finetuned("workers2", 2)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not all(torch.equal(one[k], v) for k, v in load_file(str(src)).items() if k in one)  # it trained

    calls = iter(range(10_000))
    monkeypatch.setattr(timelimit, "job_deadline", lambda: 0.0)  # as if in a SLURM job
    monkeypatch.setattr(timelimit, "out_of_time", lambda deadline, longest, ctx: next(calls) % 3 == 2)
    for _ in range(10):
        calls = iter(range(10_000))
        try:
            resumed = finetuned("stopped", 2)
            break
        except timelimit.TimeLimit:
            pass
    assert all(torch.equal(one[k], resumed[k]) for k in one)


def test_rule_adds_teacher_and_torchrun_only_when_configured(tmp_path):
    from .test_workflow import TINY_CONFIG, pqv_commands, snakemake

    plain = pqv_commands(snakemake(tmp_path, "-n", "-p", "--forceall"))
    lines = [ln for ln in plain if " -m pqv finetune " in ln]
    assert lines and all("--teacher" not in ln and "torch.distributed.run" not in ln for ln in lines)

    cfg = {**TINY_CONFIG, "finetune": {**TINY_CONFIG["finetune"], "nproc": 2, "distill": {"enabled": True}}}
    out = pqv_commands(snakemake(tmp_path, "-n", "-p", "--forceall", config=cfg))
    lines = [ln for ln in out if " -m pqv finetune " in ln]
    trained = [ln for ln in lines if "--keep" not in ln]  # the dense branch is passed through, not trained
    assert len(trained) == 2 and len(lines) == 3
    assert all("--teacher results/tiny/model.safetensors" in ln for ln in trained)
    assert all("torch.distributed.run --standalone --nproc_per_node=2 -m pqv" in ln for ln in trained)


def test_the_attempt_is_read_from_the_snakemake_job_process_above():
    """On a cluster node Snakemake runs each job as `python -m snakemake ... --attempt N`, the shell
    and `pqv finetune` below it: the attempt is read there, not from the rule's command line."""
    child = "from pqv.common import timelimit; print(timelimit.snakemake_attempt())"
    parent = f"import subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {child!r}]))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for args, expected in (
        (["-m", "snakemake", "--jobs", "1", "--attempt", "3"], "3"),
        (["-m", "snakemake"], "None"),
        (["--attempt", "2"], "None"),
    ):  # not Snakemake's
        proc = subprocess.run([sys.executable, "-c", parent, *args], capture_output=True, text=True, env=env, timeout=120)
        assert proc.stdout.strip() == expected, proc.stderr[-2000:]
