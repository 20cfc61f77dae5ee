"""The warm-start server of a local run (pqv.common.warmstart): where its jobs find it, who starts
it, when it is stopped, and which job commands run cold. Torch-free. Snakemake prepares its folder
when it starts running jobs (not in a dry run) and stops the server when it ends; the server also
leaves by itself when Snakemake is gone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from .resources import PLAN_ENV

ENV = "PQV_WARM_SOCKET"  # where a job's `python -m pqv` finds the server
SERVE = "--warm-start-server"  # `python -m pqv --warm-start-server SOCKET` (pqv/__main__.py)
# Commands that run in a fresh process: the timing rules' (pqv.plan.resources.TIMING_STAGES: latency,
# profile), measured in the process layout they always had, without the server's imports in their
# memory; and the data stage's, which imports no torch and runs while the server starts.
COLD = (("evaluate", "latency"), ("profile",), ("data",))
# What may differ between a job's environment and the server's, since no preloaded package reads it
# when imported: what Snakemake sets per job (its threads and its tmpdir resource, which a forked job
# takes from its own: pqv.common.warmstart sets torch's threads and tempfile's folder again), what the
# shell that runs a job's command sets (PWD, SHLVL, _), PATH (read when a program is run), and pqv's
# own (its run's plan, read when a job plans; the server's socket). A job whose environment differs
# from the server's in anything else runs cold.
JOB_OWN = frozenset(
    {
        "OMP_NUM_THREADS",
        "GOTO_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS",
        "NUMEXPR_NUM_THREADS",
        "TMPDIR",
        "TMP",
        "TEMPDIR",
        "TEMP",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
        "PATH",
        PLAN_ENV,
        ENV,
    }
)
STARTING_S = 60  # how long a job waits for a server that is still importing (it takes ~7 s)
CLAIMED_S = 10  # how long a claim may go without the server's pid (its first act writes it)
# The server's folder: the run's settings (prepare), the claim of the job that starts it (claim),
# the server's pid (register) and its socket (the path in ENV).
SETTINGS, LOCK, PID = "settings.json", "server.lock", "server.pid"


def cold_command(argv: list[str]) -> bool:
    """Whether `pqv argv` runs in its own fresh process (a timing command, or no command at all)."""
    words = [a for a in argv if not a.startswith("-")]
    return not words or any(words[: len(c)] == list(c) for c in COLD)


def differing(job: dict[str, str], server: dict[str, str]) -> set[str]:
    """The variables of a job's environment that the server was not started with (JOB_OWN aside)."""
    return {name for name in job.keys() | server.keys() if job.get(name) != server.get(name)} - JOB_OWN


_folder: str | None = None  # this Snakemake process's server folder, while it runs jobs


def prepare(enabled: bool, on_cluster: bool, log: str | os.PathLike) -> None:
    """Make the folder of this run's server and tell every job where it is, unless it is off or the
    jobs run elsewhere (a cluster run, or a job process a cluster executor started). The first job
    that would import torch starts the server (pqv.common.warmstart) and waits for it, as it would
    have waited for its own imports; a run of timing jobs alone never starts it, so nothing imports
    beside a latency job while it is timed."""
    global _folder
    if not enabled or on_cluster or sys.platform != "linux" or os.environ.get(ENV):
        return
    path = make_folder(log, watch=os.getpid())
    _folder = os.path.dirname(path)
    os.environ[ENV] = path  # the environment of every job Snakemake starts from now on


def make_folder(log: str | os.PathLike, watch: int) -> str:
    """A server's folder, with its settings: its log, and the process whose end it outlives by no
    more than a second. The path of its socket (for ENV)."""
    folder = tempfile.mkdtemp(prefix="pqv-warm-")  # short: a socket's path has ~100 bytes at most
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    Path(folder, SETTINGS).write_text(json.dumps({"log": str(Path(log).resolve()), "watch": watch}))
    return os.path.join(folder, "socket")


def claim(path: str) -> bool:
    """Whether this caller is the one to start the server of `path` (the first to ask, in a folder
    that `prepare` made)."""
    if not Path(path).with_name(SETTINGS).exists():
        return False
    try:
        os.close(os.open(Path(path).with_name(LOCK), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def register(path: str) -> dict:
    """The server's first act: say which process it is (for `starting` and `stop`); the run's
    settings: its log and the process whose end it outlives by no more than a second."""
    folder = Path(path).parent
    (folder / f"{PID}.new").write_text(str(os.getpid()))
    os.replace(folder / f"{PID}.new", folder / PID)
    return json.loads((folder / SETTINGS).read_text())


def starting(path: str) -> bool:
    """Whether the server of `path` was started and still imports (its socket is not there yet)."""
    folder = Path(path).parent
    if os.path.exists(path) or not (folder / LOCK).exists():
        return False
    if not (folder / PID).exists():  # claimed a moment ago, or the claimant died before it started one
        try:
            return time.time() - (folder / LOCK).stat().st_mtime < CLAIMED_S
        except OSError:
            return False
    try:
        os.kill(int((folder / PID).read_text()), 0)
    except (OSError, ValueError):  # it died while importing: the jobs run cold
        return False
    return True


def stop() -> None:
    """Stop this run's server, if one was started, and remove its folder."""
    global _folder
    if _folder is None:
        return
    folder, _folder = _folder, None
    os.environ.pop(ENV, None)
    remove(folder)


def remove(folder: str) -> None:
    """Stop the server of `folder`, if one was started, and remove the folder."""
    try:
        pid = int(Path(folder, PID).read_text())
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):  # up to 10 s to leave; os.kill raises once it is gone
            time.sleep(0.1)
            os.kill(pid, 0)
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass  # never started, or gone
    shutil.rmtree(folder, ignore_errors=True)
