"""The warm-start server (pqv/common/warmstart.py): a job forked from it makes what a cold job makes,
fails with the same line and status, and ends as a cold job would when its client is signalled or
killed; timing commands and the data stage never go through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pqv.plan import warm

from .conftest import job_environment, manifest_file


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server's folder as a local run's onstart makes it (pqv.plan.warm), in this test process; the
    first job that imports torch starts the server. Its log."""
    log = tmp_path_factory.mktemp("warm") / "warm_start.log"
    warm.prepare(True, False, log)
    folder = os.path.dirname(os.environ[warm.ENV])
    yield log
    warm.stop()
    assert warm.ENV not in os.environ and not os.path.exists(folder)


def pqv(*args: str, warm_socket: str | None, env: dict | None = None, ignoring: tuple = (), **kwargs) -> subprocess.Popen:
    """A job's process, started with SIGINT handled as a shell's foreground job has it, whatever this
    test process inherited (a shell's background job ignores SIGINT), or with the signals `ignoring`."""
    env = {k: v for k, v in (env or job_environment()).items() if k != warm.ENV}
    if warm_socket:
        env[warm.ENV] = warm_socket
    command = [sys.executable, "-m", "pqv", "--log-usage", *args]

    def dispositions():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        for sig in ignoring:
            signal.signal(sig, signal.SIG_IGN)

    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=dispositions, **kwargs
    )


def jobs_in(log: Path) -> list[str]:
    """The jobs the server's log lists (none before the first job started it)."""
    text = log.read_text() if log.exists() else ""
    return [line for line in text.splitlines() if line.startswith("pqv warm start: job ")]


def test_a_job_forked_from_the_server_makes_what_a_cold_job_makes(server, saved_tiny, tmp_path):
    before = len(jobs_in(server))
    outputs = {}
    for how, socket_path in (("cold", None), ("warm", os.environ[warm.ENV])):
        out = tmp_path / how / "pruned.safetensors"
        args = ("--model", str(saved_tiny), "--out", str(out), "--importance", "l2", "--ratio", "0.5")
        job = pqv("prune", *args, warm_socket=socket_path)
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-3000:]
        used = json.loads(err.strip().splitlines()[-1].removeprefix("pqv usage: "))
        assert used.get("warm", False) == (how == "warm")  # its usage line says where it started
        outputs[how] = (out.read_bytes(), json.loads(Path(f"{out}.json").read_text()))
    assert outputs["warm"][0] == outputs["cold"][0]  # the same weights, byte for byte
    assert {k: v for k, v in outputs["warm"][1].items() if "time" not in k} == {
        k: v for k, v in outputs["cold"][1].items() if "time" not in k
    }
    ran = jobs_in(server)[before:]
    assert len(ran) == 1 and ran[0].endswith(": exit 0") and " prune --model " in ran[0]


def test_an_error_is_the_same_line_and_status_through_the_server(server, tmp_path):
    ends = {}
    for how, socket_path in (("cold", None), ("warm", os.environ[warm.ENV])):
        job = pqv("prune", "--model", "missing.safetensors", "--out", str(tmp_path / "p.safetensors"), "--importance", "l2",
                  "--ratio", "0.5", warm_socket=socket_path, cwd=tmp_path)  # fmt: skip
        _, err = job.communicate(timeout=300)
        ends[how] = (job.returncode, [line for line in err.splitlines() if "error" in line])
    assert ends["warm"] == ends["cold"] and ends["cold"][0] == 2 and len(ends["cold"][1]) == 1, ends
    assert "missing.safetensors" in ends["cold"][1][0] and not list(tmp_path.glob("p.safetensors*"))


