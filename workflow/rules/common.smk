# Paths, sweep expansion and shared parameters. Rules are wiring; logic lives in pqv/.
import json
import os
import sys

from snakemake.exceptions import WorkflowError

sys.path.insert(0, workflow.basedir)  # pqv.targets: the precision/engine/format table, torch-free
from pqv import config as pqv_config
from pqv import targets as T
from pqv.errors import PQVError

# Rules call the interpreter Snakemake runs under, so an unactivated venv still works, and its
# bin/ (ExecuTorch's flatc lives there) is on PATH for every job.
PQV = f'"{sys.executable}" -m pqv'
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")

R = config["results"]
NO_ENGINE = T.NO_ENGINE

BRANCH = R + "/{model}/{importance}_{ratio}"
MODEL = R + "/{model}/model.safetensors"
PRUNED = BRANCH + "/pruned.safetensors"
FINETUNED = BRANCH + "/finetuned.safetensors"
QUANTIZED = BRANCH + "/quantized/{precision}-{engine}.{ir}"
EXPORTED = BRANCH + "/export/{precision}-{engine}.{format}"
METRICS = BRANCH + "/eval/{precision}-{engine}.{format}.json"
EAGER_METRICS = BRANCH + "/eval/fp32-none.eager.json"  # the eager FP32 baseline of a branch
PROFILE = R + "/profile/{model}/{importance}_{ratio}/{precision}-{engine}.{format}"
SUMMARY = R + "/summary.csv"
STAGE_COSTS = R + "/stage_costs.csv"
# Snakemake's benchmark file of each job (wall time, max RSS, CPU): bench(rule, job), where job is one
# of these patterns; the rules and benchmark_files() (the stage_costs inputs) both use them.
BENCHMARKS = R + "/benchmarks"
JOB_BRANCH = "{model}/{importance}_{ratio}"
JOB_PROGRAM = JOB_BRANCH + "/{precision}-{engine}.{ir}"
JOB_ARTIFACT = JOB_BRANCH + "/{precision}-{engine}.{format}"


def bench(rule, job=None):
    return f"{BENCHMARKS}/{rule}/{job}.tsv" if job else f"{BENCHMARKS}/{rule}.tsv"
# Where gradients and eager accuracy passes run (pqv.device); how a job runs, not what it makes, so
# it goes into the command line, not into params (changing it reruns nothing).
DEVICE = f"--device {config['device']}"
FIGURE_NAMES = [  # the keys of pqv.plot.FIGURES (tests/test_evaluate.py keeps them equal)
    "fig2_latency_memory", "fig4_accuracy", "fig5_importance", "fig6_models", "fig7_engines",
                "pareto_accuracy_latency"]
FIGURES = expand(R + "/figures/{name}.png", name=FIGURE_NAMES)


wildcard_constraints:
    model="[^/]+",
    importance="[a-z0-9]+",
    ratio="[0-9.]+",
    precision="|".join(T.PRECISIONS),
    ir="|".join(T.IRS),
    engine="[a-z0-9]+",
    format="|".join(T.FORMATS),


# The config itself was checked by the Snakefile (pqv.config); this checks it against the machine.
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
        raise PQVError(f"evaluate.threads {config['evaluate']['threads']} exceeds the {limit} cores this run may use",
                       f"evaluate.threads <= {limit}, or more --cores")
    mem_mb = value("mem_mb")
    total_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    if isinstance(mem_mb, int) and mem_mb > total_mb:
        raise PQVError(f"--resources mem_mb={mem_mb} exceeds this machine's {total_mb} MB", f"mem_mb <= {total_mb}")


with pqv_config.reported():
    _check_machine()

# Heavy and timing stages take every core of a local run; on a cluster see stage_threads() below.
ALL_CORES = getattr(workflow.global_resources.get("_cores"), "value", None) or 1

