"""Shared fixtures: tiny timm ViTs on the bundled digits, made once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from pqv.common import arch
from pqv.stages import data, finetune
from pqv.stages import model as pqv_model

warnings.filterwarnings("ignore", category=DeprecationWarning)
# Tiny models run fastest on one thread; on 2-vCPU machines two torch threads mostly spin-wait.
torch.set_num_threads(1)

DIGITS_SPEC = {"name": "digits"}
DIGITS = data.scan(DIGITS_SPEC)  # the data stage's manifest of the bundled digits, in memory
_MANIFESTS: dict[str, str] = {}


def manifest_file(spec: dict = DIGITS_SPEC) -> str:
    """The path of a data manifest written by the data stage (`pqv data`), once per spec."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _MANIFESTS:
        path = Path(tempfile.mkdtemp(prefix="pqv-test-data-")) / "manifest.json"
        data.run(spec, str(path))
        _MANIFESTS[key] = str(path)
    return _MANIFESTS[key]


# What this test process's environment holds that a job's would not: pytest's name of the running
# test, and what the stages run here set in it for themselves (pqv.stages.export's flatc, torch
# inductor's cache folder), as a job sets them in its own
NOT_FOR_JOBS = ("PYTEST_CURRENT_TEST", "FLATC_EXECUTABLE", "TORCHINDUCTOR_CACHE_DIR")


def job_environment(**extra: str) -> dict[str, str]:
    """This test process's environment for a job it starts, less NOT_FOR_JOBS: the same for every
    job of the session, as in a run (a warm-start server runs a job cold whose environment differs
    from its own)."""
    return {**{k: v for k, v in os.environ.items() if k not in NOT_FOR_JOBS}, **extra}


