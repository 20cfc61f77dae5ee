"""What each job asks a cluster for (threads, memory, wall time, GPUs), computed from the config.

Per-rule resources live in the rules, not in a profile: on the command line Snakemake *replaces* a
profile's --default-resources, --set-resources and --set-threads with the ones given, so resources
kept in profiles/slurm vanished as soon as a user named a partition or overrode one value. Computed
here, a site profile needs only partition and account, and `--set-resources finetune:runtime=600`
changes that one value and keeps the rest.

The numbers are a budget, not a measurement: the demo scale (`dataset.name: digits`, the bundled
images in memory, a model like the demo's) and the ImageFolder scale (files read by
`dataset.workers` loader processes, a model the size of DeiT-B at 224 px) each get per-stage
threads, memory and per-image costs; wall time follows the image counts and epochs of the config.
Torch-free: the Snakefile imports it on every run.
"""
from __future__ import annotations

import math

# Importances whose scores need backward passes (pqv.prune.IMPORTANCES with needs != "weights";
# tests/test_resources.py keeps the two equal): only those prune jobs can use a GPU.
GRADIENT_IMPORTANCES = ("taylor", "hessian")

# Stages that time latency: on SLURM they ask for the node to themselves (`--exclusive`), and on one
# machine they reserve every core Snakemake has, so nothing else runs while they are timed.
TIMING_STAGES = ("evaluate", "evaluate_eager", "profile")
# Stages that take every core of a local run (`--cores N`); the rest take one.
ALL_CORES_LOCALLY = ("model", "finetune") + TIMING_STAGES

# Image counts when the config gives no max_train/max_eval: the digits split (pqv.data, 80/20 of
# 1,797) and, for ImageFolder data, ImageNet-1k (an upper bound for a budget).
IMAGES = {"digits": {"train": 1438, "eval": 359}, "imagefolder": {"train": 1_281_167, "eval": 50_000}}

# Per data scale: torch threads per process, MB per process (torch + timm + ExecuTorch import to
# ~0.85 GB before any model or data), MB per DataLoader worker, and core-seconds per image:
# training (forward + backward), inference. Digits: the demo ViT trains 30 epochs of 1,438 images
# in ~2 min on 2 cores (~6 core-ms/image, budgeted 10). ImageFolder: DeiT-B, ~1.4 s/image on
# 2 cores for training (~3 core-s) and ~0.2 s/image eager at 2 threads (0.4 core-s); a GPU
# trains it at ~4 ms/image (docs/paper.md: 60 ImageNet epochs in 5-10 h on 4 GPUs, doubled).
SCALE = {
    "digits": {"threads": 1, "mem_mb": 2000, "worker_mb": 0, "train_s": 0.01, "infer_s": 0.002,
               "gpu_train_s": 0.001},
    "imagefolder": {"threads": 8, "mem_mb": 16000, "worker_mb": 1000, "train_s": 3.0, "infer_s": 0.4,
                    "gpu_train_s": 0.004},
}
STAGE_THREADS = {"quantize": 2, "export": 2}  # at most this many threads, whatever the scale
GPU_PROCESS_THREADS = 4  # torch threads of a finetune process that drives a GPU
MIN_RUNTIME = 10  # minutes: start-up, imports, scheduling slack
MARGIN = 2  # wall time asked = 2x the budget, so a slower node does not kill a job near its end


def uses_gpu(config: dict) -> bool:
    """`device: cpu` keeps every job off GPUs; `auto` and `cuda` ask for them where a stage uses one."""
    return config.get("device", "auto") != "cpu"


def _scale(config: dict) -> dict:
    return SCALE[config["dataset"]["name"]]


def _images(config: dict, split: str) -> int:
    data = config["dataset"]
    limit = data.get(f"max_{split}")
    full = IMAGES[data["name"]][split]
    return min(limit, full) if limit else full


