"""Summary: one row per evaluated artifact, gathered from the evaluate stage's JSON files."""

from __future__ import annotations

import json

import pandas as pd

from ..plan import sweep
from ..plan.errors import PQVError
from ..plan.fileio import atomic_path
from ..plan.registry import EAGER

KEYS = ["model", "importance", "ratio", "precision", "engine", "merge_r", "format"]  # merge_r: tokens merged per block
COLUMNS = KEYS + [
    "status",
    "reason",
    "top1",
    "top5",
    "eager_top1",
    "top1_agreement",
    "cosine_min",
    "latency_ms_median",
    "latency_ms_min",
    "latency_ms_max",
    "latency_ms_p90",
    "latency_ms_paper_method",
    "size_mb",
    "peak_rss_mb",
    "rss_model_mb",
    "params",
    "macs",
    "device",
    "threads",
    "warmup",
    "runs",
    "batch_size",
    "runtime",
    "accuracy_threads",
    "accuracy_workers",
    "accuracy_device",
    "accuracy_images_per_s",
    "cpu",
    "cpu_features",
    "node_exclusive",
    "torch",
    "search",
    "without_pqv",
    "artifact",
]


def collect(paths: list[str], searches: list[str] = ()) -> pd.DataFrame:
    """One row per artifact: its accuracy and its latency measurements (two jobs, two files) joined;
    `search` marks the artifact each accuracy-budget search chose (pqv.plan.search.report's files)."""
    rows: dict[tuple, dict] = {}
    for path in paths:
        measured = {"merge_r": 0, **json.loads(open(path).read())}  # an unmerged file's labels say no merge_r
        rows.setdefault(tuple(measured[k] for k in KEYS), {}).update(measured)
    for path in searches:
        found = json.loads(open(path).read())
        chosen = tuple({"merge_r": 0, **found["chosen"]}[k] for k in KEYS)
        merging = f" merging {found['chosen']['merge_r']} tokens per block" if found["chosen"].get("merge_r") else ""
        mark = f"chosen by the {found.get('importance') or 'accuracy-budget'} search{merging} (budget {found['budget']:g})"
        rows[chosen]["search"] = "; ".join(filter(None, [rows[chosen].get("search"), mark]))
    table = pd.DataFrame(list(rows.values()))
    table["eager_top1"] = eager_top1(table)
    # the file a user gets without PQV (evaluate.without_pqv): the bar `pqv choose` compares picks with
    table["without_pqv"] = [sweep.is_without_pqv(row) for row in table[KEYS].to_dict("records")]
    table = table[[c for c in COLUMNS if c in table.columns]]
    return table.sort_values(KEYS, ignore_index=True)


def eager_top1(table: pd.DataFrame) -> pd.Series:
    """Each row's FP32 parent's top-1: its branch's eager row (evaluate.eager_baseline), else empty."""
    branch = ["model", "importance", "ratio"]
    if "top1" not in table or "format" not in table:
        return pd.Series(float("nan"), index=table.index)
    if "merge_r" in table:  # a merged file's parent is the eager model merging the same tokens
        branch.append("merge_r")
    eager = table[table["format"] == EAGER].set_index(branch)["top1"]
    return pd.Series([eager.get(key, float("nan")) for key in zip(*(table[k] for k in branch))], index=table.index)


def run(paths: list[str], out: str, searches: list[str] = ()) -> pd.DataFrame:
    table = collect(paths, searches)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table


# Snakemake's benchmark files: one TSV per job under <results>/benchmarks/<rule>/...
# max_rss sums the resident memory of the job's process tree (DataLoader workers count the pages
# they share with their parent again); max_pss counts shared pages once: the memory a job needs.
COST_COLUMNS = {"s": "wall_s", "max_rss": "max_rss_mb", "max_pss": "max_pss_mb", "cpu_time": "cpu_s"}


def stage_costs(paths: list[str], root: str, logs: list[str] | None = None) -> pd.DataFrame:
    """Per stage (the rule's folder under `root`): jobs, wall and CPU seconds summed, the mean load
    (CPU seconds per wall second: how many cores the stage's jobs kept busy), the longest job and
    the largest peak memory; a `total` row at the end. A job's CPU seconds come from the usage line
    of its log (`logs`, in the order of `paths`) where it has one: Snakemake's benchmark samples the
    CPU time every 30 s after a job's first 15 s and loses what came after the last sample
    (pqv.common.usage); the line is written just before the interpreter exits, so of the two (each a lower
    bound) the larger counts. `cpu_from_log` counts the jobs whose log had the line; `warm` those
    forked from a local run's warm-start server (pqv.common.warmstart), whose peak RSS is the line's
    (shared pages counted in full) and whose PSS is unknown (Snakemake sampled their client)."""
    from pathlib import Path

    from ..common import usage

    if logs is not None and len(logs) != len(paths):
        raise PQVError(f"{len(logs)} logs for {len(paths)} benchmark files", "give one log per benchmark file, in order")
    rows = []
    for path, log in zip(paths, logs or [None] * len(paths)):
        bench = pd.read_csv(path, sep="\t").rename(columns=COST_COLUMNS)
        rel = Path(path).relative_to(root)
        stage = rel.parts[0] if len(rel.parts) > 1 else rel.stem  # <rule>/<job>.tsv, or <rule>.tsv
        row = {"stage": stage, **{c: pd.to_numeric(bench[c], errors="coerce").iloc[-1] for c in COST_COLUMNS.values()}}
        counted = usage.read(log) if log else None
        row["cpu_from_log"] = counted is not None
        row["warm"] = counted is not None and counted["warm"]
        if counted is not None:  # both are lower bounds: the line misses the interpreter's exit
            row["cpu_s"] = max(row["cpu_s"], counted["cpu_s"])
        if row["warm"]:  # Snakemake sampled the client, not the job forked from the warm-start server
            row["max_rss_mb"], row["max_pss_mb"] = counted["max_rss_mb"], float("nan")
        rows.append(row)
    jobs = pd.DataFrame(rows, columns=["stage", *COST_COLUMNS.values(), "cpu_from_log", "warm"])
    table = (
        jobs.groupby("stage", sort=False)
        .agg(
            jobs=("wall_s", "size"),
            wall_s=("wall_s", "sum"),
            wall_s_max=("wall_s", "max"),
            cpu_s=("cpu_s", "sum"),
            max_pss_mb=("max_pss_mb", "max"),
            max_rss_mb=("max_rss_mb", "max"),
            cpu_from_log=("cpu_from_log", "sum"),
            warm=("warm", "sum"),
        )
        .reset_index()
    )
    total = {
        "stage": "total",
        "jobs": len(jobs),
        "wall_s": jobs["wall_s"].sum(),
        "wall_s_max": jobs["wall_s"].max(),
        "cpu_s": jobs["cpu_s"].sum(),
        "max_pss_mb": jobs["max_pss_mb"].max(),
        "max_rss_mb": jobs["max_rss_mb"].max(),
        "cpu_from_log": jobs["cpu_from_log"].sum(),
        "warm": jobs["warm"].sum(),
    }
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    table.insert(table.columns.get_loc("cpu_s") + 1, "mean_load", table["cpu_s"] / table["wall_s"])
    table["cpu_from_log"] = table["cpu_from_log"].astype(int)
    table["warm"] = table["warm"].astype(int)
    return table


def run_costs(paths: list[str], root: str, out: str, logs: list[str] | None = None) -> pd.DataFrame:
    table = stage_costs(paths, root, logs)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table
