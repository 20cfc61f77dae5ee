"""Export stage: turn a quantized TorchScript module into a mobile file and verify it.

Every artifact is loaded back in its own runtime and compared with the eager FP32 model it came
from, on real held-out images; a failed check fails the job, so nothing unverified is cached.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import data
from .errors import PQVError
from .quantize import NO_ENGINE, PRECISIONS, QUANTIZED_ENGINES, engine_scope


def _export_ptl(src: str, out: str, precision: str, mobile_optimizer: bool) -> None:
    """TorchScript -> optimize_for_mobile -> Lite Interpreter (the paper's path)."""
    from torch.utils.mobile_optimizer import MobileOptimizerType, optimize_for_mobile

    module = torch.jit.load(src).eval()
    if mobile_optimizer:
        # FP16 breaks the prepack-folding pass; everything else takes the full optimizer.
        blocklist = {MobileOptimizerType.INSERT_FOLD_PREPACK_OPS} if precision == "fp16" else set()
        module = optimize_for_mobile(module, optimization_blocklist=blocklist)
    else:
        module = torch.jit.freeze(module)  # Lite saving needs a frozen or optimized module
    module._save_for_lite_interpreter(out)


def _load_ptl(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from torch.jit.mobile import _load_for_lite_interpreter

    return _load_for_lite_interpreter(path)


@dataclass(frozen=True)
class Format:
    export: Callable[[str, str, str, bool], None]
    load: Callable[[str], Callable[[torch.Tensor], torch.Tensor]]
    engines: tuple[str, ...]  # quantized engines whose kernels this runtime has


FORMATS: dict[str, Format] = {
    "ptl": Format(_export_ptl, _load_ptl, engines=QUANTIZED_ENGINES),
}


def check_format(fmt: str, engine: str) -> None:
    if fmt not in FORMATS:
        raise PQVError(f"unknown export format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    if engine != NO_ENGINE and engine not in FORMATS[fmt].engines:
        raise PQVError(f"format '{fmt}' cannot run engine '{engine}'", f"use one of {', '.join(FORMATS[fmt].engines)}")


def load(path: str, fmt: str, engine: str):
    """Load an exported artifact in its runtime; the engine must be selected before loading."""
    check_format(fmt, engine)
    with engine_scope(engine):
        return FORMATS[fmt].load(path)


@torch.no_grad()
def compare(artifact_out: torch.Tensor, reference: torch.Tensor) -> dict:
    diff = (artifact_out - reference).abs()
    cosine = torch.nn.functional.cosine_similarity(artifact_out, reference, dim=1)
    return {
        "max_abs_diff": diff.max().item(),
        "cosine_min": cosine.min().item(),
        "cosine_mean": cosine.mean().item(),
        "top1_agreement": (artifact_out.argmax(1) == reference.argmax(1)).float().mean().item(),
    }


def verdict(precision: str, fidelity: dict, min_cosine: float) -> str | None:
    """None if the artifact computes what its parent does, else the reason it does not."""
    atol = PRECISIONS[precision].atol
    if atol is not None and fidelity["max_abs_diff"] > atol:
        return f"{precision} artifact differs from its FP32 parent by {fidelity['max_abs_diff']:.3g} > {atol}"
    if atol is None and fidelity["cosine_min"] < min_cosine:
        return f"{precision} artifact's cosine similarity {fidelity['cosine_min']:.4f} to its FP32 parent is below {min_cosine}"
    return None


def run(src: str, parent_model: str, out: str, fmt: str, spec: dict, mobile_optimizer: bool = True,
        check_images: int = 64, min_cosine: float = 0.98) -> dict:
    """CLI entry: export, load back, compare with the eager FP32 parent, then publish."""
    from . import io

    meta = io.read_sidecar(src)
    precision, engine = meta["precision"], meta["engine"]
    check_format(fmt, engine)
    eager, arch = io.load_model(parent_model)
    images = data.sample_batch(spec, arch["data_config"], check_images)
    with torch.no_grad():
        reference = eager(images)
    with io.atomic_path(out) as tmp, engine_scope(engine), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript/Lite are deprecated upstream
        FORMATS[fmt].export(src, tmp, precision, mobile_optimizer)
        fidelity = compare(FORMATS[fmt].load(tmp)(images), reference)
        problem = verdict(precision, fidelity, min_cosine)
        if problem:
            raise PQVError(problem, "inspect the quantize settings; nothing was written")
    facts = {k: meta[k] for k in ("precision", "engine", "params", "macs", "data_config", "eager_top1")}
    io.write_sidecar(out, "export", parent=str(src), format=fmt, mobile_optimizer=mobile_optimizer,
                     check_images=len(images), fidelity=fidelity, **facts)
    return fidelity
