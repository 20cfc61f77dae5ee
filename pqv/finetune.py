"""Finetune stage: recover a pruned model's accuracy with timm's optimizer and scheduler.

The same loop trains the demo model from scratch in the model stage, so the "pretrained" starting
point of the default workflow is made by exactly the code that finetunes.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from . import data
from .evaluate import accuracy
from .io import atomic_path

DEFAULTS = {
    "epochs": 5,
    "batch_size": 64,
    "lr": 1.5e-4,
    "weight_decay": 0.05,
    "opt": "adamw",
    "sched": "cosine",
    "warmup_epochs": 1,
    "warmup_lr": 1e-6,
    "min_lr": 1e-6,
    "smoothing": 0.1,
    "seed": 0,
}


def train(model: nn.Module, spec: dict, data_config: dict, hparams: dict, metrics_csv: str | None = None,
          desc: str = "finetune") -> dict:
    """Train `model` in place; return the final eval top-1/top-5 and the per-epoch history."""
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    hp = {**DEFAULTS, **hparams}
    torch.manual_seed(hp["seed"])
    train_loader = data.loader(spec, "train", data_config, hp["batch_size"], training=True, seed=hp["seed"])
    eval_loader = data.loader(spec, "eval", data_config, 256)
    optimizer = create_optimizer_v2(model, opt=hp["opt"], lr=hp["lr"], weight_decay=hp["weight_decay"])
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=hp["sched"], num_epochs=hp["epochs"], warmup_epochs=hp["warmup_epochs"],
        warmup_lr=hp["warmup_lr"], min_lr=hp["min_lr"], step_on_epochs=False,
        updates_per_epoch=len(train_loader),
    )
    loss_fn = LabelSmoothingCrossEntropy(hp["smoothing"]) if hp["smoothing"] > 0 else nn.CrossEntropyLoss()

    history = []
    bar = tqdm(range(hp["epochs"]), desc=desc, unit="epoch", mininterval=2)
    step = 0
    for epoch in bar:
        model.train()
        total, seen = 0.0, 0
        for images, labels in train_loader:
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            total += loss.item() * len(labels)
            seen += len(labels)
        top1, top5 = accuracy(model_eval(model), eval_loader)
        row = {"epoch": epoch + 1, "train_loss": total / seen, "eval_top1": top1, "eval_top5": top5,
               "lr": optimizer.param_groups[0]["lr"]}
        if not math.isfinite(row["train_loss"]):
            raise FloatingPointError(f"training diverged at epoch {epoch + 1} (loss {row['train_loss']}); lower the lr")
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", top1=f"{top1:.2f}")
    model.eval()
    if metrics_csv:
        write_history(history, metrics_csv)
    last = history[-1] if history else {}
    if not history:
        top1, top5 = accuracy(model_eval(model), eval_loader)
        last = {"eval_top1": top1, "eval_top5": top5}
    return {"top1": last["eval_top1"], "top5": last["eval_top5"], "epochs": hp["epochs"], "hparams": hp}


def model_eval(model: nn.Module):
    model.eval()

    @torch.no_grad()
    def run(x):
        return model(x)

    return run


def write_history(history: list[dict], path: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        fields = ["epoch", "train_loss", "eval_top1", "eval_top5", "lr"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def run(model_path: str, out: str, spec: dict, hparams: dict, metrics_csv: str) -> dict:
    """CLI entry: load a pruned model, finetune it, save it with the same architecture header."""
    from . import io

    model, arch = io.load_model(model_path)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = train(model, spec, arch["data_config"], hparams, metrics_csv=metrics_csv, desc=f"finetune {Path(out).parent.name}")
    parent = io.read_sidecar(model_path)
    io.save_model(model, out, arch)
    io.write_sidecar(out, "finetune", parent=str(model_path), top1=result["top1"], top5=result["top5"],
                     hparams=result["hparams"], params=parent.get("params"), macs=parent.get("macs"),
                     data_config=arch["data_config"])
    return result