@pytest.fixture(scope="session")
def warm_server(tmp_path_factory):
    """One warm-start server (pqv.common.warmstart) for this test process, started with
    job_environment() as a local run's first job starts one: the path of its socket. The jobs of
    the files that use `warm_jobs` fork from it instead of importing torch each (about 6 CPU-s a
    job); tests/test_warmstart.py shows that a forked job makes what a cold one makes."""
    from pqv.plan import warm

    path = warm.make_folder(tmp_path_factory.mktemp("warm-server") / "warm_start.log", watch=os.getpid())
    assert warm.claim(path)
    subprocess.Popen([sys.executable, "-m", "pqv", warm.SERVE, path], env=job_environment(**{warm.ENV: path}), start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    yield path
    warm.remove(os.path.dirname(path))


@pytest.fixture(scope="module")
def warm_jobs(warm_server):
    """The jobs this file's tests start (`python -m pqv`, Snakemake's jobs) fork from this test
    process's warm-start server, where their environment is job_environment()'s (CI time)."""
    from pqv.plan import warm

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(warm.ENV, warm_server)
        yield warm_server


def write_data_manifests(workdir: Path, spec: dict = DIGITS_SPEC) -> None:
    """The data jobs' manifests of a workflow folder (results/data/{split}.json), written by the data
    stage here: for tests that run the jobs after them."""
    from pqv.plan import manifest as manifests

    for split in manifests.SPLITS:
        data.run(spec, str(Path(workdir) / f"results/data/{split}.json"), split=split)


@pytest.fixture(scope="session", autouse=True)
def _remove_manifests():
    yield
    for path in _MANIFESTS.values():
        shutil.rmtree(Path(path).parent, ignore_errors=True)


TINY_KWARGS = {"img_size": 8, "patch_size": 2, "embed_dim": 48, "depth": 2, "num_heads": 3, "in_chans": 1}
TIMM_NAME = "vit_tiny_patch16_224"


def tiny_vit(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    m = arch.create(TIMM_NAME, pretrained=False, **{"num_classes": 10, **TINY_KWARGS, **overrides})
    return m.eval()


def tiny_arch(m) -> dict:
    return arch.describe(m, TIMM_NAME, {"num_classes": 10, **TINY_KWARGS}, pqv_model.data_config_of(m))


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """pqv's caches (the ImageFolder check) go to a temporary folder, not the user's ~/.cache."""
    import os

    before = os.environ.get("PQV_CACHE")
    os.environ["PQV_CACHE"] = str(tmp_path_factory.mktemp("pqv-cache"))
    yield
    if before is None:
        os.environ.pop("PQV_CACHE", None)
    else:
        os.environ["PQV_CACHE"] = before


def made_once(tmp_path_factory, name: str, make) -> Path:
    """A folder `make(folder)` fills once per test session, by whichever test process asks first;
    the others wait for it and read it (CI time: an ExecuTorch lowering takes ~20 s). Tests only
    read what is in it."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's folder, above each worker's
    folder = root / f"made-once-{name}"
    with open(root / f"made-once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():
            part = root / f"made-once-{name}.part"
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir()
            make(part)
            part.rename(folder)
    return folder


@pytest.fixture(scope="session")
def saved_tiny(tmp_path_factory):
    """A tiny ViT trained on digits for a few epochs, saved as a finetuned artifact (safetensors +
    sidecar, with its held-out top-1)."""
    from pqv.common import store

    def train(folder: Path) -> None:
        m = tiny_vit()
        a = tiny_arch(m)
        hparams = {"epochs": 8, "lr": 3e-3, "batch_size": 32, "smoothing": 0.0, "warmup_epochs": 1}
        finetune.train(m, DIGITS, a["data_config"], hparams)
        path = folder / "finetuned.safetensors"
        store.save_model(m, path, a)
        top1 = held_out_top1(m.eval(), a["data_config"])
        store.write_sidecar(path, "finetune", top1=top1, params=arch.count_params(m), macs=0, data_config=a["data_config"])

    return made_once(tmp_path_factory, "tiny", train) / "finetuned.safetensors"


@pytest.fixture(scope="session")
def trained_tiny(saved_tiny):
    """saved_tiny's model: (model, arch description, top-1 %)."""
    from pqv.common import store
    from pqv.plan import fileio

    m, a = store.load_model(saved_tiny)
    return m.eval(), a, fileio.read_sidecar(saved_tiny)["top1"]


def held_out_top1(model, data_config: dict, manifest=None) -> float:
    """Top-1 % of an eager model on the evaluation split (training never reads it: the accuracy jobs do)."""
    from pqv.common import datasets
    from pqv.stages.evaluate import accuracy_on

    return accuracy_on(model, datasets.loader(manifest or DIGITS, "eval", data_config, 256), torch.device("cpu"))[0]


@pytest.fixture(scope="session")
def tiny_file(saved_tiny, tmp_path_factory):
    """saved_tiny quantized and exported as the workflow does (its defaults), once per recipe in the
    session: `tiny_file(precision, engine, fmt)` is the file; its program lies in quantized/ beside it."""

    def get(precision: str, engine: str, fmt: str) -> Path:
        folder = made_once(
            tmp_path_factory, f"{precision}-{engine}-{fmt}", lambda f: quantize_and_export(saved_tiny, f, precision, engine, fmt)
        )
        return folder / f"{precision}-{engine}.{fmt}"

    return get


def quantize_and_export(saved: Path, folder: Path, precision: str, engine: str, fmt: str = "ptl", **options):
    """`saved` quantized into folder/quantized/ and exported into `folder` as the workflow does (an
    .onnx program and its .onnx file: two folders): (the file, its fidelity check)."""
    from pqv.plan import registry
    from pqv.stages import export, quantize

    (folder / "quantized").mkdir(parents=True, exist_ok=True)
    program = folder / "quantized" / f"{precision}-{engine}.{registry.ir_of(fmt)}"
    quantize.run(str(saved), str(program), precision, engine, DIGITS)  # calibration_images: the workflow's default
    out = folder / f"{precision}-{engine}.{fmt}"
    return out, export.run(str(program), str(saved), str(out), fmt, DIGITS, **options)


# The order files are handed to the worker processes (`--dist=loadfile` with `--no-loadscope-reorder`,
# pyproject.toml; a process gets the next file when it is nearly done with its last): the cluster
# file first, in a process of its own (it waits on SLURM most of its ~11 minutes); then the others,
# longest first (their minutes on the 2-vCPU EPYC, docs/development.md "CI time"), so that the short
# ones fill in at the end and the processes finish together. A file not named here comes last.
FIRST = ("test_slurm_cluster.py",)
LONGEST_FIRST = (
    "test_workflow.py",  # ~5.5
    "test_errors.py",  # ~3.5
    "test_search_workflow.py",  # ~3
    "test_finetune.py",  # ~2
    "test_quantize_export.py",
    "test_slurm.py",
    "test_evaluate.py",
    "test_data_workflow.py",
    "test_warmstart.py",
    "test_config.py",
    "test_layers.py",
    "test_prune.py",
    "test_tome.py",
    "test_plot.py",
    "test_profile.py",
    "test_cli.py",
)
CLUSTER_TESTS = Path(__file__).with_name("test_slurm_cluster.py")
CLUSTER_SCRIPT = Path(__file__).resolve().parents[1] / "scripts/slurm-cluster.sh"
CLUSTER_DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch")


def cluster_unavailable() -> str | None:
    """Why tests/test_slurm_cluster.py cannot run here (None: a test cluster runs, or can be started)."""
    if subprocess.run([str(CLUSTER_SCRIPT), "status"], capture_output=True).returncode == 0:
        return None
    if os.geteuid() != 0:
        return "a SLURM cluster is not running and starting one needs root (scripts/slurm-cluster.sh)"
    conf = Path("/etc/slurm/slurm.conf")
    if conf.exists() and "# written by scripts/slurm-cluster.sh" not in conf.read_text():
        return f"{conf} belongs to another SLURM set-up: not starting a test cluster over it"
    missing = [d for d in CLUSTER_DAEMONS if shutil.which(d) is None]
    if missing:
        return (
            f"no SLURM cluster: {', '.join(missing)} not installed (apt-get install slurm-wlm munge "
            "slurmdbd mariadb-server, or run .ci/run, which installs them and starts the cluster)"
        )
    return None


def pytest_xdist_auto_num_workers(config):
    """One worker per core, and one more where the cluster tests run: their file holds its worker for
    minutes, mostly waiting for SLURM's status checks, and the other workers keep the cores busy."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    chosen = [Path(str(a).split("::")[0]).resolve() for a in config.args] or [CLUSTER_TESTS.parent]
    if any(p == CLUSTER_TESTS or p in CLUSTER_TESTS.parents for p in chosen) and cluster_unavailable() is None:
        return cores + 1
    return cores


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        if name in FIRST:
            return 0
        return 1 + (LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: each file keeps its own order
