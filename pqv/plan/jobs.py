"""The job graph, stated once: for each rule, the wildcards that name one of its jobs, the file a job
makes, where its log goes and whether Snakemake writes its benchmark file.

workflow/rules/*.smk take their paths, `log:` and `benchmark:` from this table (common.smk),
pqv.plan.sweep names each job's wildcards with it, `pqv costs` is handed each benchmark file's log
through it, and the tests find a finished run's logs with it. Paths are relative to the results
folder (config `results`): logs under <results>/logs, benchmark files under <results>/benchmarks.

Torch-free; no Snakemake object: patterns are plain `str.format` text.
"""

from __future__ import annotations

from dataclasses import dataclass
from string import Formatter

LOGS = "logs"  # one log per job, beside the run's results: two runs with their own results never share one
# Snakemake's benchmark file of each job (wall time, max RSS, CPU): `pqv costs` sums them (stage_costs)
BENCHMARKS = "benchmarks"

BRANCH = "{model}/{importance}_{ratio}"  # a pruned branch of a model
MERGED = "{precision}-{engine}{merge}"  # a recipe: merge is token merging after the engine, "" or -tome{r}
PROGRAM = f"{BRANCH}/{MERGED}.{{ir}}"  # a quantized program (one may serve several formats)
ARTIFACT = f"{BRANCH}/{MERGED}.{{format}}"  # an exported file, or format `eager`: the branch's FP32 model
SEARCH = "{model}/{importance}{merge}"  # an accuracy-budget search


@dataclass(frozen=True)
class Rule:
    """One rule of the workflow, as the job graph sees it."""

    job: str | None  # the wildcards that name one job (None: the rule has one job per run)
    made: str | None  # the file a job makes: the rule's first output (None: plot, whose figures the registry names)
    log_folder: str | None = None  # its logs' folder under logs/ (None: the rule's name)
    log_suffix: str = ""  # after the job's name (evaluate's two rules share a folder)
    benchmark: bool = True  # whether Snakemake writes a benchmark file for each job


RULES: dict[str, Rule] = {
    "data_train": Rule(None, "data/train.json"),
    "data_eval": Rule(None, "data/eval.json"),
    "model": Rule("{model}", "{model}/model.safetensors"),
    "prune": Rule(BRANCH, f"{BRANCH}/pruned.safetensors"),
    "finetune": Rule(BRANCH, f"{BRANCH}/finetuned.safetensors"),
    # the dense branch passed through unfinetuned: finetune's file and log (one or the other runs)
    "keep_dense": Rule(BRANCH, f"{BRANCH}/finetuned.safetensors", log_folder="finetune"),
    "quantize": Rule(PROGRAM, f"{BRANCH}/quantized/{MERGED}.{{ir}}"),
    "export": Rule(ARTIFACT, f"{BRANCH}/export/{MERGED}.{{format}}"),
    "accuracy": Rule(ARTIFACT, f"{BRANCH}/eval/{MERGED}.{{format}}.accuracy.json", "evaluate", ".accuracy"),
    "latency": Rule(ARTIFACT, f"{BRANCH}/eval/{MERGED}.{{format}}.latency.json", "evaluate", ".latency"),
    "profile": Rule(ARTIFACT, f"profile/{ARTIFACT}.csv"),
    "summary": Rule(None, "summary.csv"),
    "plot": Rule(None, None),
    "stage_costs": Rule(None, "stage_costs.csv", benchmark=False),
    # one search per model, importance and merge.r: its rounds (checkpoints), then its report
    "search_round": Rule(f"{SEARCH}/round-{{round}}", f"search/{SEARCH}/round-{{round}}.json", "search", benchmark=False),
    "search_report": Rule(SEARCH, f"search/{SEARCH}.csv", "search", "/report", benchmark=False),
}


def keys(rule: str) -> tuple[str, ...]:
    """The wildcards that name one job of `rule`, in its pattern's order."""
    pattern = RULES[rule].job
    return tuple(name for _, name, _, _ in Formatter().parse(pattern or "") if name)


def wildcards(rule: str, values: dict) -> dict:
    """The wildcards of the job of `rule` that `values` (an artifact's, say) belong to."""
    return {k: values[k] for k in keys(rule)}


def _at(folder: str, name: str, wc: dict | None) -> str:
    path = f"{folder}/{name}" if folder else name
    return path.format(**wc) if wc is not None else path


def log_name(rule: str, job: str | None = None) -> str:
    """A job's log relative to the logs folder, from its rule and job name (the job pattern, or its
    wildcards filled in)."""
    r = RULES[rule]
    return f"{r.log_folder or rule}/{job}{r.log_suffix}.log" if r.job else f"{rule}.log"


def benchmark_name(rule: str, job: str | None = None) -> str:
    """A job's benchmark file relative to the benchmarks folder."""
    if not RULES[rule].benchmark:
        raise ValueError(f"rule {rule} writes no benchmark file")
    return f"{rule}/{job}.tsv" if RULES[rule].job else f"{rule}.tsv"


def of_benchmark(name: str) -> tuple[str, str | None]:
    """(rule, job name) of a benchmark file, from its path relative to the benchmarks folder."""
    rule, _, job = name.removesuffix(".tsv").partition("/")
    if rule not in RULES:
        raise ValueError(f"{name}: no rule {rule}")
    return rule, job or None


def made(results: str, rule: str, wc: dict | None = None) -> str:
    """The file a job of `rule` makes: a pattern of its wildcards, or with `wc` the file itself."""
    pattern = RULES[rule].made
    if pattern is None:
        raise ValueError(f"rule {rule} makes no single file")
    return _at(results, pattern, wc)


def log(results: str, rule: str, wc: dict | None = None) -> str:
    """A job's log (the rule's `log:`): a pattern, or with `wc` the file."""
    return _at(f"{results}/{LOGS}" if results else LOGS, log_name(rule, RULES[rule].job), wc)


def benchmark(results: str, rule: str, wc: dict | None = None) -> str:
    """A job's benchmark file (the rule's `benchmark:`): a pattern, or with `wc` the file."""
    return _at(f"{results}/{BENCHMARKS}" if results else BENCHMARKS, benchmark_name(rule, RULES[rule].job), wc)


def costs_files(results: str, jobs) -> dict[str, str]:
    """{benchmark file: log} of (rule, wildcards) jobs: `pqv costs` sums the benchmark files and
    takes each job's CPU seconds from the usage line its log ends with (pqv.common.usage)."""
    return {benchmark(results, rule, wc): log(results, rule, wc) for rule, wc in jobs}
