"""Warm start: the jobs of a local run fork from one process that imported torch and timm once.

Each job is its own `python -m pqv <stage>` process, and importing torch, torchvision, timm and
torch-pruning costs it about 6 CPU-s on a 2-vCPU EPYC (DESIGN.md): more than most jobs of a laptop
sweep compute. A local run keeps one process that has imported them (the server: the run's first
job that would import torch starts it, pqv.plan.warm says where, and Snakemake stops it at the
end); a job's `python -m pqv` connects to it, hands over its argv,
working directory, environment, umask and standard streams, and the server forks the job from its
imported state. The job is the same code on the same streams: its log, exit status, error lines and
usage line (pqv.common.usage: counted from the fork) read as they would cold.

A job runs cold, as before, when there is no server (a cluster run, `warm_start: false`), when it
cannot be reached, when its command is a timing one (pqv.plan.warm.COLD): latency
and profiles are measured in the same process layout as always, without the server's imports in
their memory; or when its environment differs from the server's in more than what may differ
between a run's jobs (pqv.plan.warm.JOB_OWN: Snakemake's threads and tmpdir, the shell's, PATH):
the preloaded packages read theirs when imported (huggingface_hub's HF_HUB_OFFLINE, HF_HOME and
HF_ENDPOINT, for one), and a forked job would run with the server's.

Each connection gets a supervisor (forked from the single-threaded server) that forks the job,
passes on the signals the client receives (SIGINT, SIGTERM, ...), kills the job if the client dies
(Snakemake killed it), and reports how the job ended; the client ends the same way.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field

from ..plan.warm import ENV, SERVE, STARTING_S, claim, cold_command, differing, register, starting
from . import usage

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
_HEADER = struct.Struct("!I")
# What every job but the data's imports, and what it costs it cold (DESIGN.md: ~6 CPU-s); the stages'
# own modules import their heavy packages inside functions, where a job needs them.
PRELOAD = ("torch", "torchvision", "timm", "torch_pruning", "pqv.common.store", "pqv.common.datasets")


@dataclass
class Job:
    """What a client asks the server to run."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    umask: int
    ignored: list[int] = field(default_factory=list)  # signals the client was started ignoring (SIG_IGN)


# ---- the client: `python -m pqv ...` (pqv/__main__.py), before anything heavy is imported


def run_in_server(argv: list[str]) -> int | None:
    """Run `pqv argv` in the warm-start server: its exit status, or None to run it cold here."""
    path = os.environ.get(ENV)
    if not path or cold_command(argv):
        return None
    if not os.path.exists(path) and claim(path):
        _spawn_server(path)  # the run's first job that imports torch: the server imports instead
    waited = 0.0
    while waited < STARTING_S and starting(path):  # its imports are under way: cheaper than ours
        time.sleep(0.05)
        waited += 0.05
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        umask = os.umask(0)
        os.umask(umask)
        # a signal the client was started ignoring (a shell's background job ignores SIGINT) is the job's
        # to ignore too, as a cold process keeps it ignored: neither forwarded nor handled
        ignored = [int(sig) for sig in FORWARDED if signal.getsignal(sig) is signal.SIG_IGN]
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask, "ignored": ignored}
        request = json.dumps(request).encode()
        message = _HEADER.pack(len(request)) + request
        sent = socket.send_fds(conn, [message], [0, 1, 2])
        conn.sendall(message[sent:])
    except OSError:
        conn.close()
        return None  # no server (yet), or it went away: this job imports for itself
    before = {sig: signal.signal(sig, lambda n, _frame: _send(conn, f"signal {n}\n")) for sig in FORWARDED if sig not in ignored}
    reply = b""
    while not reply.endswith(b"\n"):
        try:
            chunk = conn.recv(64)
        except InterruptedError:
            continue
        except OSError:
            chunk = b""
        if not chunk:
            print("pqv: the warm-start server ended before the job did (see its log)", file=sys.stderr)
            return 1
        reply += chunk
    how, number = reply.decode().split()
    if how == "cold":  # its environment differs from the server's where the preloaded packages read it
        for sig, handler in before.items():  # a signal is this process's own again
            signal.signal(sig, handler)
        conn.close()
        return None
    if how == "signal":  # end as the job ended: killed by the same signal
        signal.signal(int(number), signal.SIG_DFL)
        os.kill(os.getpid(), int(number))
        return 128 + int(number)
    return int(number)


