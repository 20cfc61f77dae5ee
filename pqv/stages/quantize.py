"""Quantize stage: one precision for one engine, in the representation its mobile format needs.

Two families, each a small registry keyed by precision:
- TorchScript (`.ts`) for the Lite Interpreter, with torch.ao's engines (x86, fbgemm, qnnpack,
  onednn): FP32, FP16, int8 dynamic, and int8 static (FX post-training, Linear layers only).
- torch.export programs (`.pt2`) for ExecuTorch with the XNNPACK engine: FP32, int8 dynamic and
  static (PT2E with XNNPACK's quantizer), and int4 weights with int8 dynamic activations (torchao).
- ONNX programs (`.onnx`) for ONNX Runtime's MLAS kernels, built by its own tools the way its docs
  advise for a ViT (pqv/common/ort.py): FP32, int8 dynamic and static, per-channel weights.

Attention is handled deliberately: the matmuls and softmax inside scaled-dot-product attention
stay in floating point in every int8 recipe; only the Linear layers (qkv, proj, fc1, fc2, head),
which hold >95 % of a ViT's MACs, are quantized. Quantizing the whole graph statically costs
accuracy (cosine 0.88 on x86, 7-bit activations) and ExecuTorch cannot load it (DESIGN.md).
For ExecuTorch the model is first rewritten with `layers.for_xnnpack` (same function, ops that
XNNPACK runs whole) and exported at a fixed batch of one image.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable

import torch
from torch import nn

from ..common import layers
from ..plan import fileio, registry
from ..plan.config import Quantize, default
from ..plan.errors import PQVError
from ..plan.registry import NO_ENGINE

QUANTIZED_ENGINES = registry.FORMATS["ptl"]["engines"]
INT4_GROUP = 32  # XNNPACK's 4-bit kernels need a group size that is a multiple of 32
# Exported programs take a fixed batch of one image, as a phone app calls them: with a symbolic
# batch, XNNPACK declines every reshape and the graph splits into ~100 delegated pieces (10-40 %
# slower, docs/latency.md). Larger batches are run image by image by the loader.
PROGRAM_BATCH = 1


class HalfPrecision(nn.Module):
    """FP16 weights and activations behind an FP32 interface, so callers feed the same tensors."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.half()).float()


# ---- TorchScript family (Lite Interpreter) -------------------------------------------------


def _ts_int8_dynamic(model, engine, calibration):
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def _ts_int8_static(model, engine, calibration):
    from torch.ao.quantization import QConfigMapping, get_default_qconfig
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    mapping = QConfigMapping().set_object_type(nn.Linear, get_default_qconfig(engine))
    prepared = prepare_fx(model, mapping, example_inputs=(calibration[0],))
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    return convert_fx(prepared)


TORCHSCRIPT: dict[str, Callable] = {
    "fp32": lambda model, engine, calibration: model,
    "fp16": lambda model, engine, calibration: HalfPrecision(model),
    "int8_dynamic": _ts_int8_dynamic,
    "int8_static": _ts_int8_static,
}


# ---- torch.export family (ExecuTorch, XNNPACK) -------------------------------------------


def _export(model, example):
    return torch.export.export(model, (example[:PROGRAM_BATCH],))


def _pt2e(model, example, calibration, dynamic: bool):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    quantizer = XNNPACKQuantizer().set_module_type(nn.Linear, config)
    prepared = prepare_pt2e(_export(model, example).module(), quantizer)
    images = torch.cat(calibration) if not dynamic else example  # dynamic ranges need no statistics
    with torch.no_grad():
        for image in images.split(PROGRAM_BATCH):  # the program's fixed batch
            prepared(image)
    return _export(convert_pt2e(prepared), example)


def _int4_weight(model, example, calibration):
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(INT4_GROUP))
    quantize_(model, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and m.in_features % INT4_GROUP == 0)
    return _export(model, example)


EXPORTED: dict[str, Callable] = {
    "fp32": lambda model, example, calibration: _export(model, example),
    "int8_dynamic": lambda model, example, calibration: _pt2e(model, example, calibration, dynamic=True),
    "int8_static": lambda model, example, calibration: _pt2e(model, example, calibration, dynamic=False),
    "int4_weight": _int4_weight,
}


def calibrated(precision: str) -> bool:
    """Whether a precision needs calibration images (pqv.plan.registry says, for the workflow too)."""
    return registry.PRECISIONS[precision]["calibrated"]


def available_engines() -> list[str]:
    import importlib.util

    engines = [e for e in QUANTIZED_ENGINES if e in torch.backends.quantized.supported_engines]
    if importlib.util.find_spec("executorch") is not None:  # found, not imported: that costs seconds
        engines.append("xnnpack")
    if all(importlib.util.find_spec(m) is not None for m in registry.EXTRAS["onnx"]):
        engines += registry.ORT_RECIPES
    return engines


