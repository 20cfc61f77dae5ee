"""Finetune stage: recover a pruned model's accuracy with timm's training pieces.

timm supplies the optimizer (create_optimizer_v2), the cosine schedule with warm-up
(create_scheduler_v2), Mixup/CutMix with soft targets, label smoothing and the ImageFolder
augmentation (pqv.common.datasets). This module adds what a long run on shared machines needs:

- one code path for CPU, one GPU (autocast + GradScaler when `amp`) and several GPUs or nodes
  under `torchrun` (DistributedDataParallel; `batch_size` is per process, so the global batch is
  `batch_size` x world size; only rank 0 writes files; the process group: pqv.common.distributed);
- optional knowledge distillation from the unpruned parent;
- a checkpoint after every epoch in `<out>.ckpt/` (safetensors weights + a tensors-only
  torch.save of optimizer/scheduler/scaler state; pqv.common.checkpoint), from which a killed run
  resumes to the same result, because every epoch's randomness is seeded from (seed, epoch, rank);
- a job with a deadline (a SLURM job's time limit) saves a checkpoint mid-epoch just before it,
  with the step reached and every rank's own loss so far and random generators' states, and stops
  (`TimeLimit`, exit status 75): the next job resumes at that step, so a finetune longer than a
  partition allows runs as successive jobs; a retry after any other failure fails at once (`attempt`;
  the time limit and the retries: pqv.common.timelimit).

The same loop trains the demo model from scratch in the model stage, so the "pretrained" starting
point of the default workflow is made by exactly the code that finetunes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..common import checkpoint, datasets, distributed, timelimit
from ..common.checkpoint import Position
from ..common.distributed import Dist
from ..common.progress import progress
from ..plan import fileio
from ..plan import manifest as manifests
from ..plan.errors import PQVError
from ..plan.fileio import atomic_path
from ..plan.registry import Status

log = logging.getLogger(__name__)


def resolve_hparams(hparams: dict) -> dict:
    """Every training setting, defaults filled from the config's description (pqv.plan.config.Finetune)
    and checked there; an unknown key is an error (a typo would otherwise be silently ignored)."""
    from ..plan.config import hparams as checked

    return checked(hparams)


def seed_epoch(seed: int, epoch: int, rank: int) -> int:
    """Seed every RNG the loop uses (torch, numpy for Mixup, random for transforms) from
    (seed, epoch, rank) alone, so an epoch draws the same numbers whether or not it follows a resume."""
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)
    return value


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target loss: KL(teacher || student) at temperature T, scaled by T^2."""
    t = temperature
    return (
        F.kl_div(F.log_softmax(student / t, dim=-1), F.log_softmax(teacher / t, dim=-1), reduction="batchmean", log_target=True)
        * t
        * t
    )


def _loss_and_mixup(hp: dict, num_classes: int):
    """timm's Mixup/CutMix with soft-target CE when configured, else (smoothed) CE."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if hp["mixup"] > 0 or hp["cutmix"] > 0:
        mixup = Mixup(
            mixup_alpha=hp["mixup"],
            cutmix_alpha=hp["cutmix"],
            prob=hp["mixup_prob"],
            switch_prob=hp["mixup_switch_prob"],
            mode=hp["mixup_mode"],
            label_smoothing=hp["smoothing"],
            num_classes=num_classes,
        )
        return SoftTargetCrossEntropy(), mixup
    if hp["smoothing"] > 0:
        return LabelSmoothingCrossEntropy(hp["smoothing"]), None
    return nn.CrossEntropyLoss(), None


def _augment(hp: dict) -> dict:
    return {"auto_augment": hp["auto_augment"], "re_prob": hp["reprob"], "color_jitter": hp["color_jitter"], "hflip": hp["hflip"]}


@dataclass
class _Run:
    """Everything one training run updates, built once by `_setup`."""

    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    teacher: nn.Module | None
    optimizer: object
    scheduler: object
    scaler: object
    autocast: object
    loss_fn: object
    mixup: object
    hp: dict
    ctx: Dist

    def step(self, images: torch.Tensor, labels: torch.Tensor, step: int) -> torch.Tensor:
        """One optimizer step; the batch's summed loss (detached)."""
        hp, kd = self.hp, self.hp["distill"]
        images = images.to(self.ctx.device, non_blocking=True)
        labels = labels.to(self.ctx.device, non_blocking=True)
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        with self.autocast():
            logits = self.net(images)
            loss = self.loss_fn(logits, targets)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(images)
                soft = distill_loss(logits.float(), teacher_logits.float(), kd["temperature"])
                loss = (1 - kd["alpha"]) * loss + kd["alpha"] * soft
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if hp["clip_grad"]:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), hp["clip_grad"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step_update(step + 1)
        return loss.detach().double() * len(labels)

    def state(self) -> dict:
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}


