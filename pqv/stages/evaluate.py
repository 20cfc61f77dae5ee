"""Evaluate stage: accuracy, latency, size and memory of an exported artifact in its own runtime.

Two measurements, two kinds of job (`pqv evaluate accuracy|latency`), because they want different
machines: the accuracy pass is throughput (batches over the whole held-out split, every core the
job holds, CUDA for the eager FP32 baseline where there is one); latency is a short timing on the
CPU with a fixed thread count, warm-up calls and the median of repeated single-batch calls (min,
max and p90 kept so the spread is visible), on a node the job has to itself on a cluster.
Memory is measured by the latency job before it reads any data: its process has imported the
runtime, loads the artifact and runs one input, nothing else, so the figure is the artifact's,
not the data set's.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from ..common.progress import progress
from ..plan import fileio, registry
from ..plan.config import Evaluate, default


@torch.no_grad()
def counts(fn, loader, desc: str | None = None) -> tuple[int, int, int]:
    """(top-1 hits, top-5 hits, images) of a callable over a DataLoader (a bar when `desc` is given)."""
    correct1 = correct5 = total = 0
    for images, labels in progress(loader, desc=desc, disable=desc is None, unit="batch"):
        logits = fn(images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu()  # logits may be on CUDA, labels are not
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        total += len(labels)
    return correct1, correct5, total


def accuracy(fn, loader, desc: str | None = None) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent of a callable over a DataLoader."""
    correct1, correct5, total = counts(fn, loader, desc)
    return 100.0 * correct1 / total, 100.0 * correct5 / total


def accuracy_on(model: torch.nn.Module, loader, device: torch.device, desc: str | None = None) -> tuple[float, float]:
    """Accuracy of an eager model on `device` (CUDA where there is one); the model ends on the CPU."""
    model.to(device).eval()
    try:
        return accuracy(lambda x: model(x.to(device, non_blocking=True)).float(), loader, desc)
    finally:
        model.cpu()


def set_threads(threads: int) -> None:
    """torch's intra-op threads and, when a .pte is loaded, ExecuTorch's XNNPACK pool."""
    import sys

    torch.set_num_threads(threads)
    portable = sys.modules.get("executorch.extension.pybindings.portable_lib")
    if portable is not None and portable._threadpool_get_thread_count() != threads:
        portable._unsafe_reset_threadpool(threads)


@torch.no_grad()
def latency(fn, example: torch.Tensor, warmup: int, runs: int) -> dict:
    """Milliseconds per call: median, min, max, p90 of `runs` calls after `warmup` calls."""
    for _ in range(warmup):
        fn(example)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(example)
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return {
        "latency_ms_median": statistics.median(times),
        "latency_ms_min": times[0],
        "latency_ms_max": times[-1],
        "latency_ms_p90": times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))],
    }


EVAL_BATCH = 64  # accuracy batches (a .pte program runs them image by image: export.py)


# The CPU features int8 and FP16 kernels depend on (the flags of /proc/cpuinfo that name them).
# The flags the int8 and FP32 kernels choose by: a host without AVX-512 is named by AVX2 and FMA
# (the most common x86 class), not left blank.
CPU_FEATURES = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "BF16",
    "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX",
}


