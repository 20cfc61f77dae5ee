"""Export stage: turn a quantized program into a mobile file and verify it.

Every artifact is loaded back in its own runtime (Lite Interpreter, ExecuTorch, ONNX Runtime) and compared with
the eager FP32 model it came from on real held-out images, drawn across classes. A recipe that
fails the check is a result, not a crash: its file is written with `status: rejected` and the
reason in its sidecar, so a sweep still completes; the summary, the figures and `pqv choose` keep
it apart from verified artifacts. Errors (a crash, a bad file) still fail the job.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..common import datasets
from ..common.progress import progress
from ..plan import fileio, registry
from ..plan import manifest as manifests
from ..plan.config import Export, default
from ..plan.errors import PQVError
from ..plan.registry import NO_ENGINE, Status
from .quantize import engine_scope

log = logging.getLogger(__name__)
CHECK_CHUNK = 16  # images per call in the export check: a bar that moves, memory that stays small

# x86/fbgemm packed weights serialize by unpacking into a fresh tensor each time, so a Lite file
# stores every int8 weight twice; onednn's keep the original tensor and are stored once. The int8
# values and scales are the same, and the runtime repacks them for its own engine at load, so
# writing under onednn halves the file without changing one output (tests check both).
COMPACT_STORAGE = {"x86": "onednn", "fbgemm": "onednn"}


def _storage_engine(engine: str) -> str:
    compact = COMPACT_STORAGE.get(engine)
    return compact if compact in torch.backends.quantized.supported_engines else engine


def _export_ptl(src: str, out: str, precision: str, options: dict) -> None:
    """TorchScript -> optimize_for_mobile -> Lite Interpreter (the paper's path)."""
    with engine_scope(_storage_engine(options.get("engine", NO_ENGINE))):
        _write_ptl(src, out, precision, options)


def _write_ptl(src: str, out: str, precision: str, options: dict) -> None:
    from torch.utils.mobile_optimizer import MobileOptimizerType, optimize_for_mobile

    module = torch.jit.load(src).eval()
    if options.get("mobile_optimizer", True):
        blocklist = set()
        # FP16 breaks the prepack-folding pass; on x86 that XNNPACK rewrite makes FP32 ~3x slower.
        if precision == "fp16" or not options.get("xnnpack_rewrite", True):
            blocklist.add(MobileOptimizerType.INSERT_FOLD_PREPACK_OPS)
        module = optimize_for_mobile(module, optimization_blocklist=blocklist)
    else:
        module = torch.jit.freeze(module)  # Lite saving needs a frozen or optimized module
    module._save_for_lite_interpreter(out)


def _load_ptl(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from torch.jit.mobile import _load_for_lite_interpreter

    return _load_for_lite_interpreter(path)


def _export_pte(src: str, out: str, precision: str, options: dict) -> None:
    """torch.export program -> ExecuTorch with everything XNNPACK can run delegated to it."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    _find_flatc()
    program = torch.export.load(src)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    with open(out, "wb") as f:
        lowered.write_to_file(f)


def _find_flatc() -> None:
    """ExecuTorch serializes with the `flatc` binary its wheel installs beside the interpreter;
    point it there so nobody has to put the venv's bin/ on PATH."""
    beside = Path(sys.executable).parent / "flatc"
    if "FLATC_EXECUTABLE" not in os.environ and not shutil.which("flatc") and beside.exists():
        os.environ["FLATC_EXECUTABLE"] = str(beside)


class _ExecuTorchModule:
    """Call an ExecuTorch program like a module: tensor in, tensor out, any batch size (a batch
    larger than the program's is run in pieces of the program's batch)."""

    def __init__(self, path: str):
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        # XNNPACK runs on ExecuTorch's own pool (all cores by default): give it torch's thread
        # count, so `evaluate.threads` means the same for every format
        if portable_lib._threadpool_get_thread_count() != torch.get_num_threads():
            portable_lib._unsafe_reset_threadpool(torch.get_num_threads())
        self.method = Runtime.get().load_program(path).load_method("forward")
        self.batch = self.method.metadata.input_tensor_meta(0).sizes()[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.method.execute([piece])[0] for piece in x.contiguous().split(self.batch)])


def _export_onnx(src: str, out: str, precision: str, options: dict) -> None:
    from ..common import ort

    ort.write_onnx(src, out)


def _export_ort(src: str, out: str, precision: str, options: dict) -> None:
    from ..common import ort

    ort.write_ort(src, out)


def _load_onnx(path: str):
    from ..common import ort

    return ort.load_onnx(path)


def _load_ort(path: str):
    from ..common import ort

    return ort.load_ort(path)


@dataclass(frozen=True)
class Format:
    export: Callable[[str, str, str, dict], None]
    load: Callable[[str], Callable[[torch.Tensor], torch.Tensor]]


FORMATS: dict[str, Format] = {
    "ptl": Format(_export_ptl, _load_ptl),
    "pte": Format(_export_pte, _ExecuTorchModule),
    "onnx": Format(_export_onnx, _load_onnx),  # ONNX Runtime (pqv/common/ort.py): the .onnx program as built
    "ort": Format(_export_ort, _load_ort),  # ORT Mobile's format, by ORT's own converter
}


def check_format(fmt: str, engine: str) -> None:
    if fmt not in FORMATS:
        raise PQVError(f"unknown export format '{fmt}'", f"use one of {', '.join(FORMATS)}")
    engines = registry.FORMATS[fmt]["engines"]
    if engine != NO_ENGINE and engine not in engines:
        raise PQVError(f"format '{fmt}' cannot run engine '{engine}'", f"use one of {', '.join(engines)}")


def load(path: str, fmt: str, engine: str):
    """Load an exported artifact in its runtime; the engine must be selected before loading."""
    from ..common import store

    check_format(fmt, engine)
    store.check_artifact(path)  # a cut or damaged file is a one-line error, not the runtime's traceback
    with engine_scope(engine):
        try:
            return FORMATS[fmt].load(path)
        except RuntimeError as e:
            why = " ".join(str(e).split())[:160]
            made, here = _made_with(path), store.versions()
            changed = {k: v for k, v in made.items() if k in here and here[k] != v}
            if changed:  # not a damaged file: a file of another runtime version
                raise PQVError(
                    f"{fmt} runtime cannot load {path}, which was made with "
                    + ", ".join(f"{k} {v}" for k, v in changed.items())
                    + " (this machine has "
                    + ", ".join(f"{k} {here[k]}" for k in changed)
                    + f"): {why}",
                    f"export it again with these versions (`snakemake --forcerun {path}`), or load "
                    "it where those versions are installed",
                ) from None
            raise fileio.corrupt(path, f"{fmt} runtime cannot load {path}: {why}") from None


def _made_with(path: str) -> dict:
    """The runtime versions an artifact's sidecar says it was made with ({} if unknown)."""

    try:
        versions = fileio.read_json(fileio.sidecar_path(path)).get("versions") or {}
    except PQVError:
        return {}
    return {k: v for k, v in versions.items() if k in ("torch", "executorch", "onnxruntime")}


@torch.no_grad()
def compare(artifact_out: torch.Tensor, reference: torch.Tensor) -> dict:
    diff = (artifact_out - reference).abs()
    cosine = torch.nn.functional.cosine_similarity(artifact_out, reference, dim=1)
    return {
        "max_abs_diff": diff.max().item(),
        "cosine_min": cosine.min().item(),
        "cosine_mean": cosine.mean().item(),
        "top1_agreement": (artifact_out.argmax(1) == reference.argmax(1)).float().mean().item(),
        "finite": bool(torch.isfinite(artifact_out).all()),
    }


def verdict(precision: str, fidelity: dict, min_cosine: float) -> str | None:
    """None if the artifact computes what its parent does, else the reason it does not. Garbage
    cannot pass: non-finite outputs fail, and so does any comparison with NaN (written so that a
    NaN makes the test false, not the failure)."""
    atol = registry.PRECISIONS[precision]["atol"]
    if not fidelity.get("finite", True):
        return f"{precision} artifact gives non-finite outputs (NaN or inf)"
    if atol is not None and not fidelity["max_abs_diff"] <= atol:
        return f"{precision} artifact differs from its FP32 parent by {fidelity['max_abs_diff']:.3g} > {atol}"
    if atol is None and not fidelity["cosine_min"] >= min_cosine:
        return f"{precision} artifact's cosine similarity {fidelity['cosine_min']:.4f} to its FP32 parent is below {min_cosine}"
    return None


def run(
    src: str,
    parent_model: str,
    out: str,
    fmt: str,
    manifest,
    mobile_optimizer: bool = True,
    xnnpack_rewrite: bool = True,
    check_images: int = default(Export, "check_images"),
    min_cosine: float = default(Export, "min_cosine"),
) -> dict:
    """CLI entry: export, load back, compare with the eager FP32 parent, then publish."""
    from ..common import store

    meta = fileio.read_sidecar(src)
    store.check_artifact(src)
    precision, engine = meta["precision"], meta["engine"]
    check_format(fmt, engine)
    if meta.get("ir", "ts") != registry.ir_of(fmt):
        raise PQVError(
            f"{src} is a .{meta.get('ir', 'ts')} program; .{fmt} needs .{registry.ir_of(fmt)}",
            f"quantize to a .{registry.ir_of(fmt)} file first",
        )
    eager, arch = store.load_model(parent_model)
    merge_r = int(meta.get("merge_r") or 0)
    if merge_r:  # the file merges tokens (pqv.common.tome): its parent is the eager model merging the same
        from ..common import tome

        tome.apply(eager, merge_r)
    images, sample = check_sample(manifest, arch["data_config"], check_images, int(meta.get("calibration_images") or 0))
    with torch.no_grad():
        reference = eager(images)
    options = {"mobile_optimizer": mobile_optimizer, "xnnpack_rewrite": xnnpack_rewrite}
    with fileio.atomic_path(out, need_bytes=2 * os.path.getsize(src)) as tmp, engine_scope(engine), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # TorchScript/Lite are deprecated upstream
        log.info("exporting %s to .%s", src, fmt)
        FORMATS[fmt].export(src, tmp, precision, {**options, "engine": engine})
        log.info(
            "checking it against its FP32 parent%s on %d training images",
            f" merging {merge_r} tokens per block" if merge_r else "",
            len(images),
        )
        artifact = FORMATS[fmt].load(tmp)
        outputs = torch.cat([artifact(piece) for piece in progress(images.split(CHECK_CHUNK), desc="export check", unit="chunk")])
        fidelity = compare(outputs, reference)
        problem = verdict(precision, fidelity, min_cosine)
    status, reason = outcome(precision, fmt, problem, meta)
    facts = {
        k: meta.get(k)
        for k in ("precision", "engine", "params", "macs", "data_config", "device", "merge_r", "tokens_per_block")
        if k in meta or k not in ("merge_r", "tokens_per_block")
    }
    # what the check compared the file with, in words (a merged file: its parent merging the same tokens)
    compared = f"the eager FP32 parent{f' merging {merge_r} tokens per block (pqv.common.tome)' if merge_r else ''}"
    store.write_sidecar(
        out,
        "export",
        parent=str(src),
        format=fmt,
        **options,
        check_images=len(images),
        compared_with=compared,
        check_sample=sample,
        fidelity=fidelity,
        status=status,
        reason=reason,
        min_cosine=min_cosine,
        **facts,
    )
    # what an app needs to feed the file and read its outputs, without PQV (pqv.common.appfile)
    from ..common import appfile

    fileio.write_json(appfile.path_of(out), appfile.describe(arch["data_config"], manifests.of(manifest), Path(out).name, fmt))
    return fidelity


def check_sample(manifest, data_config: dict, check_images: int, calibrated: int) -> tuple[torch.Tensor, dict]:
    """The images the check scores, and what the sidecar says of them. The check measures the
    conversion (does the file compute its parent's function?), not how the model generalizes:
    training images serve, and the evaluation split stays the accuracy jobs' alone (changing it
    re-exports nothing). They come from the order int8_static calibration draws from, after the
    `calibrated` images calibration took, so the check never scores an image the file was
    calibrated on; a split too small for both is checked on what calibration left."""

    images = datasets.sample_after(manifest, data_config, calibrated, check_images, split="train", seed=datasets.CALIBRATION_SEED)
    if not len(images):
        total = len(manifests.split_of(manifests.of(manifest), "train")["items"])
        raise PQVError(
            f"int8_static calibration took all {total} training images (quantize.calibration_images): none "
            "is left for the export check to score",
            f"set quantize.calibration_images below {total}, or add training images",
        )
    if len(images) < check_images:
        log.warning(
            "the training split holds %d images after the %d that calibrated this file: the check scores "
            "those %d, not export.check_images %d",
            len(images),
            calibrated,
            len(images),
            check_images,
        )
    return images, {"split": "train", "images": len(images), "calibration_images": calibrated, "disjoint_from_calibration": True}


def outcome(precision: str, fmt: str, problem: str | None, meta: dict) -> tuple[Status, str]:
    """The file's status and reason. A branch that failed upstream (a diverged finetune) stays
    failed; a lossy recipe that fails the check is rejected (a result); an exact precision that does
    not compute its parent's function is a bug of the exporter or of pqv/common/layers.py: failed, loudly,
    so that one branch does not stop a sweep or a search."""
    if meta.get("status") == Status.FAILED.value:
        log.warning("FAILED upstream: %s (the file is kept with status '%s')", meta.get("reason"), Status.FAILED)
        return Status.FAILED, meta.get("reason") or "failed upstream"
    if not problem:
        return Status.VERIFIED, ""
    if registry.PRECISIONS[precision]["lossy"]:
        log.warning(
            "REJECTED: %s (the file is kept with status '%s'; loosen export.min_cosine to accept it)", problem, Status.REJECTED
        )
        return Status.REJECTED, problem
    reason = (
        f"{problem}: exporting to .{fmt} changed the model's function (the exporter, or the layer rewrites of "
        f"pqv/common/layers.py, is wrong for this model; report it with this log, and drop {fmt} from export.formats "
        "for this model meanwhile)"
    )
    log.error("FAILED: %s; the file is kept with status '%s' and is never chosen", reason, Status.FAILED)
    return Status.FAILED, reason