def _setup(model: nn.Module, hp: dict, ctx: Dist, teacher: nn.Module | None, steps_per_epoch: int) -> _Run:
    """The model on its device, DDP, the teacher, timm's optimizer and schedule, AMP, the loss."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    model.to(ctx.device)
    net = model
    if ctx.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if teacher is not None and hp["distill"]["enabled"]:
        teacher = teacher.to(ctx.device).eval().requires_grad_(False)
    else:
        teacher = None
    # The optimizer sees the unwrapped model: timm excludes norms/biases/tokens from weight decay by name.
    optimizer = create_optimizer_v2(model, opt=hp["opt"], lr=hp["lr"], weight_decay=hp["weight_decay"])
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=hp["sched"],
        num_epochs=hp["epochs"],
        warmup_epochs=hp["warmup_epochs"],
        warmup_lr=hp["warmup_lr"],
        min_lr=hp["min_lr"],
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    use_amp = hp["amp"] and ctx.device.type == "cuda"
    amp_dtype = getattr(torch, hp["amp_dtype"])
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    autocast = lambda: torch.autocast("cuda", dtype=amp_dtype, enabled=use_amp)  # noqa: E731
    loss_fn, mixup = _loss_and_mixup(hp, _num_classes(model))
    return _Run(model, net, teacher, optimizer, scheduler, scaler, autocast, loss_fn, mixup, hp, ctx)


def _resume(run: _Run, ckpt_dir: str | None, key: str, desc: str) -> tuple[list, Position]:
    """(history, position): from the latest checkpoint made with `key`, else from the start."""
    found = checkpoint.resume(ckpt_dir, key, run.model, run.state(), run.ctx.rank) if ckpt_dir else None
    if found is None:
        return [], Position()
    history, where = found
    if run.ctx.main:  # Snakemake clears a job's log before each attempt: the earlier ones are told again
        for n, stop in enumerate(where.stops, 1):
            log.info(
                "%s: attempt %d (SLURM job %s) stopped before its time limit at epoch %d, step %d",
                desc,
                n,
                stop["job"] or "-",
                stop["epoch"] + 1,
                stop["step"],
            )
        at = f"epoch {where.epoch}" + (f", step {where.step}" if where.step else "")
        log.info("%s: resuming after %s from %s", desc, at, ckpt_dir)
    return history, where


class Diverged(PQVError):
    """The training loss stopped being finite: a result of the branch's settings, not a broken input."""


