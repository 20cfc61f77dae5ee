"""What one Snakemake invocation plans with, and what each job asks for in it.

workflow/rules/common.smk reads the invocation's facts through pqv.plan.snakemake_api (Facts:
cores, --jobs, remote, --resources, --default-resources, --set-resources), and calls these:
- check_machine, check_results_writable: a local run asking for more than the machine has, or a
  results folder it cannot write, stops before any job, in one line;
- shared_plan: what the plan needs from the cluster and the file system, found once, in the
  invocation that plans (the partition's limit and GPUs from one `sinfo` call, the data set's size),
  and read back by the job processes a cluster starts;
- Plan (plan_of): the shared plan and the facts the rules' threads and resources follow;
- threads, job_work, job_resources, job_gpus, rule_resources: a rule's `threads:` and `resources:`
  (the per-job numbers are pqv.plan.resources');
- finetune_jobs: how many successive jobs the longest finetune spans on the partition's time limit.

Plain functions of the config, the facts, a job's wildcards and input paths: no Snakemake object.
Torch-free.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from dataclasses import dataclass

from . import manifest, sweep
from . import resources as RES
from .errors import PQVError
from .registry import GRADIENT_IMPORTANCES
from .snakemake_api import Facts


def check_machine(config: dict, facts: Facts, machine_cores: int | None = None, machine_mb: int | None = None) -> None:
    """Asking a local run for more cores, threads or memory than the machine has is an error (a
    cluster run's are the cluster's to judge)."""
    if facts.on_cluster:
        return
    cores, machine = facts.cores, machine_cores or os.cpu_count()
    if cores is not None and cores > machine:
        raise PQVError(f"--cores {cores} exceeds the {machine} cores of this machine", f"--cores {machine} or fewer")
    limit = cores if cores is not None else machine
    if config["evaluate"]["threads"] > limit:
        raise PQVError(
            f"evaluate.threads {config['evaluate']['threads']} exceeds the {limit} cores this run may use",
            f"evaluate.threads <= {limit}, or more --cores",
        )
    total_mb = machine_mb or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    if isinstance(facts.mem_mb, int) and facts.mem_mb > total_mb:
        raise PQVError(f"--resources mem_mb={facts.mem_mb} exceeds this machine's {total_mb} MB", f"mem_mb <= {total_mb}")


def check_results_writable(results: str) -> None:
    """A results folder this process cannot write would fail the first job with a traceback: try
    to create a file in it (or, before it exists, in the nearest folder above it), and remove it."""
    import tempfile

    folder = os.path.abspath(results)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pqv-write-check-"):
            pass
    except OSError as e:
        raise PQVError(
            f"the results folder {results} cannot be written ({e.strerror} in {folder})",
            "set results: to a folder you can write, or fix its permissions",
        ) from None


def shared_plan(config: dict, facts: Facts, train_data: str, eval_data: str) -> dict:
    """What the plan needs from the cluster and the file system, found once, in the invocation that
    plans: the partition jobs go to (--default-resources slurm_partition=..., else the default one),
    from one `sinfo` call (its GPUs, for `device: auto`; its time limit, which caps every job), and
    the data set's size (the manifests `train_data` and `eval_data` once made, before that
    pqv.plan.manifest.estimate). The job processes a cluster starts read it back (RES.shared_plan:
    SLURM passes the submitting environment on), so they plan the same threads without asking again.
    A dict, shared as JSON; the data and model rules add their stamps to it ("stamps")."""
    if facts.remote and (shared := RES.shared_plan(config)) is not None:
        return shared
    plan = {"device": config["device"], "partition": None, "max_minutes": None, "stamps": {}}
    if facts.on_cluster:
        partition = RES.slurm_partition(facts.default_resources.get("slurm_partition"))
        plan.update(partition=partition.name, max_minutes=partition.max_minutes)
        if config["device"] == "auto" and partition.has_gpus is False:
            print(f"pqv: partition {partition.name or '(default)'} has no GPUs (sinfo): device auto asks for none", file=sys.stderr)
            plan["device"] = "cpu"
    elif config["device"] == "auto" and not RES.machine_has_gpus():
        plan["device"] = "cpu"  # on one machine without a GPU no job asks for one
    images = manifest.estimate(config["dataset"])
    for split, path in (("train", train_data), ("eval", eval_data)):
        try:
            images[split] = manifest.read(path)["splits"][split]["images"]
        except (PQVError, KeyError):
            pass  # not made yet (or damaged: the data job makes it again)
    plan["images"] = images
    RES.share_plan(config, plan)
    return plan


@dataclass(frozen=True)
class Plan:
    """What the rules' threads and resources follow in one invocation."""

    config: dict  # the config the jobs' resources are computed with: `device: auto` is `cpu` where no GPU is
    on_cluster: bool  # Facts.on_cluster
    cores: int  # every core of a local run (--cores; 1 where not given)
    images: dict  # the data set's size, {"train": n, "eval": n} (shared_plan): threads follow it
    partition: str | None = None  # the partition jobs go to (None: the default one, or none known)
    max_minutes: int | None = None  # its time limit (None: none known)
    slurm_extra: str = ""  # the site's own slurm_extra (a default resource)

    @property
    def planned_images(self) -> int:
        return self.images["train"] + self.images["eval"]


