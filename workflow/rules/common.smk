# Paths, sweep expansion and shared parameters. Rules are wiring; logic lives in pqv/.
import functools
import json
import math
import os
import shlex
import sys

sys.path.insert(0, workflow.basedir)  # torch-free modules: the registry, the sweep, resources
from pqv.plan import config as pqv_config
from pqv.plan import manifest as pqv_manifest
from pqv.plan import registry as T
from pqv.plan import reruns as RERUNS
from pqv.plan import resources as RES
from pqv.plan import search as pqv_search
from pqv.plan import sweep as SWEEP
from pqv.plan.errors import PQVError

# Rules call the interpreter Snakemake runs under, so an unactivated venv still works, and its
# bin/ (ExecuTorch's flatc lives there) is on PATH for every job.
PQV = f'"{sys.executable}" -m pqv --log-usage'  # each job's log ends with what it used (pqv.common.usage)
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

R = config["results"]

BRANCH = f"{R}/{{model}}/{{importance}}_{{ratio}}"
# The data stage's outputs, one per split: a job depends on the split it reads, so a change to the
# evaluation split reruns the accuracy jobs alone (only they read it).
TRAIN_DATA = f"{R}/data/train.json"
EVAL_DATA = f"{R}/data/eval.json"
MODEL = f"{R}/{{model}}/model.safetensors"
PRUNED = f"{BRANCH}/pruned.safetensors"
FINETUNED = f"{BRANCH}/finetuned.safetensors"
QUANTIZED = f"{BRANCH}/quantized/{{precision}}-{{engine}}{{merge}}.{{ir}}"  # merge: token merging, "" or -tome{r}
EXPORTED = f"{BRANCH}/export/{{precision}}-{{engine}}{{merge}}.{{format}}"
EAGER = T.EAGER  # the "format" of a branch's eager FP32 baseline, measured like an artifact
ACCURACY = f"{BRANCH}/eval/{{precision}}-{{engine}}{{merge}}.{{format}}.accuracy.json"
LATENCY = f"{BRANCH}/eval/{{precision}}-{{engine}}{{merge}}.{{format}}.latency.json"
PROFILE = f"{R}/profile/{{model}}/{{importance}}_{{ratio}}/{{precision}}-{{engine}}{{merge}}.{{format}}"
SUMMARY = f"{R}/summary.csv"
STAGE_COSTS = f"{R}/stage_costs.csv"
# Snakemake's benchmark file of each job (wall time, max RSS, CPU): bench(rule, job), where job is the
# rule's pattern below; the rules and job_files() (the stage_costs inputs) both use them.
BENCHMARKS = f"{R}/benchmarks"
LOGS = f"{R}/logs"  # one log per job, beside the run's results: two runs with their own results never share one
JOB_BRANCH = "{model}/{importance}_{ratio}"
JOB_PROGRAM = f"{JOB_BRANCH}/{{precision}}-{{engine}}{{merge}}.{{ir}}"
JOB_ARTIFACT = f"{JOB_BRANCH}/{{precision}}-{{engine}}{{merge}}.{{format}}"
JOB_PATTERN = {
    "data_train": None,
    "data_eval": None,
    "summary": None,
    "model": "{model}",
    "prune": JOB_BRANCH,
    "finetune": JOB_BRANCH,
    "keep_dense": JOB_BRANCH,
    "quantize": JOB_PROGRAM,
    "export": JOB_ARTIFACT,
    "accuracy": JOB_ARTIFACT,
    "latency": JOB_ARTIFACT,
    "profile": JOB_ARTIFACT,
}


def bench(rule, job=None):
    return f"{BENCHMARKS}/{rule}/{job}.tsv" if job else f"{BENCHMARKS}/{rule}.tsv"


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


# The config itself was checked by the Snakefile (pqv.plan.config); this checks it against the machine.
def _check_machine():
    """Asking a local run for more cores, threads or memory than the machine has is an error."""
    # The executor is unknown while the Snakefile is read (workflow.local_exec is always True here):
    # a cluster run is one with --jobs and no --cores, or a job process it started (remote mode).
    if workflow.remote_exec or workflow.resource_settings.nodes is not None:
        return

    def value(name):
        resource = workflow.global_resources.get(name)
        return getattr(resource, "value", resource)

    cores, machine = value("_cores"), os.cpu_count()
    if cores is not None and cores > machine:
        raise PQVError(f"--cores {cores} exceeds the {machine} cores of this machine", f"--cores {machine} or fewer")
    limit = cores if cores is not None else machine
    if config["evaluate"]["threads"] > limit:
        raise PQVError(
            f"evaluate.threads {config['evaluate']['threads']} exceeds the {limit} cores this run may use",
            f"evaluate.threads <= {limit}, or more --cores",
        )
    mem_mb = value("mem_mb")
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    if isinstance(mem_mb, int) and mem_mb > total_mb:
        raise PQVError(f"--resources mem_mb={mem_mb} exceeds this machine's {total_mb} MB", f"mem_mb <= {total_mb}")


