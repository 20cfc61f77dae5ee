"""A training run's checkpoints in `<out>.ckpt/`: where it stands (`Position`), the files written
after every epoch or at a stop mid-epoch, every random generator's state, and the resume from the
latest. Kept apart from the loop (pqv.stages.finetune) so that what a checkpoint holds, and that
torch.load(weights_only=True) reads all of it, is one module's business.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIX = ".ckpt"


def checkpoint_dir(out: str) -> str:
    return f"{out}{CHECKPOINT_SUFFIX}"


@dataclass
class Position:
    """Where a run stands: `step` optimizer steps into `epoch` (0 at an epoch's start), the loss
    sum and sample count of that epoch so far, and the random generators' states mid-epoch."""

    epoch: int = 0
    step: int = 0
    partial: torch.Tensor | None = None
    rng: dict | None = None
    stops: list = field(default_factory=list)  # the attempts that stopped for a time limit: where, which job
    ranks: list | None = None  # every rank's own {partial, rng} mid-epoch (distributed.rank_states), for the checkpoint


def rng_state() -> dict:
    """Every generator the training loop draws from, as tensors and numbers (weights_only loads it)."""
    np_state = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_rest": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [int(v) for v in random.getstate()[1]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, gauss = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    ckpt_dir: str,
    epoch: int,
    key: str,
    model: nn.Module,
    optimizer,
    scheduler,
    scaler,
    history: list[dict],
    mid: Position | None = None,
) -> None:
    """Write `ckpt_dir/epoch-NNNN/` (after `epoch` whole epochs) or, stopped mid-epoch,
    `epoch-NNNN-step-NNNNNNNN/` (weights.safetensors + state.pt) atomically, then drop older ones.

    The folder is filled under a temporary name and renamed, so a present folder is complete, and
    the names sort in training order. state.pt holds only tensors, numbers, strings and containers:
    torch.load(weights_only=True) reads it. Mid-epoch, `ranks` holds each rank's loss so far and
    generators (`mid.ranks`, gathered by distributed.rank_states; one process's own when not given).
    """
    from safetensors.torch import save_file

    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".epoch-", suffix=".part", dir=root))
    state = {
        "epoch": epoch,
        "key": key,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "history": history,
        "stops": mid.stops if mid is not None else [],
    }
    name = f"epoch-{epoch:04d}"
    if mid is not None and mid.step:  # each rank's own loss so far and generators, rank by rank
        state.update(step=mid.step, ranks=mid.ranks or [{"partial": mid.partial, "rng": mid.rng}])
        name += f"-step-{mid.step:08d}"
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "weights.safetensors")
        torch.save(state, tmp / "state.pt")
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in root.glob("epoch-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt_dir: str, key: str) -> dict | None:
    """The latest complete checkpoint made with the same settings and inputs, or None."""
    from safetensors.torch import load_file

    done = sorted(Path(ckpt_dir).glob("epoch-*")) if Path(ckpt_dir).is_dir() else []
    if not done:
        return None
    state = torch.load(done[-1] / "state.pt", map_location="cpu", weights_only=True)
    if state.get("key") != key:
        log.info("ignoring checkpoint %s: made with other settings or inputs", done[-1])
        return None
    state["model"] = load_file(str(done[-1] / "weights.safetensors"))
    return state


def resume(ckpt_dir: str, key: str, model: nn.Module, parts: dict, rank: int) -> tuple[list, Position] | None:
    """(history, position) of the latest checkpoint made with `key`, its weights loaded into `model`
    and its states into `parts` (optimizer, scheduler, scaler by name); None when there is none."""
    state = load_checkpoint(ckpt_dir, key)
    if state is None:
        return None
    model.load_state_dict(state["model"])
    for name, part in parts.items():
        part.load_state_dict(state[name])
    # Mid-epoch, each rank resumes with its own generators and loss so far (a checkpoint of one
    # process, or of before issue 40, holds rank 0's alone at the top level).
    own = state["ranks"][rank] if state.get("ranks") else {"partial": state.get("partial"), "rng": state.get("rng")}
    return state["history"], Position(state["epoch"], state.get("step", 0), own.get("partial"), own.get("rng"), state.get("stops", []))
