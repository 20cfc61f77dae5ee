"""Starting and stopping the warm-start server of a local run (pqv.common.warmstart), and which
job commands run cold. Torch-free: the server is a child process, started when Snakemake starts
running jobs (not in a dry run) and stopped when it ends; it also leaves by itself when Snakemake
is gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = "PQV_WARM_SOCKET"  # where a job's `python -m pqv` finds the server
SERVE = "--warm-start-server"  # `python -m pqv --warm-start-server SOCKET` (pqv/__main__.py)
# Commands that run in a fresh process: the timing rules' (pqv.plan.resources.TIMING_STAGES: latency,
# profile), measured in the process layout they always had, without the server's imports in their
# memory; and the data stage's, which imports no torch and runs while the server starts.
COLD = (("evaluate", "latency"), ("profile",), ("data",))
STARTING_S = 60  # how long a job waits for a server that is still importing (it takes ~7 s)


def cold_command(argv: list[str]) -> bool:
    """Whether `pqv argv` runs in its own fresh process (a timing command, or no command at all)."""
    words = [a for a in argv if not a.startswith("-")]
    return not words or any(words[: len(c)] == list(c) for c in COLD)


_server: subprocess.Popen | None = None  # this Snakemake process's, while it runs jobs


def start(enabled: bool, on_cluster: bool, log: str | os.PathLike) -> None:
    """Start the server for this run's jobs, unless it is off or they run elsewhere (a cluster run,
    or a job process a cluster executor started). Jobs started before it is ready run cold."""
    global _server
    if not enabled or on_cluster or sys.platform != "linux" or os.environ.get(ENV):
        return
    folder = tempfile.mkdtemp(prefix="pqv-warm-")  # short: a socket's path has ~100 bytes at most
    path = os.path.join(folder, "socket")
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        _server = subprocess.Popen(
            [sys.executable, "-m", "pqv", SERVE, path],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,  # a Ctrl-C reaches the jobs through their clients, once
        )
    Path(folder, "server.pid").write_text(str(_server.pid))
    os.environ[ENV] = path  # the environment of every job Snakemake starts from now on


def starting(path: str) -> bool:
    """Whether the server of `path` still imports (its process lives, its socket is not there yet)."""
    try:
        pid = int(Path(path).with_name("server.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return not os.path.exists(path)


def stop() -> None:
    global _server
    if _server is None:
        return
    server, _server = _server, None
    path = os.environ.pop(ENV, None)
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
    if path:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