def _check_results_writable():
    """A results folder this process cannot write would fail the first job with a traceback: try
    to create a file in it (or, before it exists, in the nearest folder above it), and remove it."""
    import tempfile

    folder = os.path.abspath(R)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pqv-write-check-"):
            pass
    except OSError as e:
        raise PQVError(
            f"the results folder {R} cannot be written ({e.strerror} in {folder})",
            "set results: to a folder you can write, or fix its permissions",
        )


with pqv_config.reported():
    _check_machine()
    _check_results_writable()


onstart:
    # A run stops here, before its first job, when the data set's folders are missing (a dry run
    # does not: it may plan a sweep whose data is elsewhere).
    with pqv_config.reported():
        pqv_manifest.check_folders(config["dataset"])


# Heavy and timing stages take every core of a local run; on a cluster see stage_threads() below.
ALL_CORES = getattr(workflow.global_resources.get("_cores"), "value", None) or 1

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
    return {
        bench(rule, JOB_PATTERN[rule].format(**wc) if JOB_PATTERN[rule] else None): getattr(rules, rule).log[0].format(**wc)
        for rule, wc in jobs
    }


def made_file(rule, wc):
    """The file a job makes (its rule's first output) for its wildcards."""
    return getattr(rules, rule).output[0].format(**wc)


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


# ---- Resources: what each job asks for (pqv/plan/resources.py) -------------------------------------
# One machine (`snakemake --cores N`): heavy and timing stages take every core Snakemake has, the
# rest one. On a cluster threads follow the data set's estimated size (the same in the process that
# submits a job and in the ones that run it). Memory and wall time follow the job's images (from
# the manifest) and its model's size (from its input's sidecar), GPUs the config, and SLURM's
# --exclusive marks timing jobs, so profiles carry only site settings (partition, account).

# As in _check_machine: a cluster run is one given --jobs without --cores (Snakemake turns a local
# run's --jobs into --cores), or a job process that a cluster executor started (remote mode).
ON_CLUSTER = workflow.remote_exec or workflow.resource_settings.nodes is not None


def _default_resource(name):
    """A site setting given as a default resource (profile or --default-resources), as text."""
    import ast

    resources = workflow.resource_settings.default_resources
    raw = getattr(resources.get(name), "raw", None) if resources is not None else None
    if not isinstance(raw, str):
        return None
    try:
        return str(ast.literal_eval(raw)).strip()  # a default resource is an expression: '"--qos=high"'
    except (ValueError, SyntaxError):
        return raw.strip()


def _plan():
    """What the plan needs from the cluster and the file system, found once, in the invocation that
    plans: the partition jobs go to (--default-resources slurm_partition=..., else the default one),
    from one `sinfo` call (its GPUs, for `device: auto`; its time limit, which caps every job), and
    the data set's size (the manifests once made, before that pqv.plan.manifest.estimate). The job
    processes a cluster starts read it back (RES.shared_plan: SLURM passes the submitting
    environment on), so they plan the same threads without asking again."""
    if workflow.remote_exec and (shared := RES.shared_plan(config)) is not None:
        return shared
    plan = {"device": config["device"], "partition": None, "max_minutes": None, "stamps": {}}
    if ON_CLUSTER:
        partition = RES.slurm_partition(_default_resource("slurm_partition"))
        plan.update(partition=partition.name, max_minutes=partition.max_minutes)
        if config["device"] == "auto" and partition.has_gpus is False:
            print(f"pqv: partition {partition.name or '(default)'} has no GPUs (sinfo): device auto asks for none", file=sys.stderr)
            plan["device"] = "cpu"
    elif config["device"] == "auto" and not RES.machine_has_gpus():
        plan["device"] = "cpu"  # on one machine without a GPU no job asks for one
    images = pqv_manifest.estimate(config["dataset"])
    for split, path in (("train", TRAIN_DATA), ("eval", EVAL_DATA)):
        try:
            images[split] = pqv_manifest.read(path)["splits"][split]["images"]
        except (PQVError, KeyError):
            pass  # not made yet (or damaged: the data job makes it again)
    plan["images"] = images
    RES.share_plan(config, plan)
    return plan


SHARED_PLAN = _plan()
# The config the jobs' resources are computed with: `device: auto` becomes `cpu` where no GPU is.
PLAN = {**config, "device": SHARED_PLAN["device"]}
MAX_MINUTES = SHARED_PLAN["max_minutes"]  # the partition's time limit (None: none known)
SITE_SLURM_EXTRA = _default_resource("slurm_extra") or ""
# The data set's size; threads follow it (small sets get few).
DATA_ESTIMATE = SHARED_PLAN["images"]
PLANNED_IMAGES = DATA_ESTIMATE["train"] + DATA_ESTIMATE["eval"]


def stage_threads(stage):
    if ON_CLUSTER:
        return RES.threads(stage, PLAN, PLANNED_IMAGES)
    if stage == "prune":  # gradient importances compute (calibration batches forward and backward)
        return lambda wc: ALL_CORES if wc.importance in T.GRADIENT_IMPORTANCES and float(wc.ratio) > 0 else 1
    if stage == "model":  # training a base model computes; reading a weights file is one core's work
        return lambda wc: ALL_CORES if MODELS[wc.model]["weights"] == "train" else 1
    return ALL_CORES if stage in RES.ALL_CORES_LOCALLY else 1


