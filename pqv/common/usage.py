"""What a job's process used, counted by the process itself: the last line of every job's log.

Snakemake's benchmark file samples a job's process tree every 0.5 s for its first 15 s, then every
30 s, and keeps the CPU seconds of the last sample: a job that ends between two samples loses the
CPU time it used after the last one (a 33 s Taylor prune job of DeiT-B was counted 27 of its 58
CPU-s: a mean load of 0.81 instead of 1.72; docs/deit_b.md). The kernel's own counts are exact:
this process's, its reaped children's (DataLoader workers once joined) and its live children's.
`pqv costs` takes the larger of the two CPU counts (the line misses the interpreter's exit, the
sample what came after it) and Snakemake's wall time.
Torch-free, and Linux's /proc where there is one (elsewhere: the counts of this process and its
reaped children, timed from when pqv's CLI was imported).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

PREFIX = "pqv usage: "
_IMPORTED = time.monotonic()
_forked = False  # a job forked from a local run's warm-start server (pqv.common.warmstart)


def mark_forked() -> None:
    """This process is a job forked from the warm-start server: its clock and counts started at the
    fork (the server's imports are not the job's), and its line says so."""
    global _forked
    _forked = True


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _live_children_cpu_s() -> float:
    """CPU seconds of this process's descendants that still run (not yet in RUSAGE_CHILDREN)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo, seen = 0.0, [os.getpid()], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
            if pid != os.getpid():
                fields = _stat(pid)
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except OSError:  # gone meanwhile: its time is in its parent's reaped children, or lost with it
            continue
    return total


def _wall_s() -> float:
    """Seconds since this process started (the kernel's start time), or since pqv's CLI loaded."""
    try:
        started = int(_stat("self")[19]) / os.sysconf("SC_CLK_TCK")
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, AttributeError, ValueError):
        return time.monotonic() - _IMPORTED


def measure() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        live = _live_children_cpu_s()
    except OSError:
        live = 0.0
    cpu = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + live
    wall = _wall_s()
    rss_kb = own.ru_maxrss / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, kB elsewhere
    counts = {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "mean_load": round(cpu / wall, 3) if wall > 0 else None,
        "max_rss_mb": round(rss_kb / 1024, 1),
    }
    return {**counts, "warm": True} if _forked else counts


def report(stream=sys.stderr) -> None:
    """One line for the job's log: `pqv usage: {...}` (JSON)."""
    print(PREFIX + json.dumps(measure()), file=stream, flush=True)


def read(log: str | Path) -> dict | None:
    """The CPU and wall seconds a job's log records, summed over its lines (one per process: a
    finetune that torchrun runs as several ranks writes one each); None without any."""
    try:
        lines = [line for line in Path(log).read_text(errors="replace").splitlines() if line.startswith(PREFIX)]
    except OSError:
        return None
    records = []
    for line in lines:
        try:
            records.append(json.loads(line[len(PREFIX) :]))
        except json.JSONDecodeError:
            continue
    if not records:
        return None
    return {
        "cpu_s": sum(r["cpu_s"] for r in records),
        "wall_s": max(r["wall_s"] for r in records),
        "max_rss_mb": max(r.get("max_rss_mb", 0) for r in records),
        "warm": any(r.get("warm", False) for r in records),
        "processes": len(records),
    }
