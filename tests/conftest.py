"""Shared fixtures: tiny timm ViTs on the bundled digits, made once per session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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


@pytest.fixture(scope="session")
def trained_tiny():
    """A tiny ViT trained on digits for a few epochs: (model, arch description, top-1 %)."""
    m = tiny_vit()
    a = tiny_arch(m)
    finetune.train(m, DIGITS, a["data_config"], {"epochs": 8, "lr": 3e-3, "batch_size": 32, "smoothing": 0.0, "warmup_epochs": 1})
    return m, a, held_out_top1(m, a["data_config"])


def held_out_top1(model, data_config: dict, manifest=None) -> float:
    """Top-1 % of an eager model on the evaluation split (training never reads it: the accuracy jobs do)."""
    from pqv.common import datasets
    from pqv.stages.evaluate import accuracy_on

    return accuracy_on(model, datasets.loader(manifest or DIGITS, "eval", data_config, 256), torch.device("cpu"))[0]


@pytest.fixture(scope="session")
def saved_tiny(trained_tiny, tmp_path_factory):
    """The trained tiny model saved as a finetuned artifact (safetensors + sidecar)."""
    from pqv.common import store

    m, a, top1 = trained_tiny
    path = tmp_path_factory.mktemp("tiny") / "finetuned.safetensors"
    store.save_model(m, path, a)
    store.write_sidecar(path, "finetune", top1=top1, params=arch.count_params(m), macs=0, data_config=a["data_config"])
    return path


# The order files are handed to the worker processes (`--dist=loadfile` with `--no-loadscope-reorder`,
# pyproject.toml): the cluster file first, beside the light files (one torch thread each), since its
# finetune must span SLURM jobs of one minute and each job trains less on a busy machine; the
# workflow files (Snakemake runs on 2 cores) last, where they share the two workers evenly.
FIRST = ("test_slurm_cluster.py",)
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


LAST = ("test_workflow.py", "test_search_workflow.py", "test_data_workflow.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return (0, 0) if name in FIRST else (2, LAST.index(name)) if name in LAST else (1, 0)

    items.sort(key=rank)  # stable: each file keeps its own order