MODELS = {m["id"]: m for m in config["models"]}
DATA = json.dumps(config["dataset"], sort_keys=True)


ratio_name = pqv_config.ratio_name


def branches():
    """(importance, ratio) per pruned branch; the dense model (ratio 0) is one shared branch."""
    return pqv_config.branches(config)


# Engines that no configured precision uses make nothing (a float-only sweep); pqv.config checked
# that every other listed precision and engine makes something.
COMBINATIONS = pqv_config.combinations(config)


def targets():
    """Every final artifact the config asks for, as wildcard dicts."""
    for model in MODELS:
        for importance, ratio in branches():
            for precision, engine, fmt in COMBINATIONS:
                yield dict(model=model, importance=importance, ratio=ratio,
                           precision=precision, engine=engine, format=fmt)


def metrics_files():
    files = [METRICS.format(**t) for t in targets()]
    if config["evaluate"]["eager_baseline"]:
        files += [EAGER_METRICS.format(model=m, importance=i, ratio=r) for m in MODELS for i, r in branches()]
    return files


def quantized_for(wc):
    """The quantize output an export needs: its format decides the representation."""
    return QUANTIZED.format(ir=T.ir_of(wc.format), **{k: wc[k] for k in ("model", "importance", "ratio", "precision", "engine")})


def benchmark_files():
    """The benchmark file of every job this config schedules (Snakefile's `benchmark:` paths)."""
    files = [bench("model", m) for m in MODELS] + [bench("summary")]
    for m in MODELS:
        for i, r in branches():
            job = JOB_BRANCH.format(model=m, importance=i, ratio=r)
            dense_kept = float(r) == 0 and not config["finetune"]["dense"]
            files += [bench("prune", job), bench("keep_dense" if dense_kept else "finetune", job)]
            if config["evaluate"]["eager_baseline"]:
                files.append(bench("evaluate_eager", job))
    for t in targets():
        files += [bench("quantize", JOB_PROGRAM.format(ir=T.ir_of(t["format"]), **t)),
                  bench("export", JOB_ARTIFACT.format(**t)), bench("evaluate", JOB_ARTIFACT.format(**t))]
    files += [bench("profile", JOB_ARTIFACT.format(**t)) for t in profiled()]
    return sorted(set(files))


def profiled():
    """The targets that some profile selector matches."""
    return [t for t in targets() if any(pqv_config.matches(sel, t) for sel in config["profile"]["artifacts"])]


def profile_targets():
    return [PROFILE.format(**t) + ext for t in profiled() for ext in (".csv", ".png")]


# ---- Resources: what each job asks for (pqv/resources.py) -------------------------------------
# One machine (`snakemake --cores N`): heavy and timing stages take every core Snakemake has, the
# rest one. On a cluster threads come from the config, the same in the process that submits a job
# and in the ones that run it. Memory, wall time, GPUs and SLURM's --exclusive for timing jobs come
# from the config everywhere, so profiles carry only site settings (partition, account).
from pqv import resources as RES

# As in _check_machine: a cluster run is one given --jobs without --cores (Snakemake turns a local
# run's --jobs into --cores), or a job process that a cluster executor started (remote mode).
ON_CLUSTER = workflow.remote_exec or workflow.resource_settings.nodes is not None


def stage_threads(stage):
    if ON_CLUSTER:
        return RES.threads(stage, config)
    return ALL_CORES if stage in RES.ALL_CORES_LOCALLY else 1


def stage_resources(stage):
    """A rule's `resources:`; each value is a function of the job's wildcards (prune's GPU depends
    on its importance and ratio)."""
    def value(key):
        return lambda wc: RES.of(stage, config, getattr(wc, "importance", ""), getattr(wc, "ratio", 0))[key]

    return {key: value(key) for key in RES.of(stage, config)}


# Aggregates and pass-throughs run in the Snakemake process itself, not as cluster jobs.
localrules: all, summary, plot, stage_costs, keep_dense
