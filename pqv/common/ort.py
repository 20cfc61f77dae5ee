"""ONNX Runtime's files of a branch: `.onnx`, and ORT Mobile's `.ort`, from the same finetuned model
as every PQV file, one file per recipe (pqv.plan.registry.ORT_RECIPES, the engines of these formats):

1. export at a static batch of one image (opset 17, timm's explicit attention: MatMul nodes);
2. for the recipes that `optimize` (ORT's documented advice for a ViT): ONNX Runtime's transformer
   optimizer (`optimize_model(model_type="vit")`: GELU, LayerNorm and residual
   SkipLayerNormalization fused; it does not fuse timm's attention) and quantization
   pre-processing (symbolic shape inference); the plain recipes skip both, as a user without PQV
   would;
3. the precision: FP32 as built; int8 dynamic (int8 weights of every MatMul with a constant weight,
   per channel or per tensor, activations quantized at run time); int8 static (per-channel or
   per-tensor int8 weights, uint8 activations calibrated with MinMax on training images, the x86
   choice of ORT's docs, as QDQ pairs or QOperator nodes). As in every PQV int8 recipe, the
   attention matmuls of two activations stay in float.

Which recipe is fastest depends on the host (docs/latency.md): none is assumed; each is verified and
timed like every file, and `pqv choose` and the search ship the winner. The quantize stage writes the
`.onnx` program; the export stage ships it as `.onnx` or converts it with ORT's own converter to
`.ort`, and loads either back in an InferenceSession to check it.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..plan import registry
from ..plan.errors import PQVError

OPSET = 17
INPUT, OUTPUT = registry.ONNX_TENSORS
MODULES = registry.EXTRAS["onnx"]
INSTALL = 'pip install -e ".[onnx]"'
log = logging.getLogger(__name__)


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in MODULES)


def require(what: str) -> None:
    if not available():
        raise PQVError(
            f"{what} needs ONNX Runtime (onnxruntime, onnx), which is not installed here",
            f"{INSTALL}, or drop the onnx and ort formats",
        )


def version() -> str:
    from importlib.metadata import version as installed

    return f"onnxruntime {installed('onnxruntime')}"


# ---- building the program ------------------------------------------------------------------------


def _export_fp32(model: nn.Module, example: torch.Tensor, out: Path) -> None:
    from . import arch

    model = copy.deepcopy(model).eval()
    for attn in arch.attention_blocks(model):
        attn.fused_attn = False  # explicit q @ k^T and softmax: MatMul nodes, not an opaque SDPA
    with warnings_quiet():
        torch.onnx.export(
            model, (example[:1],), str(out), input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET, dynamo=False
        )  # no dynamic axes: a static batch of one


def _optimize(src: Path, out: Path) -> dict:
    """ONNX Runtime's transformer optimizer for a ViT; the fused operators it made, by type."""
    from onnxruntime.transformers.optimizer import optimize_model

    with warnings_quiet():
        optimized = optimize_model(str(src), model_type="vit", num_heads=0, hidden_size=0)
        optimized.save_model_to_file(str(out))
        return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def _pre_process(src: Path, out: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with warnings_quiet():
        quant_pre_process(str(src), str(out), skip_optimization=True)


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over the calibration images, one image per call (the
    program's static batch)."""

    def __init__(self, images: list[torch.Tensor]):
        self.images = iter(torch.cat(images).split(1)) if images else iter(())

    def get_next(self):
        image = next(self.images, None)
        return None if image is None else {INPUT: image.contiguous().numpy()}


def _fp32(src: Path, out: Path, calibration, recipe: dict) -> None:
    shutil.copy(src, out)


def _int8_dynamic(src: Path, out: Path, calibration, recipe: dict) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(out),
        per_channel=recipe["per_channel"],
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        extra_options={"MatMulConstBOnly": True},
    )


def _int8_static(src: Path, out: Path, calibration, recipe: dict) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src),
        str(out),
        _Calibration(calibration),
        quant_format=QuantFormat.QDQ if recipe["qdq"] else QuantFormat.QOperator,
        per_channel=recipe["per_channel"],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gemm"],
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"MatMulConstBOnly": True},
    )


PRECISIONS = {"fp32": _fp32, "int8_dynamic": _int8_dynamic, "int8_static": _int8_static}
FP32_RECIPE = "mlas"  # an FP32 file has no quantization recipe (engine none): ORT's documented graph