def _epoch(
    run: _Run, loader, epoch: int, steps_per_epoch: int, bar, start: Position, deadline: float | None = None
) -> dict | Position:
    """One epoch of training from `start` (its step and loss so far, when resumed mid-epoch): the
    history row (its mean training loss; the evaluation split is the accuracy jobs', so that a change
    to it never retrains), or the position reached when the deadline stopped it mid-epoch."""
    hp, ctx = run.hp, run.ctx
    seed = seed_epoch(hp["seed"], epoch, ctx.rank)
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip = start.step * loader.batch_size  # the batches the stopped attempt trained on
    loader.generator.manual_seed(seed)  # DataLoader workers' seeds
    if start.rng is not None:  # the generators where the stopped attempt left them (exact with workers 0)
        checkpoint.set_rng_state(start.rng)
    run.net.train()
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss sum, samples
    if start.partial is not None:
        total += start.partial.to(ctx.device)
    longest, last = 0.0, time.monotonic()
    for step, (images, labels) in enumerate(loader, start=epoch * steps_per_epoch + start.step):
        total[0] += run.step(images, labels, step)
        total[1] += len(labels)
        bar.update()
        bar.set_postfix(epoch=f"{epoch + 1}/{hp['epochs']}", refresh=False)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
        done = step + 1 - epoch * steps_per_epoch
        if done < steps_per_epoch and timelimit.out_of_time(deadline, longest, ctx):
            return Position(epoch, done, total.cpu(), checkpoint.rng_state(), start.stops)
    loader.sampler.skip = 0
    if ctx.world > 1:
        dist.all_reduce(total)
    row = {"epoch": epoch + 1, "train_loss": (total[0] / total[1].clamp(min=1)).item(), "lr": run.optimizer.param_groups[0]["lr"]}
    if not math.isfinite(row["train_loss"]):
        bar.close()  # its last line before the error, not after it
        raise Diverged(
            f"training diverged at epoch {epoch + 1}: the loss is {row['train_loss']}",
            f"lower lr (now {hp['lr']:g}), set clip_grad, or add warmup_epochs",
        )
    bar.set_postfix(epoch=f"{epoch + 1}/{hp['epochs']}", loss=f"{row['train_loss']:.3f}")
    return row


