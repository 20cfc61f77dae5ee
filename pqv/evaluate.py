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
from tqdm import tqdm


@torch.no_grad()
def accuracy(fn, loader, desc: str | None = None) -> tuple[float, float]:
    """Top-1 and top-5 accuracy in percent of a callable over a DataLoader."""
    correct1 = correct5 = total = 0
    for images, labels in tqdm(loader, desc=desc, disable=desc is None, mininterval=2):
        logits = fn(images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(dim=1).sum().item()
        total += len(labels)
    return 100.0 * correct1 / total, 100.0 * correct5 / total


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
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()}


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


def run(artifact: str, out: str, spec: dict, labels: dict, threads: int, warmup: int, runs: int,
        batch_size: int = 1) -> dict:
    """CLI entry: measure one artifact (exported file, or a .safetensors model as the eager baseline)."""
    from . import data, io

    torch.set_num_threads(threads)
    meta = io.read_sidecar(artifact)
    if str(artifact).endswith(".safetensors"):
        fidelity = {"cosine_min": 1.0, "top1_agreement": 1.0}
        meta = {**meta, "format": EAGER, "engine": "none", "eager_top1": meta.get("top1")}
    else:
        fidelity = meta["fidelity"]
    dc = meta["data_config"]
    # Memory first, in a process that has loaded nothing but torch: load the artifact, run one image
    # (that first, cold call is also what the paper's one-call profiler method times).
    rss_before = _rss_mb()
    module = _load(artifact, meta)
    example = torch.zeros(batch_size, *dc["input_size"])
    paper_ms = paper_method_ms(module, example)
    memory = {"rss_base_mb": rss_before, "rss_model_mb": _rss_mb() - rss_before,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    timing = latency(module, example, warmup, runs)
    top1, top5 = accuracy(module, data.loader(spec, "eval", dc, EVAL_BATCH), desc=f"accuracy {Path(artifact).name}")
    metrics = {
        **labels,
        "top1": top1, "top5": top5, "eager_top1": meta.get("eager_top1"),
        **timing, "latency_ms_paper_method": paper_ms,
        "size_mb": os.path.getsize(artifact) / 2**20,
        **memory,
        "params": meta.get("params"), "macs": meta.get("macs"),
        "cosine_min": fidelity["cosine_min"], "top1_agreement": fidelity["top1_agreement"],
        "threads": threads, "warmup": warmup, "runs": runs, "batch_size": batch_size,
        **machine(), "artifact": str(artifact),
    }
    io.write_json(out, metrics)
    return metrics
