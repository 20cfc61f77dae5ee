"""What each job asks a cluster for (threads, memory, wall time, GPUs), from the data and the model.

Per-rule resources live in the rules, not in a profile: on the command line Snakemake *replaces* a
profile's --default-resources, --set-resources and --set-threads with the ones given, so resources
kept in profiles/slurm vanished as soon as a user named a partition or overrode one value. Computed
here, a site profile needs only partition and account, and `--set-resources finetune:runtime=600`
changes that one value and keeps the rest.

The numbers are a budget, not a measurement. A job's work is its image count (from the data
manifest: `Work.images`, or before the data job ran `pqv.plan.manifest.estimate`) times a per-image cost
that follows the model's multiply-accumulates (from the sidecar of the job's input model; for the
model job, estimated from the config: `estimate_macs`). Threads are fixed when Snakemake plans
(it needs them as integers), so they follow the data set's estimated size; memory and wall time
are computed again from the manifest just before each job starts (a resource that reads a file
not yet made is "to be determined" until then).
Torch-free: the Snakefile imports it on every run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .registry import EAGER, GRADIENT_IMPORTANCES

# Stages that time latency: on SLURM they ask for the node to themselves (`--exclusive`), and on one
# machine they reserve every core Snakemake has, so nothing else runs while they are timed. They
# are short: the accuracy pass over the held-out split is a job of its own (throughput, shared node).
TIMING_STAGES = ("latency", "profile")
# Stages that take every core of a local run (`--cores N`), and prune jobs of a gradient importance
# (they run calibration batches forward and backward); the rest take one, and so does a model job
# that only reads a weights file (one that trains its base model takes every core).
ALL_CORES_LOCALLY = ("data", "model", "finetune", "accuracy") + TIMING_STAGES
# ... unless its work is short: a job budgeted under SHORT_JOB_S seconds on one core (compute_seconds)
# takes one core, since its imports (~4 s, one core) outweigh the work, a small model computes
# fastest on one torch thread, and the job on the next core finishes sooner (the digits demo's
# accuracy passes took ~1 s of work each and ran one at a time). Timing stages always take every core.
SHORT_JOB_S = 20

# Per-image costs, core-seconds on one CPU core: the multiply-accumulates of one forward pass at
# these rates (eager FP32 DeiT-B, 17.6 GMAC: ~0.4 core-s to infer and ~3 core-s to train, on the
# 2-vCPU machines of docs/deit_b.md; training = 3 forward passes' work), plus a fixed part per image
# (the demo ViT, 11.7 MMAC, trains at ~6 core-ms per image: framework overhead dominates) and, for
# image files, decoding and transforms.
CPU_INFER_MACS_PER_S = 4.4e10
CPU_TRAIN_MACS_PER_S = 1.76e10
# One GPU, mixed precision. Not measured here (no GPU): derived from docs/paper.md's estimate that
# 60 ImageNet epochs of DeiT-B take 5-10 h on 4 A100-class GPUs, i.e. 20-40 GPU-hours for
# 60 x 1.28 M images: 0.94-1.87 ms per image; the rate below is the slow end (3 x 17.6 GMAC per
# trained image / 1.87 ms = 2.8e13 MAC/s, ~25 % of an A100's bf16 peak), so a budget is the
# estimate's upper bound before MARGIN. Inference: the same rate for one forward pass.
GPU_TRAIN_MACS_PER_S = 2.8e13
GPU_INFER_MACS_PER_S = 2.8e13
OVERHEAD_S = {"train": 0.004, "infer": 0.001}
DECODE_S = {"digits": 0.0, "imagefolder": 0.005}  # per image file read by a loader
SCAN_S = 0.003  # the data job: list, hash and decode (JPEG at 1/8 scale) one file

# Memory: a process that imports torch, timm and ExecuTorch holds ~0.85 GB before any model or data;
# training keeps weights, gradients and two Adam moments (4 copies) plus activations (~0.012 bytes
# per MAC per image in the batch, FP32: DeiT-B at batch 64 ~13 GB); inference keeps a few copies of
# the weights (eager model, quantized program, runtime); the manifest's file list ~0.5 kB per image
# in Python; a DataLoader worker ~0.5 GB.
BASE_MB = 1000
WORKER_MB = 500
# Copies of the weights an inference-side job holds (eager model, program, runtime): 4, and for ONNX
# Runtime's quantize job (its ir `onnx`) also the exported, optimized, pre-processed and quantized
# ONNX models: DeiT-B at 9.375 % peaked at 2.66 GB, 6.1 copies above the base (docs/latency.md).
WEIGHT_COPIES = {"onnx": 7}
DEFAULT_COPIES = 4
ITEM_BYTES = 500
ACTIVATION_BYTES_PER_MAC = 0.012

# Threads of a job on a cluster: a small data set needs few (its jobs take minutes on one core);
# a large one gets LARGE_THREADS per process.
SMALL_IMAGES = 20_000
SMALL_THREADS, LARGE_THREADS = 2, 8
STAGE_THREADS = {"quantize": 2, "export": 2}  # at most this many threads, whatever the data
LOADER_STAGES = ("model", "finetune", "accuracy")  # the stages that read whole splits with DataLoader workers
GPU_PROCESS_THREADS = 4  # torch threads of a finetune process that drives a GPU
MIN_RUNTIME = 10  # minutes: start-up, imports, scheduling slack
# A timing job holds a whole node: its floor is lower (imports and loading take seconds, the timed
# calls a few; the wall time asked is what the scheduler reserves the node for).
MIN_RUNTIME_TIMING = 5
MARGIN = 2  # wall time asked = 2x the budget, so a slower node does not kill a job near its end
# A partition's time limit caps every request. A finetune longer than the limit runs as successive
# jobs, each resuming from the checkpoint the one before saved just before its end (pqv.stages.finetune);
# the other stages cannot resume, and are short. A finetune longer than LONGEST_SPAN_H in all (a
# DeiT-B ImageNet finetune on CPUs: thousands of hours) is refused when the sweep is planned.
RESUMABLE = ("finetune",)
LONGEST_SPAN_H = 7 * 24

# timm's ViT sizes: (embed width, depth); a name's size word picks one, kwargs override it.
VIT_SIZES = {
    "tiny": (192, 12),
    "small": (384, 12),
    "medium": (512, 12),
    "base": (768, 12),
    "large": (1024, 24),
    "huge": (1280, 32),
    "giant": (1408, 40),
}


@dataclass(frozen=True)
class Work:
    """What a job's budget is computed from: the data set's image counts and the model's size."""

    train_images: int
    eval_images: int
    macs: float  # multiply-accumulates of one forward pass, batch 1
    params: float
    data: str = "imagefolder"  # digits | imagefolder: whether images are files to decode
    largest_pixels: float = 0  # the data set's largest image (the manifest's largest_pixels)