def train(
    model: nn.Module,
    manifest,
    data_config: dict,
    hparams: dict,
    metrics_csv: str | None = None,
    desc: str = "finetune",
    teacher: nn.Module | None = None,
    ckpt_dir: str | None = None,
    resume_key: str = "",
    device: str = "auto",
    workers: int = 0,
    threads: int | None = None,
    deadline: float | None = None,
) -> dict:
    """Train `model` in place (it ends on the CPU, in eval mode) on the training split; return its
    history. Nothing here reads the evaluation split: the accuracy jobs score the result.

    Under torchrun every rank calls this; rank 0 writes the metrics and checkpoints. With
    `ckpt_dir`, a checkpoint is written after every epoch and the latest one whose hparams, world
    size and `resume_key` (e.g. a hash of the input files) match is resumed from. `threads` is the
    job's cores: each process takes its share (its DataLoader `workers` decode beside). With a `deadline`
    (time.time()), training stops before a step that could end after it, saves a checkpoint where
    it stands (mid-epoch too) and raises TimeLimit.
    """
    from ..common.device import describe
    from ..plan.reruns import launch_keys
    from .evaluate import process_threads

    hp = resolve_hparams(hparams)
    if hp["distill"]["enabled"] and teacher is None:
        raise PQVError("distill.enabled needs the unpruned parent model", "pass --teacher <model.safetensors>")
    ctx = distributed.join(device)
    if threads:  # torchrun starts LOCAL_WORLD_SIZE processes on this node, each told the job's cores
        torch.set_num_threads(process_threads(threads, int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    torch.manual_seed(hp["seed"])
    manifest = manifests.of(manifest)
    loader = datasets.loader(
        manifest,
        "train",
        data_config,
        hp["batch_size"],
        training=True,
        seed=hp["seed"],
        rank=ctx.rank,
        world_size=ctx.world,
        augment=_augment(hp),
        workers=workers,
    )
    steps = len(loader)
    run = _setup(model, hp, ctx, teacher, steps)
    trained_by = {k: v for k, v in hp.items() if k not in launch_keys()}  # not how the job started
    key = json.dumps({"hparams": trained_by, "world": ctx.world, "input": resume_key}, sort_keys=True)
    history, start = _resume(run, ckpt_dir, key, desc)
    # One bar over every optimizer step of the run (an ImageNet epoch is thousands of steps), with
    # rate and ETA; the epoch and its metrics are in the postfix.
    bar = progress(desc=desc, unit="step", total=hp["epochs"] * steps, initial=start.epoch * steps + start.step, disable=not ctx.main)
    for epoch in range(start.epoch, hp["epochs"]):
        row = _epoch(run, loader, epoch, steps, bar, start if epoch == start.epoch else Position(epoch, stops=start.stops), deadline)
        if isinstance(row, Position):  # the deadline: save where this attempt stopped, and leave
            bar.close()
            _stop(ckpt_dir, key, run, history, row, steps, hp["epochs"], ctx)
        history.append(row)
        if ckpt_dir and ctx.main:
            checkpoint.save_checkpoint(
                ckpt_dir,
                epoch + 1,
                key,
                model,
                run.optimizer,
                run.scheduler,
                run.scaler,
                history,
                Position(epoch + 1, stops=start.stops),
            )
        if epoch + 1 < hp["epochs"] and timelimit.out_of_time(deadline, 0.0, ctx):
            bar.close()
            _stop(ckpt_dir, key, run, history, Position(epoch + 1, stops=start.stops), steps, hp["epochs"], ctx)
    bar.close()
    model.cpu().eval()
    if metrics_csv and ctx.main:
        write_history(history, metrics_csv)
    return {
        "epochs": hp["epochs"],
        "hparams": hp,
        "history": history,
        "world_size": ctx.world,
        "global_batch": hp["batch_size"] * ctx.world,
        "resumed_after_epoch": start.epoch,
        "resumed_at_step": start.step,
        "time_limit_stops": len(start.stops),
        "device": describe(ctx.device, hp["amp_dtype"] if hp["amp"] and ctx.device.type == "cuda" else None),
        "threads_per_process": torch.get_num_threads(),
    }


def _stop(ckpt_dir: str | None, key: str, run: _Run, history: list, where: Position, steps: int, epochs: int, ctx: Dist) -> None:
    where.stops = [*where.stops, {"epoch": where.epoch, "step": where.step, "job": os.environ.get("SLURM_JOB_ID", "")}]
    if ckpt_dir and where.step:  # every rank takes part; rank 0 writes
        # Every rank's own mid-epoch state (its loss sum and sample count so far, unreduced, and its
        # random generators): each rank draws its own augmentation and mixup, and the epoch's loss
        # is summed over ranks at its end.
        where.ranks = distributed.rank_states({"partial": where.partial, "rng": where.rng}, ctx)
    if ckpt_dir and ctx.main:
        checkpoint.save_checkpoint(ckpt_dir, where.epoch, key, run.model, run.optimizer, run.scheduler, run.scaler, history, where)
    done = where.epoch * steps + where.step
    raise timelimit.TimeLimit(
        f"stopped before the job's time limit after {done} of {epochs * steps} steps (epoch "
        f"{where.epoch + 1}/{epochs}, step {where.step}/{steps}); the checkpoint is in {ckpt_dir}",
        "the next attempt resumes from it: Snakemake's retries of rule finetune start it, or run the same command again",
    )


def _num_classes(model: nn.Module) -> int:
    return getattr(model, "num_classes", None) or model.get_classifier().out_features


def write_history(history: list[dict], path: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        fields = ["epoch", "train_loss", "lr"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(
    model_path: str,
    out: str,
    manifest,
    hparams: dict,
    metrics_csv: str,
    teacher: str | None = None,
    device: str = "auto",
    workers: int = 0,
    threads: int | None = None,
) -> dict:
    """CLI entry (also under torchrun): finetune a pruned model, save it with its architecture header.

    Resumes from `<out>.ckpt/` when a previous attempt left one; removes it after success. In a
    SLURM job it stops before the job's time limit (timelimit.job_deadline), leaving the checkpoint.
    """
    from ..common import store

    hp = resolve_hparams(hparams)
    if hp["distill"]["enabled"] and not teacher:
        raise PQVError("distill.enabled needs the unpruned parent model", "pass --teacher <model.safetensors>")
    model, arch = store.load_model(model_path)
    parent = fileio.read_sidecar(model_path)
    teacher_model = store.load_model(teacher)[0] if teacher and hp["distill"]["enabled"] else None
    ctx = distributed.join(device)
    try:
        # the data set is an input too: a checkpoint made on other data must not be resumed
        manifest = manifests.of(manifest)
        resume_key = _sha256(model_path) + (_sha256(teacher) if teacher_model is not None else "") + manifest["fingerprint"]
        try:
            result = train(
                model,
                manifest,
                arch["data_config"],
                hparams,
                metrics_csv=metrics_csv,
                desc=f"finetune {Path(out).parent.name}",
                teacher=teacher_model,
                ckpt_dir=checkpoint.checkpoint_dir(out),
                resume_key=resume_key,
                device=device,
                workers=workers,
                threads=threads,
                deadline=timelimit.job_deadline(),
            )
        except Diverged as e:
            if ctx.main:
                failed(model_path, out, metrics_csv, str(e), parent, arch)
            return {"status": Status.FAILED.value, "reason": str(e)}
        if ctx.main:
            store.save_model(model, out, arch)
            store.write_sidecar(
                out,
                "finetune",
                parent=str(model_path),
                teacher=teacher,
                hparams=result["hparams"],
                world_size=result["world_size"],
                global_batch=result["global_batch"],
                resumed_after_epoch=result["resumed_after_epoch"],
                resumed_at_step=result["resumed_at_step"],
                time_limit_stops=result["time_limit_stops"],
                device=result["device"],
                threads_per_process=result["threads_per_process"],
                params=parent.get("params"),
                macs=parent.get("macs"),
                data_config=arch["data_config"],
            )
            shutil.rmtree(checkpoint.checkpoint_dir(out), ignore_errors=True)
    finally:
        distributed.leave()
    return result


def failed(model_path: str, out: str, metrics_csv: str, reason: str, parent: dict, arch: dict) -> None:
    """A diverged finetune as a result, not a crash: the pruned model is kept unfinetuned with
    status `failed` and the reason in its sidecar, which every file made from it carries on (a
    summary row that says why; a search probe that fails; never a chosen file)."""
    from ..common import store

    log.warning("FAILED: %s; the pruned model is kept unfinetuned with status '%s'", reason, Status.FAILED)
    model = store.load_model(model_path)[0]
    store.save_model(model, out, arch)
    write_history([], metrics_csv)
    store.write_sidecar(
        out,
        "finetune",
        parent=str(model_path),
        finetuned=False,
        status=Status.FAILED,
        reason=reason,
        params=parent.get("params"),
        macs=parent.get("macs"),
        data_config=arch["data_config"],
    )
    shutil.rmtree(checkpoint.checkpoint_dir(out), ignore_errors=True)


def keep(model_path: str, out: str, metrics_csv: str) -> dict:
    """The dense branch without finetuning (finetune.dense: false): the paper compares pruned models
    with the pretrained one, and 60 ImageNet epochs of the dense DeiT-B would cost GPU-days for nothing.

    The model is written unchanged, with no training history."""
    from ..common import store

    model, arch = store.load_model(model_path)
    parent = fileio.read_sidecar(model_path)
    base = fileio.read_sidecar(parent["parent"]) if parent.get("parent") else parent
    store.save_model(model, out, arch)
    write_history([], metrics_csv)
    store.write_sidecar(
        out,
        "finetune",
        parent=str(model_path),
        finetuned=False,
        device=base.get("device"),
        params=parent.get("params"),
        macs=parent.get("macs"),
        data_config=arch["data_config"],
    )
    return {}
