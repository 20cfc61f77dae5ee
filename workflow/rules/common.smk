# Paths, sweep expansion and shared parameters. Rules are wiring; logic lives in pqv/: the job graph
# (pqv/plan/jobs.py), what a run plans with and each job's threads and resources (pqv/plan/run_plan.py,
# pqv/plan/resources.py), and what is read from Snakemake itself (pqv/plan/snakemake_api.py).
import json
import os
import shlex
import sys

sys.path.insert(0, workflow.basedir)  # torch-free modules: the registry, the sweep, resources
from pqv.plan import config as pqv_config
from pqv.plan import jobs as JOBS
from pqv.plan import manifest as pqv_manifest
from pqv.plan import registry as T
from pqv.plan import reruns as RERUNS
from pqv.plan import resources as RES
from pqv.plan import run_plan as RUN
from pqv.plan import search as pqv_search
from pqv.plan import snakemake_api
from pqv.plan import sweep as SWEEP
from pqv.plan import warm as WARM

# Rules call the interpreter Snakemake runs under, so an unactivated venv still works, and its
# bin/ (ExecuTorch's flatc lives there) is on PATH for every job.
PQV = f'"{sys.executable}" -m pqv --log-usage'  # each job's log ends with what it used (pqv.common.usage)
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

R = config["results"]

# The file each rule makes, from the job graph (pqv/plan/jobs.py), under the results folder.
BRANCH = f"{R}/{JOBS.BRANCH}"
# The data stage's outputs, one per split: a job depends on the split it reads, so a change to the
# evaluation split reruns the accuracy jobs alone (only they read it).
TRAIN_DATA = JOBS.made(R, "data_train")
EVAL_DATA = JOBS.made(R, "data_eval")
MODEL = JOBS.made(R, "model")
PRUNED = JOBS.made(R, "prune")
FINETUNED = JOBS.made(R, "finetune")
QUANTIZED = JOBS.made(R, "quantize")
EXPORTED = JOBS.made(R, "export")
EAGER = T.EAGER  # the "format" of a branch's eager FP32 baseline, measured like an artifact
ACCURACY = JOBS.made(R, "accuracy")
LATENCY = JOBS.made(R, "latency")
PROFILE = JOBS.made(R, "profile").removesuffix(".csv")  # its table (.csv) and chart (.png)
SUMMARY = JOBS.made(R, "summary")
STAGE_COSTS = JOBS.made(R, "stage_costs")
BENCHMARKS = f"{R}/{JOBS.BENCHMARKS}"


def job_log(rule):
    """A rule's `log:`, one per job, beside the run's results (pqv.plan.jobs)."""
    return JOBS.log(R, rule)


def job_benchmark(rule):
    """A rule's `benchmark:`: Snakemake's benchmark file of each job (wall time, max RSS, CPU); the
    rules and job_files() (the stage_costs inputs) both take them from pqv.plan.jobs."""
    return JOBS.benchmark(R, rule)


# Where gradients and eager accuracy passes run (pqv.common.device); how a job runs, not what it makes, so
# it goes into the command line, not into params (changing it reruns nothing).
DEVICE = f"--device {config['device']}"
FIGURE_NAMES = list(T.FIGURES)  # the figures pqv.stages.plot draws, by name
FIGURES = expand(f"{R}/figures/{{name}}.png", name=FIGURE_NAMES)


wildcard_constraints:
    model="[^/]+",
    importance="[a-z0-9]+",
    ratio="[0-9.]+",
    precision="|".join(T.PRECISIONS),
    ir="|".join(T.IRS),
    engine="|".join([*T.ENGINES, T.NO_ENGINE]),
    format="|".join([*T.FORMATS, T.EAGER]),
    merge="(-tome[0-9]+)?",  # token merging (pqv.plan.sweep.merge_name): empty without it


# What this invocation of Snakemake was asked for (cores, --jobs, --resources, --default-resources,
# --set-resources, a job process or not), read from Snakemake in one place (pqv/plan/snakemake_api.py).
SNAKEMAKE = snakemake_api.facts(workflow)

# The config itself was checked by the Snakefile (pqv.plan.config); this checks it against the machine.
with pqv_config.reported():
    RUN.check_machine(config, SNAKEMAKE)
    RUN.check_results_writable(R)


onstart:
    # A run stops here, before its first job, when the data set's folders are missing (a dry run
    # does not: it may plan a sweep whose data is elsewhere).
    with pqv_config.reported():
        pqv_manifest.check_folders(config["dataset"])
    # Local jobs fork from one process that imported torch and timm (pqv/common/warmstart.py).
    WARM.prepare(config["warm_start"], SNAKEMAKE.on_cluster, f"{R}/logs/warm_start.log")


onsuccess:
    WARM.stop()


onerror:
    WARM.stop()


MODELS = {m["id"]: m for m in config["models"]}
# `workers` says how the data is loaded, not what a job makes: it goes on the command line, not
# into params (changing it reruns nothing).
WORKERS = f"--workers {config['dataset']['workers']}"