def threads(stage: str, config: dict) -> int:
    """CPU cores of one job on a cluster: torch threads plus DataLoader workers, per process."""
    s = _scale(config)
    workers = config["dataset"].get("workers", 0)
    if stage in TIMING_STAGES:
        return max(config["evaluate"]["threads"], s["threads"]) + (workers if stage != "profile" else 0)
    compute = min(s["threads"], STAGE_THREADS.get(stage, s["threads"]))
    if stage == "finetune" and gpus(stage, config):
        compute = min(compute, GPU_PROCESS_THREADS)  # the GPU computes; the CPU feeds it
    per_process = compute + workers
    return per_process * (config["finetune"]["nproc"] if stage == "finetune" else 1)


def gpus(stage: str, config: dict, importance: str = "", ratio: float = 0.0) -> int:
    """GPUs a job uses: finetune one per process (finetune.nproc), the model stage and the eager
    baseline's accuracy pass one, a prune job one only when its importance takes gradients."""
    if not uses_gpu(config):
        return 0
    if stage == "finetune":
        return config["finetune"]["nproc"]
    if stage == "prune":
        return int(importance in GRADIENT_IMPORTANCES and float(ratio) > 0)
    return int(stage in ("model", "evaluate_eager"))


def mem_mb(stage: str, config: dict) -> int:
    s = _scale(config)
    per_process = s["mem_mb"] + s["worker_mb"] * config["dataset"].get("workers", 0)
    return per_process * (config["finetune"]["nproc"] if stage == "finetune" else 1)


def runtime(stage: str, config: dict, importance: str = "") -> int:
    """Wall-time limit in minutes: MARGIN x (images x seconds per image / cores) + MIN_RUNTIME."""
    s = _scale(config)
    cores = threads(stage, config)
    gpu = gpus(stage, config, importance, 1.0) > 0
    train_s = s["gpu_train_s"] if gpu else s["train_s"] / cores
    infer_s = s["gpu_train_s"] / 3 if gpu else s["infer_s"] / cores
    n_train, n_eval = _images(config, "train"), _images(config, "eval")
    if stage == "model":
        train = max((m.get("train", {}).get("epochs", 0) for m in config["models"] if m.get("weights") == "train"), default=0)
        seconds = train * n_train * train_s + (train + 1) * n_eval * infer_s
    elif stage == "prune":
        images = config["prune"]["calibration_batches"] * config["prune"]["batch_size"]
        seconds = images * train_s * (10 if importance == "hessian" else 1)  # hessian: per-sample backward
    elif stage == "finetune":
        # on GPUs the nproc processes share the images; on CPUs `cores` already counts every process
        per_image = train_s / config["finetune"]["nproc"] if gpu else train_s
        seconds = config["finetune"]["epochs"] * (n_train * per_image + n_eval * infer_s)
    elif stage == "quantize":
        seconds = config["quantize"]["calibration_images"] * infer_s
    elif stage == "export":
        seconds = config["export"]["check_images"] * infer_s * 4 + (600 if config["dataset"]["name"] == "imagefolder" else 0)
    elif stage in ("evaluate", "evaluate_eager"):
        seconds = n_eval * infer_s + (config["evaluate"]["warmup"] + config["evaluate"]["runs"]) * s["infer_s"]
    else:  # profile
        seconds = (config["profile"].get("warmup", 5) + config["profile"].get("runs", 20)) * s["infer_s"] * 2
    return MIN_RUNTIME + math.ceil(MARGIN * seconds / 60)


def of(stage: str, config: dict, importance: str = "", ratio: float = 0.0) -> dict:
    """Every resource of one job (what a rule's `resources:` gives Snakemake). Jobs that time
    latency add `slurm_extra: --exclusive`: on a cluster the node would otherwise be shared."""
    out = {"mem_mb": mem_mb(stage, config), "runtime": runtime(stage, config, importance),
           "gpu": gpus(stage, config, importance, ratio)}
    if stage in TIMING_STAGES:
        out["slurm_extra"] = "--exclusive"
    return out
