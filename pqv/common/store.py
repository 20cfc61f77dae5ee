"""Model and program files: pickle-free models, sidecars with the stack's versions, and the check
that refuses a cut program file before a runtime reads it.

A model file is a safetensors file whose header metadata carries the JSON architecture
description (`pqv.common.arch`), so one file is enough to rebuild the module in a fresh process.
JSON files, sidecars and atomic writes are `pqv.plan.fileio`.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from ..plan.errors import PQVError
from ..plan.fileio import atomic_path, corrupt, sidecar_path, write_json

ARCH_KEY = "pqv_arch"


def write_sidecar(artifact: str | os.PathLike, stage: str, **facts) -> None:
    write_json(sidecar_path(artifact), {"stage": stage, **facts, "versions": versions()})


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 160 else text[:160] + "..."


def check_artifact(path: str | os.PathLike) -> None:
    """Refuse a cut or damaged program file before a runtime reads it (and prints its own logs).

    .ts, .pt2 and .ptl are zip archives with a CRC per record; a .pte states its size in its
    ExecuTorch extended header."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise PQVError(f"missing file {path}", "run the stage that produces it (snakemake does this for you)")
    if path.suffix in (".ts", ".pt2", ".ptl"):
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise corrupt(path, f"corrupt {path.suffix} file {path}: {_short(e)}") from None
        if bad is not None:
            raise corrupt(path, f"corrupt {path.suffix} file {path}: record {bad} fails its checksum")
    elif path.suffix == ".pte":
        with open(path, "rb") as f:
            head = f.read(40)  # the header only: evaluate measures memory after this
        if len(head) < 8 or head[4:6] != b"ET":  # the flatbuffer identifier ET12 (ET + version)
            raise corrupt(path, f"corrupt .pte file {path}: no ExecuTorch header")
        if head[8:12] != b"eh00" or len(head) < 32:
            return  # no extended header: nothing states the size
        length = int.from_bytes(head[12:16], "little")
        program, base = int.from_bytes(head[16:24], "little"), int.from_bytes(head[24:32], "little")
        segments = int.from_bytes(head[32:40], "little") if length > 24 else 0
        expected = max(program, base + segments if base else 0)
        if path.stat().st_size < expected:
            raise corrupt(path, f"corrupt .pte file {path}: {path.stat().st_size} bytes, its header says {expected}")
    elif path.suffix == ".ort":
        with open(path, "rb") as f:
            head = f.read(8)
        if head[4:8] != b"ORTM":  # ORT format's flatbuffer identifier
            raise corrupt(path, f"corrupt .ort file {path}: no ORT format header")


def versions() -> dict:
    from importlib import metadata

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("timm", "torch-pruning", "executorch", "onnxruntime"):
        try:  # the installed distribution's version: torch_pruning's __version__ lags its release
            out[name.replace("-", "_")] = metadata.version(name)
        except metadata.PackageNotFoundError:  # an optional package missing is a fact, not an error
            pass
    return out


def save_model(model, path: str | os.PathLike, arch: dict) -> None:
    """Save weights as safetensors with the architecture description in the header."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, need_bytes=sum(v.numel() * v.element_size() for v in state.values())) as tmp:
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
        raise corrupt(path, f"corrupt model file {path}: {_short(e)}") from None
    if ARCH_KEY not in meta:
        raise PQVError(f"{path} has no PQV architecture header", "save models with pqv (pqv.io.save_model)")
    try:
        arch = json.loads(meta[ARCH_KEY])
    except json.JSONDecodeError as e:
        raise corrupt(path, f"corrupt model file {path}: its architecture header is cut ({e})") from None
    if not isinstance(arch, dict) or not {"timm_name", "kwargs", "attention", "data_config"} <= set(arch):
        raise corrupt(path, f"corrupt model file {path}: its architecture header lacks timm_name/kwargs/attention/data_config")
    try:
        return archmod.build(arch, state), arch
    except PQVError as e:
        raise corrupt(path, f"model file {path} does not fit its architecture: {e.problem}") from None
    except (RuntimeError, KeyError, TypeError, ValueError) as e:  # load_state_dict(strict=True), bad header values
        raise corrupt(path, f"model file {path} does not fit its architecture: {_short(e)}") from None
