"""Files of the plan and the jobs alike: atomic writes, JSON files and sidecars, and the one-line
error for a damaged file (which names the stage that remakes it).

Every artifact `X` gets a sidecar `X.json` that says what produced it (written by
`pqv.common.store.write_sidecar`, which adds the versions of the stack). Torch-free: the planning
side (the search's state, the data manifests) reads and writes through here too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import tempfile
from pathlib import Path

from .errors import PQVError

SPACE_MARGIN = 64 * 2**20  # bytes kept free beyond a file's expected size


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, need_bytes: int = 0):
    """Yield a temporary path next to `path`; move it into place only if the block succeeds.

    A writer that dies without running `finally` (torch's C++ serializer calls terminate() on a
    full disk) leaves its `.part` file: the next writer of the same path removes it (a workflow
    has one job per output). `need_bytes`, the file's expected size, is checked against the free
    space first, so a full disk is one line naming it instead of a C++ backtrace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.part"):
        stale.unlink(missing_ok=True)
    if need_bytes:
        free = shutil.disk_usage(path.parent).free
        if free < need_bytes + SPACE_MARGIN:
            raise PQVError(
                f"not enough disk space for {path}: {free / 2**20:.0f} MB free on its disk, about "
                f"{(need_bytes + SPACE_MARGIN) / 2**20:.0f} MB needed",
                "free space there, or set results: to a folder on a larger disk",
            )
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        # mkstemp makes 0600 files, and writers that replace the file (safetensors' save_file) keep
        # that: set the usual permissions last, so colleagues on a shared cluster can read results
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise PQVError(
                f"the disk holding {path.parent} is full (writing {path.name})",
                "free space there, or set results: to a folder on a larger disk",
            ) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}.json")


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
        f.write("\n")


def read_json(path: str | os.PathLike, artifact: str | os.PathLike | None = None) -> dict:
    """A JSON object; a missing, cut or non-object file is a one-line error naming the stage to rerun."""
    path = Path(path)
    if not path.exists():
        raise PQVError(f"missing file {path}", "run the stage that produces it (snakemake does this for you)")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise corrupt(artifact or path, f"corrupt JSON in {path}: {e}") from None
    if not isinstance(obj, dict):
        raise corrupt(artifact or path, f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


# What each stage's sidecar must hold for the stages after it (the keys they read).
SIDECAR_KEYS = {
    "model": (),
    "prune": (),
    "finetune": ("data_config",),  # the eager baseline is measured from it
    "quantize": ("precision", "engine", "data_config"),
    "export": ("precision", "engine", "format", "data_config", "fidelity"),
}


def read_sidecar(artifact: str | os.PathLike) -> dict:
    """An artifact's sidecar, checked to have the structure its stage writes."""
    path = sidecar_path(artifact)
    meta = read_json(path, artifact)
    stage = meta.get("stage")
    if stage not in SIDECAR_KEYS:
        raise corrupt(artifact, f"sidecar {path} names no PQV stage (stage: {stage!r})")
    missing = [k for k in SIDECAR_KEYS[stage] if k not in meta]
    if missing:
        raise corrupt(artifact, f"sidecar {path} lacks {', '.join(missing)}")
    dc = meta.get("data_config", {"input_size": [0, 0, 0]})
    if not isinstance(dc, dict) or not isinstance(dc.get("input_size"), list) or len(dc["input_size"]) != 3:
        raise corrupt(artifact, f"sidecar {path} has no valid data_config.input_size")
    if "fidelity" in SIDECAR_KEYS[stage] and not {"cosine_min", "top1_agreement"} <= set(meta["fidelity"] or {}):
        raise corrupt(artifact, f"sidecar {path} has no valid fidelity")
    return meta


# The stage that writes a file, by the names the workflow gives them (when its sidecar cannot say).
STAGE_BY_NAME = {
    "train.json": "data",
    "eval.json": "data",
    "manifest.json": "data",
    "model.safetensors": "model",
    "pruned.safetensors": "prune",
    "finetuned.safetensors": "finetune",
}
STAGE_BY_SUFFIX = {".ts": "quantize", ".pt2": "quantize", ".ptl": "export", ".pte": "export", ".ort": "export"}


def stage_of(path: str | os.PathLike) -> str | None:
    """The stage that made `path`: its sidecar's word if readable, else its name's."""
    path = Path(path)
    if path.suffix == ".json" and path.with_suffix("").exists():
        path = path.with_suffix("")  # a sidecar: the stage of its artifact
    try:
        stage = json.loads(sidecar_path(path).read_text()).get("stage")
        if stage in SIDECAR_KEYS:
            return stage
    except (OSError, ValueError, AttributeError):
        pass
    return STAGE_BY_NAME.get(path.name) or STAGE_BY_SUFFIX.get(path.suffix)


def corrupt(path: str | os.PathLike, problem: str) -> PQVError:
    """The error for a damaged artifact: what is wrong, and how to make it again: --forcerun remakes
    it and everything that depends on it, without the user deleting anything."""
    stage = stage_of(path)
    what = f"the {stage} stage" if stage else "the pqv stage that made it"
    return PQVError(
        problem,
        f"remake it with {what}: `snakemake --forcerun {shlex.quote(str(path))}` (with your "
        "usual options) reruns its job and every job that depends on it",
    )


def _jsonable(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")