def plan_of(config: dict, facts: Facts, shared: dict) -> Plan:
    """The Plan of a checked config, the invocation's facts and its shared plan (shared_plan)."""
    return Plan(
        config={**config, "device": shared["device"]},
        on_cluster=facts.on_cluster,
        cores=facts.cores or 1,
        images=shared["images"],
        partition=shared["partition"],
        max_minutes=shared["max_minutes"],
        slurm_extra=facts.default_resources.get("slurm_extra") or "",
    )


def budgeted(stage: str) -> str:
    """The stage pqv.plan.resources budgets a rule as (both data rules as `data`)."""
    return "data" if stage in ("data_train", "data_eval") else stage


def threads_follow_wildcards(plan: Plan, stage: str) -> bool:
    """Whether a rule's threads differ between its jobs (threads() then needs each job's wildcards)."""
    return not plan.on_cluster and stage in ("prune", "model", "finetune", "accuracy")


def threads(plan: Plan, stage: str, wildcards: dict | None = None) -> int:
    """A job's threads. One machine (`snakemake --cores N`): heavy and timing stages take every core
    Snakemake has, the rest one, and so does a heavy stage's short job (RES.SHORT_JOB_S). On a
    cluster they follow the data set's estimated size (the same in the process that submits a job
    and in the ones that run it): pqv.plan.resources.threads."""
    if plan.on_cluster:
        return RES.threads(stage, plan.config, plan.planned_images)
    wc = wildcards or {}
    if stage in RES.TIMING_STAGES:
        return plan.cores
    if stage == "prune":  # gradient importances compute (calibration batches forward and backward)
        heavy = wc["importance"] in GRADIENT_IMPORTANCES and float(wc["ratio"]) > 0
    elif stage == "model":  # training a base model computes; reading a weights file is one core's work
        heavy = _models(plan)[wc["model"]]["weights"] == "train"
    else:
        heavy = stage in RES.ALL_CORES_LOCALLY
    return plan.cores if heavy and not _short(plan, stage, wc) else 1


def _short(plan: Plan, stage: str, wildcards: dict) -> bool:
    """Whether a job's planned work (planned_work) is under RES.SHORT_JOB_S on one core."""
    rule = stage
    if stage == "data":  # each data job reads its own split; the larger stands for both
        rule = "data_eval" if plan.images["eval"] > plan.images["train"] else "data_train"
    work = planned_work(plan, rule, wildcards)
    fmt = wildcards.get("format", "")
    return RES.compute_seconds(stage, plan.config, work, wildcards.get("importance", ""), 1, fmt) < RES.SHORT_JOB_S


def planned_work(plan: Plan, rule: str, wildcards: dict) -> RES.Work:
    """A job's work before any file exists: the data set's planned size (the split it reads) and
    its model's size estimated from the config (unpruned: the larger)."""
    macs, params = RES.estimate_macs(_models(plan)[wildcards["model"]]) if "model" in wildcards else (0, 0)
    images = (0, plan.images["eval"]) if rule in ("accuracy", "data_eval") else (plan.images["train"], 0)
    return RES.Work(*images, macs, params, plan.config["dataset"]["name"])


def _models(plan: Plan) -> dict:
    return {m["id"]: m for m in plan.config["models"]}


@functools.lru_cache(maxsize=4)
def _manifest_images(path: str, mtime_ns: int) -> tuple[int, int, float]:
    data = manifest.read(path)
    splits = data["splits"]
    return (*(splits[s]["images"] if s in splits else 0 for s in ("train", "eval")), data.get("largest_pixels", 0))


def manifest_images(path: str) -> tuple[int, int, float]:
    """(train images, eval images, largest image's pixels) of a manifest, read once while it stays."""
    return _manifest_images(path, os.stat(path).st_mtime_ns)