@functools.lru_cache(maxsize=4)
def _manifest_images(path, mtime_ns):
    """(train images, eval images, largest image's pixels) of a manifest."""
    manifest = pqv_manifest.read(path)
    splits = manifest["splits"]
    return (*(splits[s]["images"] if s in splits else 0 for s in ("train", "eval")), manifest.get("largest_pixels", 0))


def job_work(stage, wc, input):
    """What a job's budget follows: the images it reads (the manifest's counts) and its model's
    size (its input's sidecar). Before those files exist (a dry run of a new sweep) the data set's
    estimate and the config's model stand in; Snakemake computes the resources again when the job
    is ready to start, from the real files."""
    model = RES.estimate_macs(MODELS[wc.model]) if "model" in wc.keys() else (0, 0)
    train, evaluation = DATA_ESTIMATE["train"], DATA_ESTIMATE["eval"]
    if stage in ("data_train", "data_eval"):  # each data job reads its own split
        train, evaluation = (train, 0) if stage == "data_train" else (0, evaluation)
        return RES.Work(train, evaluation, 0, 0, config["dataset"]["name"])
    largest = 0
    if not input.get("data"):
        train = evaluation = 0  # this job reads no images
    elif os.path.exists(input.data):
        train, evaluation, largest = _manifest_images(input.data, os.stat(input.data).st_mtime_ns)
    try:
        with open(input.sidecar) as f:
            facts = json.load(f)
        model = (float(facts.get("macs") or model[0]), float(facts.get("params") or model[1]))
    except (AttributeError, OSError, ValueError):
        pass  # not made yet (or damaged: the job itself says so)
    return RES.Work(train, evaluation, *model, config["dataset"]["name"], largest)


def stage_resources(stage):
    """A rule's `resources:`: memory and wall time are functions of the job's input files (computed
    again when the job is about to start, once its manifest and input model exist), GPUs of its
    wildcards."""
    planned = "data" if stage in ("data_train", "data_eval") else stage  # pqv.plan.resources budgets both as `data`

    def value(key):
        def resource(wc, input):
            work = job_work(stage, wc, input)
            return RES.of(
                planned,
                PLAN,
                work,
                wc.get("importance", ""),
                wc.get("ratio", 0),
                PLANNED_IMAGES,
                wc.get("format", wc.get("ir", "")),
                MAX_MINUTES,
            )[key]

        return resource

    keys = RES.of(planned, PLAN, RES.Work(0, 0, 0, 0), planned_images=PLANNED_IMAGES)
    out = {key: value(key) for key in keys}
    if "slurm_extra" in keys:  # a rule's resource replaces the site's: add to it instead
        out["slurm_extra"] = " ".join(filter(None, [SITE_SLURM_EXTRA, keys["slurm_extra"]]))
    out["gpu"] = lambda wc: RES.gpus(planned, PLAN, wc.get("importance", ""), wc.get("ratio", 0), wc.get("format", ""))
    return out


def _finetune_jobs():
    """How many successive jobs the longest finetune spans on the partition's time limit (1 where
    it fits, or off a cluster); stops the run before any job, in one line, when a job cannot fit
    (RES.fit). Budgets are planned ones: the data set's size and each model's unpruned size."""
    if not ON_CLUSTER or workflow.remote_exec or not MAX_MINUTES:
        return 1
    partition = RES.Partition(SHARED_PLAN["partition"], None, MAX_MINUTES)
    overridden = workflow.resource_settings._parsed_overwrite_resources
    spans = [1]
    for rule, wc in SWEEP.jobs(config):
        if rule in ("summary", "keep_dense"):  # run by Snakemake itself
            continue
        stage = "data" if rule.startswith("data_") else rule
        macs, params = RES.estimate_macs(MODELS[wc["model"]]) if "model" in wc else (0, 0)
        train, evaluation = DATA_ESTIMATE["train"], DATA_ESTIMATE["eval"]
        images = (0, evaluation) if rule in ("accuracy", "data_eval") else (train, 0)
        work = RES.Work(*images, macs, params, config["dataset"]["name"])
        minutes = RES.runtime(stage, PLAN, work, wc.get("importance", ""), None, wc.get("format", ""))
        user = overridden.get(rule, {}).get("runtime")
        if user is not None:  # --set-resources RULE:runtime=M: the user's own time
            if (user := int(getattr(user, "raw", user))) > MAX_MINUTES:
                raise PQVError(
                    f"--set-resources {rule}:runtime={user} exceeds partition {partition.name}'s limit of " f"{MAX_MINUTES} minutes",
                    f"runtime <= {MAX_MINUTES}, or another partition",
                )
            spans.append(math.ceil(minutes / user) if rule in RES.RESUMABLE else 1)
            continue
        what = f"{rule} of {wc['model']}" if "model" in wc else rule
        spans.append(RES.fit(stage, minutes, partition, what, "GPUs" if RES.gpus(stage, PLAN) else "CPUs"))
    return max(spans)