def settings(stage):
    """A rule's `settings` param: the options that carry exactly the config keys its job reads
    (pqv/plan/reruns.py, from the declaration beside each key in pqv/plan/config.py). They go on the command
    line too, so what a job is told and what reruns it are one text."""
    return lambda wc: RERUNS.options(stage, config, wc)


def version(stage):
    """A rule's `version` param: bumped with a change to the stage's code that changes what it makes."""
    return RERUNS.VERSIONS[stage]


# Aggregates and pass-throughs run in the Snakemake process itself, not as cluster jobs.
localrules:
    all,
    summary,
    plot,
    stage_costs,
    keep_dense,
    search_round,


# The sweep (pqv/plan/sweep.py): which branches, artifacts, measurements and profiles the config makes.
MEASURED = SWEEP.measured(config)
PROFILED = SWEEP.profiled(config)


def metrics_files():
    return [path.format(**t) for t in MEASURED for path in (ACCURACY, LATENCY)]


def reads_data(stage, wc):
    """Whether a prune or quantize job reads images: those that read calibration settings
    (pqv.plan.reruns' conditions: gradient importances, calibrated precisions) do; the others take no
    manifest, so a changed data set does not rerun them."""
    condition = {"prune": "gradient", "quantize": "calibrated"}[stage]
    return RERUNS.CONDITIONS[condition][1](config, wc)


def train_data_if(stage):
    return lambda wc: TRAIN_DATA if reads_data(stage, wc) else []


def data_option(wc, input):
    return f"--data {shlex.quote(input.data)}" if input.get("data") else ""


def quantized_for(wc):
    """The quantize output an export needs: its format decides the representation."""
    return QUANTIZED.format(
        ir=T.ir_of(wc.format), **{k: wc[k] for k in ("model", "importance", "ratio", "precision", "engine", "merge")}
    )


def job_files(jobs):
    """{benchmark file: log} of (rule, wildcards) jobs: `pqv costs` sums the benchmark files and
    takes each job's CPU seconds from the usage line its log ends with (pqv.common.usage)."""
    return JOBS.costs_files(R, jobs)


def made_file(rule, wc):
    """The file a job makes (its rule's first output) for its wildcards."""
    return JOBS.made(R, rule, wc)


def sweep_files(wildcards=None):
    """Every file a job of the sweep makes, as targets of `all`. Snakemake makes a missing file
    only when a job it plans needs it: a run stopped inside a job that was being made again
    (`--forcerun finetune`, a changed setting) leaves that job's file missing while the files made
    from it are still there, and without being named here it would stay missing (the branch's rows
    naming a file that is gone) until some later change needed it."""
    return [made_file(rule, wc) for rule, wc in SWEEP.jobs(config)]


def benchmark_files():
    """The benchmark file and log of every job this config schedules (the rules' `benchmark:` and
    `log:` paths)."""
    return job_files(SWEEP.jobs(config))


def profile_targets():
    return [PROFILE.format(**t) + ext for t in PROFILED for ext in (".csv", ".png")]


# ---- Resources: what each job asks for (pqv/plan/run_plan.py, pqv/plan/resources.py) ---------------
# One machine (`snakemake --cores N`): heavy and timing stages take every core Snakemake has, the
# rest one. On a cluster threads follow the data set's estimated size (the same in the process that
# submits a job and in the ones that run it). Memory and wall time follow the job's images (from
# the manifest) and its model's size (from its input's sidecar), GPUs the config, and SLURM's
# --exclusive marks timing jobs, so profiles carry only site settings (partition, account).

# The partition, the data set's size and the stamps, found once by the invocation that plans and
# shared with the job processes a cluster starts (RUN.shared_plan); data.smk and model.smk add stamps.
SHARED_PLAN = RUN.shared_plan(config, SNAKEMAKE, TRAIN_DATA, EVAL_DATA)
PLAN = RUN.plan_of(config, SNAKEMAKE, SHARED_PLAN)


def stage_threads(stage):
    """A rule's `threads:` (RUN.threads): a number, or a function of the job's wildcards where they differ."""
    if RUN.threads_follow_wildcards(PLAN, stage):
        return lambda wildcards: RUN.threads(PLAN, stage, dict(wildcards.items()))
    return RUN.threads(PLAN, stage)


def stage_resources(stage):
    """A rule's `resources:`: memory and wall time are functions of the job's input files (computed
    again when the job is about to start, once its manifest and input model exist), GPUs of its
    wildcards, a timing rule's slurm_extra the same for every job."""

    def per_job(name):
        return lambda wildcards, input: RUN.job_resources(
            PLAN, stage, dict(wildcards.items()), input.get("data"), input.get("sidecar")
        )[name]

    out = {name: per_job(name) for name in RUN.per_job_resources(PLAN, stage)}
    out["gpu"] = lambda wildcards: RUN.job_gpus(PLAN, stage, dict(wildcards.items()))
    return {**out, **RUN.rule_resources(PLAN, stage)}
