"""Artifact files: atomic writes, JSON sidecars, and pickle-free model files.

A model file is a safetensors file whose header metadata carries the JSON architecture
description (`pqv.arch`), so one file is enough to rebuild the module in a fresh process.
Every artifact `X` gets a sidecar `X.json` that says what produced it.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from pathlib import Path

from .errors import PQVError

ARCH_KEY = "pqv_arch"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; artifacts get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{path}.json")


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable)
        f.write("\n")


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.exists():
        raise PQVError(f"missing file {path}", "run the stage that produces it (snakemake does this for you)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PQVError(f"corrupt JSON in {path}: {e}", "delete the file and rerun the stage that made it") from None


def write_sidecar(artifact: str | os.PathLike, stage: str, **facts) -> None:
    write_json(sidecar_path(artifact), {"stage": stage, **facts, "versions": versions()})


def read_sidecar(artifact: str | os.PathLike) -> dict:
    return read_json(sidecar_path(artifact))


def versions() -> dict:
    import torch

    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("timm", "torch-pruning", "executorch"):
        try:  # the installed distribution's version: torch_pruning's __version__ lags its release
            out[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:  # an optional package missing is a fact, not an error
            pass
    return out


def save_model(model, path: str | os.PathLike, arch: dict) -> None:
    """Save weights as safetensors with the architecture description in the header."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={ARCH_KEY: json.dumps(arch, sort_keys=True)})


def load_model(path: str | os.PathLike):
    """Rebuild a model saved by `save_model` (no pickle involved)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from . import arch as archmod

    path = Path(path)
    if not path.exists():
        raise PQVError(f"missing model file {path}", "check the path or rerun the stage that produces it")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PQVError(f"corrupt model file {path}: {e}", "delete it and rerun the stage that made it") from None
    if ARCH_KEY not in meta:
        raise PQVError(f"{path} has no PQV architecture header", "save models with pqv (pqv.io.save_model)")
    arch = json.loads(meta[ARCH_KEY])
    return archmod.build(arch, state), arch


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
