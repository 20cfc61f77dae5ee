"""A finetune in a job with a time limit: when it must stop (`job_deadline`, the SLURM job's end
less a reserve), whether the next step could end too late (`out_of_time`, every rank alike), the
stop itself (`TimeLimit`, exit status 75), and Snakemake's retries, of which only those after such
a stop run again (`attempt`). Apart from the loop (pqv.stages.finetune): these are the cluster's
and Snakemake's rules, not training's.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..plan.errors import PQVError
from ..plan.fileio import atomic_path
from .distributed import Dist


class TimeLimit(PQVError):
    """The job's time limit is near: a checkpoint holds where training stopped, and the next
    attempt (Snakemake's retries of the finetune rule) resumes from it."""

    exit_status = 75  # EX_TEMPFAIL: `pqv finetune` stopped for its time limit (torchrun's own status is 1)


def failure_marker(out: str) -> str:
    """The file an attempt that failed for another reason than its time limit leaves beside `out`."""
    return f"{out}.failed"


def snakemake_attempt(pid: int | None = None) -> int | None:
    """The attempt of the Snakemake job this process runs in: the `--attempt N` Snakemake gives the
    process that runs a job on a cluster node (an ancestor of this one), read from /proc; None
    elsewhere (a local run, where PQV sets no retries, or no Snakemake at all). Read here rather
    than passed on the rule's command line, whose text Snakemake records: a changed command would
    rerun every finetune already made."""
    pid = os.getppid() if pid is None else pid
    for _ in range(16):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if any(Path(a).name.startswith("snakemake") for a in argv) and "--attempt" in argv[:-1]:
            with contextlib.suppress(ValueError):
                return int(argv[argv.index("--attempt") + 1])
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent (the name before it may hold spaces)
        if pid <= 1:
            return None
    return None


def attempt(out: str, number: int | None, work):
    """Run `work()` as attempt `number` of the finetune that makes `out` (Snakemake's `attempt`,
    snakemake_attempt() when None).

    Snakemake's retries start a job again whatever made it fail; only a stop for the time limit
    (TimeLimit) is worth another attempt, which resumes from the checkpoint. Any other failure (a
    bug, a bad setting, a broken input) of one of Snakemake's attempts leaves its one-line error in
    failure_marker(out), and a retry finds it and fails at once with that line instead of running
    again; a run outside Snakemake's attempts leaves nothing. A first attempt (a new
    Snakemake run, perhaps after a fix) removes an old marker; success removes it too. A process
    killed from outside (a node lost, out of memory) leaves no marker: its retry resumes.
    """
    number = snakemake_attempt() if number is None else number
    marker = Path(failure_marker(out))
    first = os.environ.get("RANK", "0") == "0"  # under torchrun, one process clears the marker
    if number is not None and number > 1 and marker.exists():
        raise PQVError(
            f"not run again: attempt {number - 1} failed for a reason other than its time limit, which "
            f"a retry cannot fix: {marker.read_text().strip()}"
        )
    if first:
        marker.unlink(missing_ok=True)
    try:
        result = work()
    except TimeLimit:
        raise
    except Exception as e:
        if number is None:  # not one of Snakemake's attempts: no retry to stop, and nothing left behind
            raise
        line = str(e) if isinstance(e, PQVError) else f"{type(e).__name__}: {e}"
        line = " ".join(line.split()) or type(e).__name__
        with contextlib.suppress(OSError), atomic_path(marker) as tmp:
            Path(tmp).write_text(line + "\n")
        raise
    if first:
        marker.unlink(missing_ok=True)
    return result


def job_deadline() -> float | None:
    """When a finetune in this job must stop training (time.time()): the SLURM job's end, less a
    reserve for saving the checkpoint and leaving, which includes Snakemake's jobstep recording the
    job on a shared file system (5 % of the job's limit, 10 s to 5 min); None outside SLURM or
    without a limit. A kill during the save loses nothing older: a checkpoint appears whole."""
    from ..plan.resources import slurm_time_left

    left = slurm_time_left()
    if left is None:
        return None
    seconds, limit = left
    return time.time() + seconds - min(max(10.0, 0.05 * limit), 300.0)


def out_of_time(deadline: float | None, longest_step: float, ctx: Dist) -> bool:
    """Whether the next step could end after the deadline; every rank stops at the same step."""
    if deadline is None:
        return False
    late = torch.tensor([float(time.time() + longest_step > deadline)], device=ctx.device)
    if ctx.world > 1:
        dist.all_reduce(late, op=dist.ReduceOp.MAX)
    return bool(late.item())