def decode_mb(pixels: float) -> float:
    """Memory that decoding one image of `pixels` holds: PIL's RGBA-sized buffer and the converted
    copy (issue 31 measured a 144-megapixel RGB PNG at ~615 MB above the process)."""
    return pixels * 4.5 / 2**20


@dataclass(frozen=True)
class Partition:
    """What the plan needs to know of the SLURM partition the jobs go to (one `sinfo` call, in
    the invocation that plans): whether it has GPUs and its wall-time limit (None: unknown or
    unlimited)."""

    name: str | None
    has_gpus: bool | None = None
    max_minutes: int | None = None


def slurm_seconds(text: str) -> int | None:
    """Seconds of a SLURM time ('30' minutes, '5:00' minutes:seconds, '2:00:00', '1-12:00:00',
    '1-12'); None for 'infinite', 'UNLIMITED' or anything unreadable."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or not 1 <= len(parts) <= 3 or (days and not days.isdigit()):
        return None
    if days:  # after a day count: hours, hours:minutes or hours:minutes:seconds
        h, m, s = ([int(p) for p in parts] + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = map(int, parts)
    else:  # minutes, or minutes:seconds
        h, m, s = 0, int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def slurm_minutes(text: str) -> int | None:
    seconds = slurm_seconds(text)
    return None if seconds is None else seconds // 60


def slurm_time_left() -> tuple[int, int] | None:
    """(seconds left, time limit in seconds) of the SLURM job this process runs in, from squeue;
    None outside SLURM, without a limit, or when squeue cannot tell."""
    import os
    import subprocess

    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%L %l"], capture_output=True, text=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) != 2 or None in (left := slurm_seconds(out[0]), limit := slurm_seconds(out[1])):
        return None
    return left, limit


def slurm_partition(partition: str | None) -> Partition:
    """The partition named (None: the default one), from one `sinfo` call; unknown facts are None
    (not a SLURM machine, an unknown partition)."""
    import subprocess

    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %l %G"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return Partition(partition)
    rows: dict[str, list[tuple[str, str]]] = {}
    default = None
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        name = fields[0]
        if name.endswith("*"):
            name = default = name[:-1]
        rows.setdefault(name, []).append((fields[1], fields[2] if len(fields) > 2 else "(null)"))
    wanted = partition or default
    if wanted not in rows:
        return Partition(partition)
    limits = [slurm_minutes(limit) for limit, _ in rows[wanted]]
    gpus = any(g.startswith("gpu") for _, entry in rows[wanted] for g in entry.split(","))
    return Partition(wanted, gpus, min((m for m in limits if m), default=None))


def machine_has_gpus(proc: str = "/proc/driver/nvidia/gpus", dev: str = "/dev") -> bool:
    """Whether this machine shows a GPU that `device: auto` could use (an NVIDIA driver's GPUs, or
    AMD's ROCm device), without importing torch; CUDA_VISIBLE_DEVICES set empty hides them."""
    import os
    from pathlib import Path

    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return any(Path(proc).glob("*")) or Path(dev, "kfd").exists()


def uses_gpu(config: dict) -> bool:
    """`device: cpu` keeps every job off GPUs; `auto` and `cuda` ask for them where a stage uses one."""
    return config.get("device", "auto") != "cpu"


def estimate_macs(model_cfg: dict) -> tuple[float, float]:
    """(MACs, params) of a timm ViT from its name and kwargs, for the model job's budget (the model
    does not exist yet): per block 12 d^2 per token for the Linear layers, 2 T d for attention."""
    name, kwargs = model_cfg.get("timm_name", ""), model_cfg.get("kwargs") or {}
    size = next((VIT_SIZES[w] for w in re.split(r"[_.]", name) if w in VIT_SIZES), VIT_SIZES["base"])
    patch = re.search(r"patch(\d+)", name)
    img = re.search(r"_(\d{2,4})(?:$|[_.])", name)
    width = kwargs.get("embed_dim", size[0])
    depth = kwargs.get("depth", size[1])
    patch = kwargs.get("patch_size", int(patch.group(1)) if patch else 16)
    img = kwargs.get("img_size", int(img.group(1)) if img else 224)
    img = img if isinstance(img, int) else img[0]
    tokens = (img // patch) ** 2 + 1
    ratio = kwargs.get("mlp_ratio", 4)
    per_block = (4 + 2 * ratio) * width * width
    return float(depth * (tokens * per_block + 2 * tokens * tokens * width)), float(depth * per_block)


def threads(stage: str, config: dict, images: int | None = None) -> int:
    """CPU cores of one job on a cluster: torch threads plus DataLoader workers, per process.
    `images` is the data set's estimated size (pqv.plan.manifest.estimate): small sets get few threads.
    The process gives torch all of them (pqv.stages.evaluate.process_threads): the workers decode the next
    batch while the model computes, and a ViT on a CPU waits on compute, so no core sits idle."""
    small = images is not None and images <= SMALL_IMAGES
    base = SMALL_THREADS if small else LARGE_THREADS
    workers = config["dataset"].get("workers", 0) if stage in LOADER_STAGES else 0
    if stage == "data":
        return base
    if stage in TIMING_STAGES:  # timed on evaluate.threads threads; no DataLoader
        return config["evaluate"]["threads"]
    compute = min(base, STAGE_THREADS.get(stage, base))
    if stage == "finetune" and gpus(stage, config):
        compute = min(compute, GPU_PROCESS_THREADS)  # the GPU computes; the CPU feeds it
    per_process = compute + workers
    return per_process * (config["finetune"]["nproc"] if stage == "finetune" else 1)


def gpus(stage: str, config: dict, importance: str = "", ratio: float = 0.0, fmt: str = "") -> int:
    """GPUs a job uses: finetune one per process (finetune.nproc), the model stage and the eager
    baseline's accuracy pass one, a prune job one only when its importance takes gradients.
    Latency is always timed on the CPU: no timing job asks for a GPU."""
    if not uses_gpu(config):
        return 0
    if stage == "finetune":
        return config["finetune"]["nproc"]
    if stage == "prune":
        return int(importance in GRADIENT_IMPORTANCES and float(ratio) > 0)
    if stage == "accuracy":
        return int(fmt == EAGER)
    return int(stage == "model")


def _per_image(work: Work, gpu: bool, cores: int, workers: int = 0) -> tuple[float, float]:
    """Wall seconds per image (train, infer) on `cores` cores (of which `workers` decode images in
    DataLoader processes, in parallel with the compute) or one GPU."""
    compute = max(1, cores - workers)
    decode = DECODE_S[work.data] / (workers or compute)
    if gpu:
        return max(3 * work.macs / GPU_TRAIN_MACS_PER_S, decode), max(work.macs / GPU_INFER_MACS_PER_S, decode)
    train = (3 * work.macs / CPU_TRAIN_MACS_PER_S + OVERHEAD_S["train"]) / compute
    infer = (work.macs / CPU_INFER_MACS_PER_S + OVERHEAD_S["infer"]) / compute
    if workers:  # the workers decode while the main process computes
        return max(train, decode), max(infer, decode)
    return train + decode, infer + decode


def runtime(stage: str, config: dict, work: Work, importance: str = "", cores: int | None = None, fmt: str = "") -> int:
    """Wall-time limit in minutes: MARGIN x (images x seconds per image) + MIN_RUNTIME."""
    cores = cores or threads(stage, config, work.train_images + work.eval_images)
    seconds = compute_seconds(stage, config, work, importance, cores, fmt)
    return (MIN_RUNTIME_TIMING if stage in TIMING_STAGES else MIN_RUNTIME) + math.ceil(MARGIN * seconds / 60)


def compute_seconds(stage: str, config: dict, work: Work, importance: str = "", cores: int = 1, fmt: str = "") -> float:
    """A job's budgeted work in wall seconds on `cores` cores (images x seconds per image), before
    the margin and the floor of its wall-time limit."""
    gpu = gpus(stage, config, importance, 1.0, fmt) > 0
    workers = config["dataset"].get("workers", 0) if stage in LOADER_STAGES else 0
    train_s, infer_s = _per_image(work, gpu, cores // (config["finetune"]["nproc"] if stage == "finetune" else 1), workers)
    if stage == "data":
        seconds = (work.train_images + work.eval_images) * SCAN_S / cores
    elif stage == "model":
        train = max((m.get("train", {}).get("epochs", 0) for m in config["models"] if m.get("weights") == "train"), default=0)
        seconds = train * work.train_images * train_s  # training only: the accuracy jobs score it
    elif stage == "prune":
        images = config["prune"]["calibration_batches"] * config["prune"]["batch_size"]
        seconds = images * train_s * (10 if importance == "hessian" else 1)  # hessian: per-sample backward
    elif stage == "finetune":
        # the nproc processes share the training split (the accuracy jobs score the result)
        seconds = config["finetune"]["epochs"] * work.train_images * train_s / config["finetune"]["nproc"]
    elif stage == "quantize":  # scripting or tracing a model takes time with its size (DeiT-B: ~1 min)
        seconds = config["quantize"]["calibration_images"] * infer_s + work.macs / 1e8
    elif stage == "export":  # lowering and checking DeiT-B took up to 5.5 min (docs/deit_b.md)
        seconds = config["export"]["check_images"] * infer_s * 4 + work.macs / 3e7
    elif stage == "accuracy":  # FP32 .ptl files run ~2x slower than eager (the XNNPACK rewrite on x86)
        seconds = work.eval_images * infer_s * (1 if fmt == EAGER else 2)
    elif stage == "latency":  # the timed calls, the memory figure's load and call, the cold paper-method call
        seconds = (config["evaluate"]["warmup"] + config["evaluate"]["runs"] + 2) * infer_s * cores + 30
    else:  # profile
        seconds = (config["profile"].get("warmup", 5) + config["profile"].get("runs", 20)) * infer_s * cores * 2
    return seconds


def mem_mb(stage: str, config: dict, work: Work, fmt: str = "") -> int:
    """Memory of one job: every process's imports, model copies, activations, file list and workers.
    `fmt` is the job's format, or for a quantize job the representation it writes."""
    model_mb = work.params * 4 / 2**20
    if stage in ("model", "finetune", "prune"):
        batch = {"finetune": config["finetune"]["batch_size"], "prune": config["prune"]["batch_size"]}.get(stage)
        if batch is None:  # the model job trains with its own batch
            batch = max((m.get("train", {}).get("batch_size", 64) for m in config["models"]), default=64)
        compute_mb = 5 * model_mb + ACTIVATION_BYTES_PER_MAC * work.macs * batch / 2**20
    else:
        compute_mb = WEIGHT_COPIES.get(fmt if stage == "quantize" else "", DEFAULT_COPIES) * model_mb
    files_mb = (work.train_images + work.eval_images) * ITEM_BYTES / 2**20
    if stage == "data":
        return math.ceil(BASE_MB + 2 * files_mb)
    workers = config["dataset"].get("workers", 0) if stage in LOADER_STAGES else 0
    # every process that reads images decodes one at a time at full size: the largest counts in each
    image_mb = decode_mb(work.largest_pixels) if work.train_images + work.eval_images else 0
    per_process = BASE_MB + compute_mb + files_mb + image_mb + workers * (WORKER_MB + files_mb + image_mb)
    if stage == "latency":  # the artifact is loaded twice in this process: for the memory figure, then for timing
        per_process += model_mb
    return math.ceil(per_process * (config["finetune"]["nproc"] if stage == "finetune" else 1))


def of(
    stage: str,
    config: dict,
    work: Work,
    importance: str = "",
    ratio: float = 0.0,
    planned_images: int | None = None,
    fmt: str = "",
    max_minutes: int | None = None,
) -> dict:
    """Every resource of one job (what a rule's `resources:` gives Snakemake), its wall time capped
    at the partition's limit (`max_minutes`; `fit` has checked that the job can live with it). Jobs
    that time latency add `slurm_extra: --exclusive`: on a cluster the node would otherwise be shared."""
    cores = threads(stage, config, planned_images)
    minutes = runtime(stage, config, work, importance, cores, fmt)
    out = {
        "mem_mb": mem_mb(stage, config, work, fmt),
        "runtime": min(minutes, max_minutes or minutes),
        "gpu": gpus(stage, config, importance, ratio, fmt),
    }
    if stage in TIMING_STAGES:
        out["slurm_extra"] = "--exclusive"
    return out


def fit(stage: str, minutes: int, partition: Partition, what: str, device: str) -> int:
    """How many successive jobs a job whose budget is `minutes` runs as on `partition`: 1 when it
    fits (or the limit is unknown), more for a finetune (each resumes where the one before
    stopped). A job that cannot fit is a PQVError naming the stage, the hours and the fix: a stage
    that cannot resume whose estimate (the budget without its margin) exceeds the limit, or a
    finetune longer than LONGEST_SPAN_H."""
    from .errors import PQVError

    limit = partition.max_minutes
    if not limit or minutes <= limit:
        return 1
    where = f"partition {partition.name}'s limit of {limit / 60:g} h"
    expected = (minutes - MIN_RUNTIME) / MARGIN
    fix = (
        f"run it where it is shorter (device: cuda on a partition with GPUs), on a partition with a longer limit, "
        f"or set the time yourself (--set-resources {stage}:runtime=MINUTES)"
    )
    if stage not in RESUMABLE:
        if expected > limit:
            raise PQVError(f"{what} needs about {expected / 60:,.1f} h on {device}, more than {where}, and cannot resume", fix)
        return 1
    if minutes > LONGEST_SPAN_H * 60:
        jobs = math.ceil(minutes / limit)
        raise PQVError(
            f"{what} asks for {minutes / 60:,.0f} h on {device} ({jobs} jobs at {where}), more than the "
            f"{LONGEST_SPAN_H // 24} days PQV will span",
            fix,
        )
    return math.ceil(minutes / limit)


# The plan a Snakemake invocation made (partition facts, data set size, data stamps), handed to the
# job processes a cluster starts: SLURM passes the submitting process's environment on (the plugin
# submits with --export=ALL), so they read it instead of asking sinfo and walking the data again.
PLAN_ENV = "PQV_PLAN"


def _config_key(config: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def share_plan(config: dict, plan: dict) -> None:
    """Put `plan` where this process's jobs find it (call again after changing it)."""
    import json
    import os

    os.environ[PLAN_ENV] = json.dumps({"config": _config_key(config), "plan": plan})


def shared_plan(config: dict) -> dict | None:
    """The plan the invocation that submitted this job made for the same config, or None."""
    import json
    import os

    try:
        shared = json.loads(os.environ.get(PLAN_ENV, ""))
    except ValueError:
        return None
    return shared.get("plan") if isinstance(shared, dict) and shared.get("config") == _config_key(config) else None