def job_work(plan: Plan, stage: str, wildcards: dict, data: str | None = None, sidecar: str | None = None) -> RES.Work:
    """What a job's budget follows: the images it reads (the manifest `data`, None where it reads
    none) and its model's size (its input's `sidecar`). Before those files exist (a dry run of a
    new sweep) the data set's estimate and the config's model stand in; Snakemake computes the
    resources again when the job is ready to start, from the real files."""
    name = plan.config["dataset"]["name"]
    model = RES.estimate_macs(_models(plan)[wildcards["model"]]) if "model" in wildcards else (0, 0)
    train, evaluation = plan.images["train"], plan.images["eval"]
    if stage in ("data_train", "data_eval"):  # each data job reads its own split
        train, evaluation = (train, 0) if stage == "data_train" else (0, evaluation)
        return RES.Work(train, evaluation, 0, 0, name)
    largest = 0
    if not data:
        train = evaluation = 0  # this job reads no images
    elif os.path.exists(data):
        train, evaluation, largest = manifest_images(data)
    try:
        with open(sidecar) as f:  # the model job has none: its model is estimated from the config
            facts = json.load(f)
        model = (float(facts.get("macs") or model[0]), float(facts.get("params") or model[1]))
    except (TypeError, AttributeError, OSError, ValueError):
        pass  # none (TypeError), not made yet (or damaged: the job itself says so)
    return RES.Work(train, evaluation, *model, name, largest)


def job_resources(plan: Plan, stage: str, wildcards: dict, data: str | None = None, sidecar: str | None = None) -> dict:
    """Every resource of one job (pqv.plan.resources.of), from its input files (job_work)."""
    wc = wildcards
    return RES.of(
        budgeted(stage),
        plan.config,
        job_work(plan, stage, wc, data, sidecar),
        wc.get("importance", ""),
        wc.get("ratio", 0),
        plan.planned_images,
        wc.get("format", wc.get("ir", "")),
        plan.max_minutes,
    )


def _names(plan: Plan, stage: str) -> dict:
    return RES.of(budgeted(stage), plan.config, RES.Work(0, 0, 0, 0), planned_images=plan.planned_images)


def job_gpus(plan: Plan, stage: str, wildcards: dict) -> int:
    """A job's GPUs: a function of its wildcards alone."""
    wc = wildcards
    return RES.gpus(budgeted(stage), plan.config, wc.get("importance", ""), wc.get("ratio", 0), wc.get("format", ""))


def rule_resources(plan: Plan, stage: str) -> dict:
    """The resources the same for every job of a rule: a timing rule's slurm_extra, added to the
    site's own (a rule's resource replaces the site's default one)."""
    extra = _names(plan, stage).get("slurm_extra")
    return {"slurm_extra": " ".join(filter(None, [plan.slurm_extra, extra]))} if extra is not None else {}


def per_job_resources(plan: Plan, stage: str) -> list[str]:
    """The resources computed from each job's input files (job_resources): memory and wall time."""
    fixed = rule_resources(plan, stage)
    return [name for name in _names(plan, stage) if name != "gpu" and name not in fixed]


def finetune_jobs(plan: Plan, facts: Facts) -> int:
    """How many successive jobs the longest finetune spans on the partition's time limit (1 where
    it fits, or off a cluster); stops the run before any job, in one line, when a job cannot fit
    (RES.fit), or when --set-resources asks for more time than the partition gives. Budgets are
    planned ones: the data set's size and each model's unpruned size."""
    if not plan.on_cluster or facts.remote or not plan.max_minutes:
        return 1
    limit = plan.max_minutes
    partition = RES.Partition(plan.partition, None, limit)
    spans = [1]
    for rule, wc in sweep.jobs(plan.config):
        if rule in ("summary", "keep_dense"):  # run by Snakemake itself
            continue
        stage = budgeted(rule)
        work = planned_work(plan, rule, wc)
        minutes = RES.runtime(stage, plan.config, work, wc.get("importance", ""), None, wc.get("format", ""))
        user = facts.set_resources.get(rule, {}).get("runtime")
        if isinstance(user, str) and not user.strip().isdigit():
            continue  # an expression Snakemake computes for each job: the user's own time, not checked here
        if user is not None:  # --set-resources RULE:runtime=M: the user's own time
            if (user := int(user)) > limit:
                raise PQVError(
                    f"--set-resources {rule}:runtime={user} exceeds partition {partition.name}'s limit of {limit} minutes",
                    f"runtime <= {limit}, or another partition",
                )
            spans.append(math.ceil(minutes / user) if rule in RES.RESUMABLE else 1)
            continue
        what = f"{rule} of {wc['model']}" if "model" in wc else rule
        spans.append(RES.fit(stage, minutes, partition, what, "GPUs" if RES.gpus(stage, plan.config) else "CPUs"))
    return max(spans)