def test_a_job_whose_environment_differs_from_the_servers_runs_cold(server, tmp_path):
    """The preloaded packages read their environment when imported (huggingface_hub's HF_HOME,
    HF_ENDPOINT, HF_HUB_OFFLINE): a job with other values runs cold, and the server's log says why.
    The variables Snakemake sets per job (threads, tmpdir) are the job's own in a forked job."""
    before = len(jobs_in(server))
    args = ("prune", "--model", "missing.safetensors", "--out", str(tmp_path / "p.safetensors"), "--importance", "l2",
            "--ratio", "0.5")  # fmt: skip
    per_job = {**job_environment(), "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    for env, forked in ((per_job, 1), ({**job_environment(), "HF_HOME": str(tmp_path / "hf")}, 0)):
        job = pqv(*args, warm_socket=os.environ[warm.ENV], env=env, cwd=tmp_path)
        _, err = job.communicate(timeout=300)
        assert job.returncode == 2 and "missing.safetensors" in err.splitlines()[-1], err[-3000:]
        assert len(jobs_in(server)) == before + forked  # the server's log lists the jobs forked from it
        before += forked
    cold = [line for line in server.read_text().splitlines() if " runs cold: " in line]
    assert (
        cold[-1]
        == "pqv warm start: pqv --log-usage " + " ".join(args) + " runs cold: its environment differs from the server's in HF_HOME"
    )
    assert warm.differing({"A": "1", "TMPDIR": "/x", "B": "2"}, {"A": "1", "TMPDIR": "/y", "C": "3"}) == {"B", "C"}


def _long_finetune(saved_tiny, out: Path, socket_path: str | None, env: dict | None = None, ignoring: tuple = ()):
    hparams = {"epochs": 100000, "lr": 1e-4, "batch_size": 64, "warmup_epochs": 0}
    return pqv("finetune", "--model", str(saved_tiny), "--out", str(out), "--data", manifest_file(),
               "--hparams", json.dumps(hparams), "--metrics", str(out.parent / "metrics.csv"), "--threads", "1",
               warm_socket=socket_path, env=env, ignoring=ignoring)  # fmt: skip


def _training(job: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 120
    while not any(Path(f"{out}.ckpt").glob("*")):  # an epoch's checkpoint written: the job trains
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[1][-3000:]
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_client_ends_the_job_as_it_ends_a_cold_one(server, saved_tiny, tmp_path, sig):
    """Forked, or sent back by the server to run cold (its environment differs from the server's):
    the job ends as a cold one does."""
    ends = {}
    sent_back = job_environment(HF_HOME=str(tmp_path / "hf"))
    for how, socket_path, env in (
        ("cold", None, None),
        ("warm", os.environ[warm.ENV], None),
        ("sent back", os.environ[warm.ENV], sent_back),
    ):
        before = len(jobs_in(server))
        out = tmp_path / how / "finetuned.safetensors"
        job = _long_finetune(saved_tiny, out, socket_path, env)
        _training(job, out)
        job.send_signal(sig)
        _, err = job.communicate(timeout=120)
        ends[how] = job.returncode
        assert not out.exists()  # nothing half made
        ran = jobs_in(server)[before:]
        assert len(ran) == (how == "warm") and all(" finetune --model " in line for line in ran), ran
    assert ends["warm"] == ends["cold"] == ends["sent back"] != 0, ends


def test_a_signal_the_job_was_started_ignoring_it_ignores_warm_as_cold(server, saved_tiny, tmp_path):
    """A shell's background job starts with SIGINT ignored, and a cold process keeps it so: a forked job
    too (the client neither forwards it nor handles it). SIGTERM then ends both alike."""
    ends = {}
    for how, socket_path in (("cold", None), ("warm", os.environ[warm.ENV])):
        before = len(jobs_in(server))
        out = tmp_path / how / "finetuned.safetensors"
        job = _long_finetune(saved_tiny, out, socket_path, ignoring=(signal.SIGINT,))
        _training(job, out)
        job.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            job.wait(timeout=5)  # still training
        job.send_signal(signal.SIGTERM)
        job.communicate(timeout=120)
        ends[how] = job.returncode
        assert not out.exists() and len(jobs_in(server)[before:]) == (how == "warm")
    assert ends["warm"] == ends["cold"] != 0, ends


def test_a_killed_client_takes_its_job_with_it(server, saved_tiny, tmp_path):
    before = len(jobs_in(server))
    out = tmp_path / "finetuned.safetensors"
    job = _long_finetune(saved_tiny, out, os.environ[warm.ENV])
    _training(job, out)
    job.kill()  # as Snakemake kills a job's process
    job.wait(timeout=60)
    deadline = time.monotonic() + 60
    while len(jobs_in(server)) == before:  # the supervisor reports the job's end
        assert time.monotonic() < deadline, server.read_text()[-3000:]
        time.sleep(0.2)
    assert jobs_in(server)[-1].endswith(f": signal {int(signal.SIGKILL)}") and not out.exists()


def test_without_a_server_a_job_runs_cold(tmp_path):
    """A socket that is gone (the server stopped) or never came: the job imports for itself."""
    job = pqv("prune", "--model", "missing.safetensors", "--out", str(tmp_path / "p"), "--importance", "l2", "--ratio", "0.5",
              warm_socket=str(tmp_path / "no-such-socket"))  # fmt: skip
    _, err = job.communicate(timeout=300)
    assert job.returncode == 2 and "missing.safetensors" in err


@pytest.mark.parametrize(
    ("argv", "cold"),
    [
        (["--log-usage", "evaluate", "latency", "--artifact", "a.ptl"], True),
        (["profile", "--artifact", "a.ptl"], True),
        (["--log-usage", "data", "--out", "d.json"], True),
        (["--help"], True),
        (["--log-usage", "evaluate", "accuracy", "--artifact", "a.ptl"], False),
        (["--log-usage", "finetune", "--model", "m"], False),
    ],
)
def test_timing_commands_and_the_data_stage_run_cold(argv, cold):
    assert warm.cold_command(argv) is cold


def test_the_server_leaves_when_snakemake_is_killed(tmp_path):
    """Killed, Snakemake runs no onsuccess/onerror: the server sees the process that prepared it
    gone and leaves, taking its folder with it. A timing command never starts it."""
    log = tmp_path / "warm_start.log"
    code = f"""import os, subprocess, sys, time
from pqv.plan import warm
warm.prepare(True, False, {str(log)!r})
for stage in (["evaluate", "latency", "--artifact", "missing.ptl"], ["prune", "--model", "missing.safetensors", "--out", "p",
              "--importance", "l2", "--ratio", "0.5"]):
    subprocess.run([sys.executable, "-m", "pqv", *stage], capture_output=True)
    print(os.path.exists(os.path.join(os.path.dirname(os.environ[warm.ENV]), "server.lock")), flush=True)
print(os.environ[warm.ENV], flush=True)
time.sleep(600)
"""
    env = {k: v for k, v in os.environ.items() if k != warm.ENV}
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    assert [parent.stdout.readline().strip() for _ in range(2)] == ["False", "True"]  # the latency job started nothing
    path = parent.stdout.readline().strip()
    assert os.path.exists(path) and "job " in log.read_text()  # the prune job ran in it (and failed there)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while os.path.exists(os.path.dirname(path)):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def _in_a_forked_job(env: dict, folder: Path, ask) -> str:
    """What `ask()` returns in a process forked from this one and made a job's as the server makes
    it (pqv.common.warmstart._become), with `env` as the job's environment."""
    from pqv.common import warmstart

    job = warmstart.Job(argv=["--help"], cwd=str(folder), env=env, umask=0o022)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            devnull = os.open(os.devnull, os.O_RDWR)
            warmstart._become(job, [devnull, os.dup(devnull), os.dup(devnull)])
            os.write(write, str(ask()).encode())
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 4096).decode()
    os.waitpid(pid, 0)
    return answer


@pytest.mark.parametrize("omp", ["1", "2", None])
def test_a_forked_job_takes_torch_threads_from_its_own_environment(omp, tmp_path):
    """A cold job's OpenMP reads OMP_NUM_THREADS (Snakemake sets it to the job's threads) when torch
    loads; a forked job's torch was loaded by the server, under another job's environment."""
    import torch

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | ({"OMP_NUM_THREADS": omp} if omp else {})
    threads = int(_in_a_forked_job(env, tmp_path, torch.get_num_threads))
    assert threads == (int(omp) if omp else len(os.sched_getaffinity(0)))


def test_a_forked_job_finds_its_temporary_folder_in_its_own_environment(tmp_path):
    """tempfile keeps the folder it found first; a forked job finds it again from its TMPDIR
    (Snakemake's tmpdir resource), as a cold job does."""
    import tempfile

    tempfile.gettempdir()  # found in this process, as the server may have
    assert _in_a_forked_job({**os.environ, "TMPDIR": str(tmp_path)}, tmp_path, tempfile.gettempdir) == str(tmp_path)
