"""Evaluate stage: accuracy, latency, size and memory of an exported artifact in its own runtime.

Each artifact is measured in its own process (one Snakemake job each), with a fixed thread count,
warm-up calls, and the median of repeated single-batch calls; min, max and p90 are kept so the
spread is visible.
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from .progress import progress


@torch.no_grad()
def counts(fn, loader, desc: str | None = None) -> tuple[int, int, int]:
    """(top-1 hits, top-5 hits, images) of a callable over a DataLoader (a bar when `desc` is given)."""
    correct1 = correct5 = total = 0
    for images, labels in progress(loader, desc=desc, disable=desc is None, unit="batch"):
        logits = fn(images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
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


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "node_exclusive": _slurm_node_exclusive(), "torch": torch.__version__,
            "platform": platform.platform()}


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
    from . import export, io

    if meta["format"] == EAGER:
        model, _ = io.load_model(artifact)
        return model.eval()
    return export.load(artifact, meta["format"], meta["engine"])


EAGER = "eager"  # format name of the eager FP32 baseline rows


def run(artifact: str, out: str, manifest, labels: dict, threads: int, warmup: int, runs: int,
        batch_size: int = 1, accuracy_threads: int | None = None, device: str = "auto", workers: int = 0) -> dict:
    """CLI entry: measure one artifact (exported file, or a .safetensors model as the eager baseline).

    Latency: `threads` threads, on the CPU. Accuracy: every core the job holds (`accuracy_threads`),
    batches of EVAL_BATCH, and for the eager baseline CUDA when the device rule gives it; an
    exported file is always scored in its own runtime."""
    from . import data, datasets, io
    from .device import resolve

    set_threads(threads)
    meta = io.read_sidecar(artifact)
    if str(artifact).endswith(".safetensors"):
        fidelity = {"cosine_min": 1.0, "top1_agreement": 1.0}
        meta = {**meta, "format": EAGER, "engine": "none", "eager_top1": meta.get("top1"), "status": "verified"}
    else:
        fidelity = meta["fidelity"]
    dc = meta["data_config"]
    manifest = data.of(manifest)
    example = datasets.sample_batch(manifest, dc, batch_size)  # real held-out images, across classes
    # Memory first, in a process that has loaded nothing but torch and the inputs: load the artifact,
    # run one image (that first, cold call is also what the paper's one-call profiler method times).
    rss_before = _rss_mb()
    module = _load(artifact, meta)
    paper_ms = paper_method_ms(module, example)
    memory = {"rss_base_mb": rss_before, "rss_model_mb": _rss_mb() - rss_before,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    timing = latency(module, example, warmup, runs)
    accuracy_threads = accuracy_threads or threads
    if accuracy_threads != threads:
        # ExecuTorch's XNNPACK pool can only be resized with no program bound to it: drop the timed
        # copy, widen the pool (and torch's threads), load the artifact again for the accuracy pass.
        del module
        set_threads(accuracy_threads)
        module = _load(artifact, meta)
    loader = datasets.loader(manifest, "eval", dc, EVAL_BATCH, workers=workers)
    started = time.perf_counter()
    desc = f"accuracy {Path(artifact).name}"
    if meta["format"] == EAGER:
        top1, top5 = accuracy_on(module, loader, resolve(device), desc)
    else:  # Lite: batches of EVAL_BATCH on every thread; .pte: image by image on an XNNPACK pool as wide
        top1, top5 = accuracy(module, loader, desc)
    accuracy_s = time.perf_counter() - started
    metrics = {
        **labels,
        "top1": top1, "top5": top5, "eager_top1": meta.get("eager_top1"),
        **timing, "latency_ms_paper_method": paper_ms,
        "size_mb": os.path.getsize(artifact) / 2**20,
        **memory,
        "params": meta.get("params"), "macs": meta.get("macs"),
        "cosine_min": fidelity["cosine_min"], "top1_agreement": fidelity["top1_agreement"],
        "status": meta.get("status", "verified"), "reason": meta.get("reason", ""),
        "threads": threads, "warmup": warmup, "runs": runs, "batch_size": batch_size,
        "accuracy_threads": accuracy_threads, "accuracy_images_per_s": len(loader.dataset) / accuracy_s,
        **machine(), "artifact": str(artifact),
    }
    io.write_json(out, metrics)
    return metrics