def machine() -> dict:
    """The CPU (model name and the features its kernels use), cores, torch, platform."""
    cpu, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's block
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    features = ", ".join(name for flag, name in CPU_FEATURES.items() if flag in flags)
    return {
        "cpu": cpu,
        "cpu_features": features,
        "cores": os.cpu_count(),
        "node_exclusive": _slurm_node_exclusive(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def _slurm_node_exclusive() -> bool | None:
    """In a SLURM job: whether it holds its node alone (`--exclusive`, OverSubscribe=NO), so no other
    job shared the CPU while it was timed. None outside SLURM, where the workflow instead reserves
    every core Snakemake has for a timing job."""
    import subprocess

    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return "OverSubscribe=NO" in out.split() if out else None


def _rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def paper_method_ms(fn, example: torch.Tensor) -> float:
    """The paper's figure: one cold call of a freshly loaded model under the profiler, kept as a
    labelled extra column so users can see why its speed-ups differ from the median method."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]):
        start = time.perf_counter()
        fn(example[:1])
        return (time.perf_counter() - start) * 1e3


def _load(artifact: str, meta: dict):
    """An exported artifact in its runtime, or the eager FP32 model (the `eager` baseline)."""
    from ..common import store
    from . import export

    if meta["format"] == EAGER:
        model, _ = store.load_model(artifact)
        if meta.get("merge_r"):  # the eager baseline of a merged file merges the same tokens
            from ..common import tome

            tome.apply(model, meta["merge_r"])
        return model.eval()
    return export.load(artifact, meta["format"], meta["engine"])


EAGER = registry.EAGER
Status = registry.Status
# The modules each runtime needs, imported before the memory baseline is read.
RUNTIME_MODULES = {
    "ptl": ("torch.jit.mobile",),
    "pte": ("executorch.runtime", "executorch.extension.pybindings.portable_lib"),
    "onnx": ("onnxruntime",),
    "ort": ("onnxruntime",),
    EAGER: ("timm",),
}


def describe(artifact: str, labels: dict | None = None) -> dict:
    """What the measurements need to know of an artifact: its sidecar, for the eager baseline (a
    .safetensors model) completed with the eager format, a perfect fidelity to itself, and the tokens
    its row merges (labels' merge_r: the baseline of a merged file merges the same)."""
    from ..common import store

    meta = fileio.read_sidecar(artifact)
    if not str(artifact).endswith(".safetensors"):
        store.check_artifact(artifact)  # a cut file is one line, before a runtime is imported (and logs)
    if str(artifact).endswith(".safetensors"):
        # a model is its own FP32 reference, checked by nothing else: verified unless its branch failed
        # (a model's sidecar says only `failed`; a diverged finetune's model is never a reference)
        status = Status.FAILED if meta.get("status") == Status.FAILED else Status.VERIFIED
        merge_r = int((labels or {}).get("merge_r") or 0)
        merged = {"merge_r": merge_r, "macs": None} if merge_r else {}  # not counted: see pqv.stages.quantize.run
        return {
            **meta,
            "format": EAGER,
            "engine": registry.NO_ENGINE,
            "status": status,
            "fidelity": {"cosine_min": 1.0, "top1_agreement": 1.0},
            **merged,
        }
    return meta


def runtime_version(fmt: str) -> str:
    """The runtime that ran the artifact, with its version (the profile names the same)."""
    from importlib.metadata import version

    if fmt == "pte":
        return f"executorch {version('executorch')}"
    if fmt in registry.ONNX_FORMATS:
        return f"onnxruntime {version('onnxruntime')}"
    return f"{'torch lite interpreter' if fmt == 'ptl' else 'torch'} {torch.__version__}"


def process_threads(job_threads: int, processes: int = 1) -> int:
    """Torch threads of one process: its share of the job's cores (torchrun's ranks split them), at
    least one. DataLoader `workers` do not subtract: they decode the next batch while the model
    computes, and a ViT on a CPU waits on its compute, not on decoding (docs/finetuning.md,
    docs/deit_b.md: subtracting them left one of a 2-core job's cores idle)."""
    return max(1, job_threads // max(1, processes))


def memory(artifact: str, meta: dict) -> dict:
    """Memory of the artifact alone: the job measures it first, before it reads any data, in a
    process that has imported the runtime, then loads the artifact and runs one input (zeros of its
    input shape: memory does not depend on the values)."""
    import importlib

    for name in RUNTIME_MODULES[meta["format"]]:
        importlib.import_module(name)
    base = _rss_mb()
    module = _load(artifact, meta)
    with torch.no_grad():
        module(torch.zeros(1, *meta["data_config"]["input_size"]))
    return {
        "rss_base_mb": base,
        "rss_model_mb": _rss_mb() - base,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_latency(
    artifact: str,
    out: str,
    manifest,
    labels: dict,
    threads: int,
    warmup: int,
    runs: int,
    batch_size: int = default(Evaluate, "batch_size"),
) -> dict:
    """CLI entry: latency, size and memory of one artifact (or of the eager baseline), on the CPU with
    `threads` threads, on `batch_size` real training images drawn across classes. Memory comes
    first (`memory`), then the data; the artifact is loaded again for the timing, so the paper's
    one-call method times a cold first call."""
    from ..common import datasets

    set_threads(threads)
    meta = describe(artifact, labels)
    used = memory(artifact, meta)
    # any images serve for timing: the training split's, which changes only when every artifact does
    example = datasets.sample_batch(manifest, meta["data_config"], batch_size, split="train")
    module = _load(artifact, meta)
    paper_ms = paper_method_ms(module, example)  # the first, cold call of the freshly loaded file
    timing = latency(module, example, warmup, runs)
    metrics = {
        **labels,
        **timing,
        "latency_ms_paper_method": paper_ms,
        "size_mb": os.path.getsize(artifact) / 2**20,
        **used,
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "batch_size": batch_size,
        "runtime": runtime_version(meta["format"]),
        **machine(),
        "artifact": str(artifact),
    }
    fileio.write_json(out, metrics)
    return metrics


def run_accuracy(artifact: str, out: str, manifest, labels: dict, threads: int, workers: int = 0, device: str = "auto") -> dict:
    """CLI entry: top-1/top-5 of one artifact in its own runtime over the held-out split, on every
    core the job holds (`threads`; its DataLoader `workers` decode beside); the eager baseline on CUDA when the
    device rule gives it. A .pte (or ONNX Runtime file) runs image by image on a pool as wide."""
    from ..common import datasets
    from ..common.device import resolve

    compute = process_threads(threads)
    set_threads(compute)
    meta = describe(artifact, labels)
    module = _load(artifact, meta)
    loader = datasets.loader(manifest, "eval", meta["data_config"], EVAL_BATCH, workers=workers)
    started = time.perf_counter()
    desc = f"accuracy {Path(artifact).name}"
    where = resolve(device) if meta["format"] == EAGER else torch.device("cpu")
    if meta["format"] == EAGER:
        top1, top5 = accuracy_on(module, loader, where, desc)
    else:  # Lite: batches of EVAL_BATCH on every thread; .pte: image by image on an XNNPACK pool as wide
        top1, top5 = accuracy(module, loader, desc)
    seconds = time.perf_counter() - started
    fidelity = meta["fidelity"]
    metrics = {
        **labels,
        "top1": top1,
        "top5": top5,
        "params": meta.get("params"),
        "macs": meta.get("macs"),
        "device": meta.get("device"),
        "cosine_min": fidelity["cosine_min"],
        "top1_agreement": fidelity["top1_agreement"],
        # an export sidecar without a status (from before export checks had one) is no verified file
        "status": Status.word(meta.get("status")),
        "reason": meta.get("reason")
        or ("" if Status.shippable(meta.get("status")) else "its export sidecar has no status: export it again"),
        "accuracy_threads": compute,
        "accuracy_workers": workers,
        "accuracy_device": str(where),
        "accuracy_images_per_s": len(loader.dataset) / seconds,
        "images": len(loader.dataset),
        "artifact": str(artifact),
    }
    fileio.write_json(out, metrics)
    return metrics