def check(precision: str, engine: str, ir: str | None = None) -> None:
    if precision not in registry.PRECISIONS:
        raise PQVError(f"unknown precision '{precision}'", f"use one of {', '.join(registry.PRECISIONS)}")
    if not registry.PRECISIONS[precision]["quantized"]:
        if engine != NO_ENGINE:
            raise PQVError(f"precision '{precision}' takes no quantized engine (got '{engine}')", f"use engine '{NO_ENGINE}'")
    else:
        if engine not in registry.ENGINES:
            raise PQVError(f"unknown engine '{engine}'", f"use one of {', '.join(registry.ENGINES)}")
        if engine not in available_engines():
            raise PQVError(f"engine '{engine}' is not in this build", f"use one of {', '.join(available_engines())}")
    if ir is not None:
        formats = registry.IRS.get(ir)
        if formats is None:
            raise PQVError(f"unknown output type '.{ir}'", f"write .{' or .'.join(registry.IRS)}")
        if not any(f in registry.PRECISIONS[precision]["formats"] for f in formats):
            raise PQVError(
                f"precision '{precision}' cannot be exported as .{' or .'.join(formats)}",
                f"use one of {', '.join(registry.PRECISIONS[precision]['formats'])}",
            )
        engines = {e for f in formats for e in registry.FORMATS[f]["engines"]}
        if engine != NO_ENGINE and engine not in engines:
            raise PQVError(
                f"engine '{engine}' does not run in .{' or .'.join(formats)} files", f"use one of {', '.join(sorted(engines))}"
            )
        if engine != NO_ENGINE and not registry.runs(engine, precision):
            takes = registry.ORT_RECIPES[engine]["precisions"]
            raise PQVError(
                f"engine '{engine}' makes {' and '.join(takes)} files, not {precision}",
                f"use precision {' or '.join(takes)}, or another engine",
            )


@contextlib.contextmanager
def engine_scope(engine: str):
    """Select torch.ao's quantized engine for packing and running weights; restore it afterwards."""
    if engine not in QUANTIZED_ENGINES:
        yield
        return
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


def quantize(model: nn.Module, precision: str, engine: str, ir: str = "ts", calibration: list[torch.Tensor] | None = None):
    """A TorchScript module (ir 'ts'), an ExportedProgram (ir 'pt2') or an ONNX model (ir 'onnx')
    of `model` at `precision`."""
    check(precision, engine, ir)
    if calibrated(precision) and not calibration:
        raise PQVError(f"precision '{precision}' needs calibration images", "set quantize.calibration_images > 0")
    model = copy.deepcopy(model).eval()
    with engine_scope(engine):
        if ir == "ts":
            return torch.jit.script(TORCHSCRIPT[precision](model, engine, calibration).eval())
        if ir == "onnx":
            from ..common import ort

            example = calibration[0] if calibration else torch.zeros(1, *_input_size(model))
            return ort.build(model, precision, example, calibration, recipe=ort.FP32_RECIPE if engine == NO_ENGINE else engine)
        model = layers.for_xnnpack(model)
        # torch.export traces shapes, not values: uncalibrated precisions read no image
        example = calibration[0] if calibration else torch.zeros(PROGRAM_BATCH, *_input_size(model))
        return EXPORTED[precision](model, example, calibration)


def _input_size(model: nn.Module) -> tuple[int, int, int]:
    proj = model.patch_embed.proj
    return (proj.in_channels, *model.patch_embed.img_size)


def save(program, path: str, ir: str) -> None:
    if ir == "ts":
        torch.jit.save(program, path)
    elif ir == "onnx":
        import onnx

        onnx.save_model(program, path)
    else:
        torch.export.save(program, path)


def run(
    model_path: str,
    out: str,
    precision: str,
    engine: str,
    manifest=None,
    calibration_images: int = default(Quantize, "calibration_images"),
    merge_r: int = 0,
) -> dict:
    """CLI entry: quantize a finetuned model; the output's extension (.ts/.pt2/.onnx) picks the family.
    `merge_r`: tokens merged in each block (pqv.common.tome), applied first: the file carries it."""
    from ..common import datasets, store, tome

    ir = str(out).rsplit(".", 1)[-1]
    check(precision, engine, ir)
    model, arch = store.load_model(model_path)
    parent = fileio.read_sidecar(model_path)
    dc = arch["data_config"]
    merged = {}
    if merge_r:
        tome.apply(model, merge_r)
        # MACs are not counted: Torch-Pruning's counter, which counts every other row's, misses the
        # attention of merging blocks (0.58x for one token of 65); the tokens per block say what is left
        merged = {"merge_r": merge_r, "macs": None, "tokens_per_block": tome.tokens_per_block(model)}
    calibration = None
    if calibrated(precision):
        if manifest is None or calibration_images <= 0:
            raise PQVError(f"precision '{precision}' needs calibration images", "give --data and --calibration-images > 0")
        # the first images of the training split's order: the export check takes those after them
        images = datasets.sample_batch(manifest, dc, calibration_images, split="train", seed=datasets.CALIBRATION_SEED)
        calibration = list(images.split(32))
    program = quantize(model, precision, engine, ir, calibration)
    with fileio.atomic_path(out, need_bytes=2 * os.path.getsize(model_path)) as tmp:
        save(program, tmp, ir)
    facts = {
        "precision": precision,
        "engine": engine,
        "ir": ir,
        "params": parent.get("params"),
        "macs": parent.get("macs"),
        "data_config": dc,
        "device": parent.get("device"),
        "calibration_images": sum(len(b) for b in calibration) if calibration else 0,
        **{k: parent[k] for k in ("status", "reason") if k in parent},
        **merged,
    }  # a failed branch stays failed
    store.write_sidecar(out, "quantize", parent=str(model_path), **facts)
    return facts