def _spawn_server(path: str) -> None:
    """Start the server in a session of its own, outside this job's process tree (Snakemake's
    benchmark of this job samples the tree; and the server outlives the job)."""
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                os.execv(sys.executable, [sys.executable, "-m", "pqv", SERVE, path])
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def _send(conn: socket.socket, text: str) -> None:
    try:
        conn.sendall(text.encode())
    except OSError:
        pass


# ---- the server: `python -m pqv --warm-start-server SOCKET` (pqv/__main__.py), started by pqv.plan.warm


def serve(path: str) -> Job:
    """Import, listen on `path`, and fork a supervisor per connection; returns only in a job's
    process, with the job to run (so the job runs at the top of the stack, as a cold one would)."""
    import importlib

    settings = register(path)
    imported_under = dict(os.environ)  # what the preloaded packages read when they are imported
    log = os.open(settings["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    for name in PRELOAD:
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{path}.new")
    listener.listen(64)
    os.rename(f"{path}.new", path)  # clients see the socket once it accepts
    listener.settimeout(1.0)
    print(f"pqv warm start: {len(PRELOAD)} packages imported, serving {path}", file=sys.stderr, flush=True)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            conn = None
        _reap()
        if not _alive(settings["watch"]):  # Snakemake is gone (killed: no onsuccess/onerror), and no job can come
            listener.close()
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            sys.exit(0)
        if conn is None:
            continue
        conn.setblocking(True)
        if os.fork() == 0:
            listener.close()
            return _supervise(conn, imported_under)
        conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _receive(conn: socket.socket) -> tuple[Job, list[int]]:
    data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 3)
    size = _HEADER.unpack(data[: _HEADER.size])[0]
    data = data[_HEADER.size :]
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client left before its request was complete")
        data += chunk
    return Job(**json.loads(data)), fds


def _supervise(conn: socket.socket, imported_under: dict[str, str]) -> Job:
    """In the supervisor: fork the job (which returns its Job), pass signals on, report its end; or
    send it back to run cold, when its environment is not the one the server imported under."""
    try:
        job, fds = _receive(conn)
    except (OSError, ValueError, struct.error):
        os._exit(1)
    differ = sorted(differing(job.env, imported_under))
    if differ:
        print(
            f"pqv warm start: pqv {' '.join(job.argv)} runs cold: its environment differs from the server's in {', '.join(differ)}",
            file=sys.stderr,
            flush=True,
        )
        _send(conn, "cold 0\n")
        os._exit(0)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _become(job, fds)
        return job
    for fd in fds:
        os.close(fd)
    buffered = b""
    while True:
        ready, _, _ = select.select([conn], [], [], 0.05)
        if ready:
            chunk = conn.recv(256)
            if not chunk:  # the client is gone (killed): so goes its job, as a cold job would have
                _kill(pid, signal.SIGKILL)
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                _kill(pid, int(line.split()[1]))
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
    end = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.waitstatus_to_exitcode(status)}"
    print(f"pqv warm start: job {pid} (pqv {' '.join(job.argv)}): {end}", file=sys.stderr, flush=True)
    _send(conn, end + "\n")
    os._exit(0)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _become(job: Job, fds: list[int]) -> None:
    """Turn this forked process into the job's own: its streams, folder, environment and signals."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(job.cwd)
    os.environ.clear()
    os.environ.update(job.env)
    tempfile.tempdir = None  # found again from the job's TMPDIR (Snakemake's tmpdir resource), as a cold job finds it
    os.umask(job.umask)
    usage.mark_forked()
    # torch's threads, as a cold process takes them: OpenMP reads OMP_NUM_THREADS (Snakemake sets it to
    # the job's threads) when it loads, which here was in the server, with another job's environment
    import torch

    threads = job.env.get("OMP_NUM_THREADS", "")
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else len(os.sched_getaffinity(0)))
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for number in job.ignored:
        signal.signal(number, signal.SIG_IGN)
    sys.argv = [sys.argv[0], *job.argv]
    sys.stdout.reconfigure(line_buffering=os.isatty(1))  # as a cold job's stream would be
