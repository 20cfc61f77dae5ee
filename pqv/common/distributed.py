"""torchrun's process group for the training loop (pqv.stages.finetune): joining and leaving it,
where this process sits in it (`Dist`), and every rank's own state gathered for rank 0 to write.
Apart from the loop, because the time limit's check (pqv.common.timelimit) needs a rank too, and
every rank must answer it alike.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """Where this process sits: rank, world size and device (world 1 = no process group)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def join(device: str = "auto") -> Dist:
    """Join torchrun's process group when launched by torchrun with WORLD_SIZE > 1 (idempotent).

    torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT; NCCL on GPUs, gloo on CPUs.
    `device` is the config's preference (pqv.common.device.resolve): auto = CUDA when available.
    """
    from .device import resolve

    cuda = resolve(device).type == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    if dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), device)
    return Dist(device=device)


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_states(mine: dict, ctx: Dist) -> list[dict]:
    """Every rank's own state (`mine` on each: tensors, numbers, strings and containers), in rank
    order, on every rank; rank 0 writes them all into the checkpoint. Sent as the bytes of a
    tensors-only torch.save (torch.load(weights_only=True) reads them; no pickle)."""
    if ctx.world == 1:
        return [mine]
    buf = io.BytesIO()
    torch.save(mine, buf)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8).to(ctx.device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=ctx.device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world)]
    dist.all_gather(sizes, size)
    padded = torch.zeros(int(max(n.item() for n in sizes)), dtype=torch.uint8, device=ctx.device)
    padded[: data.numel()] = data
    gathered = [torch.zeros_like(padded) for _ in range(ctx.world)]
    dist.all_gather(gathered, padded)
    return [
        torch.load(io.BytesIO(g[: int(n.item())].cpu().numpy().tobytes()), map_location="cpu", weights_only=True)
        for g, n in zip(gathered, sizes)
    ]