def build(model: nn.Module, precision: str, example: torch.Tensor, calibration: list[torch.Tensor] | None, recipe: str = FP32_RECIPE):
    """The `.onnx` program (an onnx.ModelProto) of `model` at `precision`, by one of ORT_RECIPES."""
    require("an .onnx program")
    import onnx

    steps = registry.ORT_RECIPES[recipe]
    with tempfile.TemporaryDirectory(prefix="pqv-onnx-") as folder:
        work = Path(folder)
        _export_fp32(model, example, work / "fp32.onnx")
        prepared = work / "fp32.onnx"
        if steps["optimize"]:
            fused = _optimize(prepared, work / "optimized.onnx")
            _pre_process(work / "optimized.onnx", work / "prepared.onnx")
            prepared = work / "prepared.onnx"
            log.info("ONNX Runtime's transformer optimizer fused %s", ", ".join(f"{n} {k}" for k, n in fused.items()) or "nothing")
        with warnings_quiet():
            PRECISIONS[precision](prepared, work / "program.onnx", calibration, steps)
        log.info("recipe %s: %s", recipe, steps["help"])
        return onnx.load_model(str(work / "program.onnx"))


# ---- the two formats --------------------------------------------------------------------------------


def write_onnx(src: str, out: str) -> None:
    """`.onnx`: the program as built; ONNX Runtime optimizes it for the device when it loads it."""
    shutil.copyfile(src, out)


def write_ort(src: str, out: str) -> None:
    """`.ort`: ORT Mobile's format, from ORT's own converter (fixed optimizations, as it advises)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(prefix="pqv-ort-") as folder:
        model = Path(folder) / "model.onnx"
        shutil.copyfile(src, model)
        with contextlib.redirect_stdout(io.StringIO()), warnings_quiet():  # it prints every step
            convert_onnx_models_to_ort(model, Path(folder) / "ort", optimization_styles=[OptimizationStyle.Fixed])
        shutil.move(Path(folder) / "ort" / "model.ort", out)


def session_options(threads: int | None = None, ort_format: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()  # `evaluate.threads`, as for every format
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if ort_format:  # ORT tells its formats apart by the file name, which a temporary file lacks
        options.add_session_config_entry("session.load_model_format", "ORT")
    return options


class Session:
    """An ONNX Runtime file called like a module: tensor in, tensor out, any batch size (run in
    pieces of the file's static batch)."""

    def __init__(self, path: str, ort_format: bool = False, options=None):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(
                str(path), options or session_options(ort_format=ort_format), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT's own exception types: the runtime's error, as every runtime's is (export.load)
            raise RuntimeError(str(e)) from None
        meta = self.session.get_inputs()[0]
        self.input = meta.name
        self.batch = meta.shape[0] if isinstance(meta.shape[0], int) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pieces = x.contiguous().split(self.batch) if self.batch else (x.contiguous(),)
        return torch.cat([torch.from_numpy(self.session.run(None, {self.input: p.numpy()})[0]) for p in pieces])


def session_facts(session: Session) -> str:
    """The session options a latency figure was measured with (the bench's CSV names them)."""
    options = session.session.get_session_options()
    try:
        spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
    except Exception:  # not set: ORT's default, spinning on
        spinning = "1 (default)"
    return (
        f"intra_op_num_threads={options.intra_op_num_threads}, inter_op_num_threads={options.inter_op_num_threads}, "
        f"graph_optimization_level={options.graph_optimization_level.name}, "
        f"execution_mode={options.execution_mode.name}, intra_op.allow_spinning={spinning}, "
        f"providers={'/'.join(session.session.get_providers())}"
    )


def load_onnx(path: str) -> Session:
    return Session(path)


def load_ort(path: str) -> Session:
    return Session(path, ort_format=True)


# ---- per-operator profile: ONNX Runtime's own profiler ----------------------------------------------


def profile_rows(path: str, ort_format: bool, example: torch.Tensor, warmup: int, runs: int) -> list[dict]:
    """Rows of the profile table from ORT's profiler: each operator type's kernel time over the
    last `runs` calls, per inference, and the runtime around the kernels (model_run minus them)."""
    with tempfile.TemporaryDirectory(prefix="pqv-ort-profile-") as folder:
        options = session_options(ort_format=ort_format)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = Session(path, options=options)
        with torch.no_grad():
            for _ in range(warmup + runs):
                session(example)
        events = json.loads(Path(session.session.end_profiling()).read_text())
    calls = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[-runs:]
    start = calls[0]["ts"]
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start]
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    for e in kernels:
        op = e.get("args", {}).get("op_name", "unknown")
        totals[op] = totals.get(op, 0.0) + e["dur"] / 1e3 / runs
        counts[op] = counts.get(op, 0) + 1
    rows = [{"operator": op, "self_cpu_ms": t, "total_cpu_ms": t, "calls": counts[op] // runs} for op, t in totals.items()]
    around = sum(e["dur"] for e in calls) / 1e3 / runs - sum(totals.values())
    rows.append(
        {
            "operator": "runtime around kernels (model_run minus kernels)",
            "self_cpu_ms": max(around, 0.0),
            "total_cpu_ms": max(around, 0.0),
            "calls": 1,
        }
    )
    return rows


@contextlib.contextmanager
def warnings_quiet():
    """The exporter and ORT's tools warn and log at length about what is expected (a static shape,
    an unfused attention; ORT's converter sets its loggers to DEBUG): the job's log keeps PQV's
    own lines and the errors."""
    import warnings

    before = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(before)
