"""Quantize stage: one precision for one engine, written as a TorchScript module.

Precisions and engines are registries; the export stage turns the TorchScript module into a
mobile file. Float precisions do not depend on a quantized engine and use the engine name `none`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import PQVError

QUANTIZED_ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")
NO_ENGINE = "none"


class HalfPrecision(nn.Module):
    """FP16 weights and activations behind an FP32 interface, so callers feed the same tensors."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.half()).float()


def _int8_dynamic(model: nn.Module) -> nn.Module:
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@dataclass(frozen=True)
class Precision:
    convert: Callable[[nn.Module], nn.Module]
    quantized: bool  # needs a quantized engine
    atol: float | None  # max |artifact - eager fp32| allowed on logits; None: judged by cosine


PRECISIONS: dict[str, Precision] = {
    "fp32": Precision(lambda m: m, quantized=False, atol=1e-4),
    "fp16": Precision(HalfPrecision, quantized=False, atol=5e-2),
    "int8_dynamic": Precision(_int8_dynamic, quantized=True, atol=None),
}


def available_engines() -> list[str]:
    return [e for e in QUANTIZED_ENGINES if e in torch.backends.quantized.supported_engines]


def check(precision: str, engine: str) -> None:
    if precision not in PRECISIONS:
        raise PQVError(f"unknown precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    if not PRECISIONS[precision].quantized:
        if engine != NO_ENGINE:
            raise PQVError(f"precision '{precision}' takes no quantized engine (got '{engine}')", f"use engine '{NO_ENGINE}'")
        return
    if engine not in QUANTIZED_ENGINES:
        raise PQVError(f"unknown engine '{engine}'", f"use one of {', '.join(QUANTIZED_ENGINES)}")
    if engine not in available_engines():
        raise PQVError(f"engine '{engine}' is not in this torch build", f"use one of {', '.join(available_engines())}")


@contextlib.contextmanager
def engine_scope(engine: str):
    """Select the quantized engine for packing and running weights; restore it afterwards."""
    if engine == NO_ENGINE:
        yield
        return
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def quantize(model: nn.Module, precision: str, engine: str) -> torch.jit.ScriptModule:
    check(precision, engine)
    with engine_scope(engine):
        converted = PRECISIONS[precision].convert(model.eval())
        return torch.jit.script(converted.eval())


def run(model_path: str, out: str, precision: str, engine: str) -> dict:
    """CLI entry: quantize a finetuned model and save it as TorchScript."""
    from . import io

    check(precision, engine)
    model, arch = io.load_model(model_path)
    parent = io.read_sidecar(model_path)
    scripted = quantize(model, precision, engine)
    with io.atomic_path(out) as tmp:
        torch.jit.save(scripted, tmp)
    facts = {"precision": precision, "engine": engine, "params": parent.get("params"), "macs": parent.get("macs"),
             "data_config": arch["data_config"], "eager_top1": parent.get("top1")}
    io.write_sidecar(out, "quantize", parent=str(model_path), **facts)
    return facts
