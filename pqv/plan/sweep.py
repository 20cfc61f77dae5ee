"""The sweep a config makes, enumerated once: its branches, artifacts, measurements, operator
profiles and jobs. The Snakefile (workflow/rules/common.smk) only turns these into paths and rules;
the config checks ask the same functions what the sweep makes.

Torch-free; works on a config dict with its defaults filled in (pqv.plan.config.check).
"""

from __future__ import annotations

from . import jobs as job_graph
from . import registry
from .registry import DENSE, EAGER, NO_ENGINE


def ratio_name(ratio) -> str:
    """A ratio as it appears in paths and wildcards: 0.25 -> '0.25', 0.0 -> '0'."""
    return f"{float(ratio):g}"


def merge_name(r) -> str:
    """Token merging (merge.r) as it appears in paths and wildcards, after the engine: 0 -> '' (the
    paths of a sweep without merging stay what they were), 8 -> '-tome8'."""
    return f"-tome{int(r)}" if int(r) else ""


def merge_r(name: str) -> int:
    """The r a merge wildcard names ('' -> 0)."""
    return int(name.removeprefix("-tome") or 0)


def branch(importance: str, ratio) -> tuple[str, str]:
    """(importance, ratio) of the branch that prunes by `importance` at `ratio`: at ratio 0 every
    importance shares one branch, DENSE (nothing was ranked)."""
    return (DENSE, "0") if float(ratio) == 0 else (importance, ratio_name(ratio))


def branches(config: dict) -> list[tuple[str, str]]:
    """(importance, ratio) per branch; the dense model (ratio 0) is one shared branch, DENSE."""
    ratios = config["prune"]["ratios"]
    out = [(DENSE, "0")] if any(float(r) == 0 for r in ratios) else []
    out += [branch(imp, r) for imp in config["prune"]["importances"] for r in ratios if float(r) > 0]
    return out


def combinations(config: dict) -> list[tuple[str, str, str]]:
    """(precision, engine, format) of every artifact of a branch."""
    q = config["quantize"]
    return registry.combinations(q["precisions"], q["engines"], config["export"]["formats"])


def merges(config: dict) -> list[str]:
    """The merge wildcard of every merge.r (token merging), '' for none."""
    return [merge_name(r) for r in config["merge"]["r"]]


def artifacts(config: dict) -> list[dict]:
    """Every final artifact, as wildcard dicts (model, importance, ratio, precision, engine, merge,
    format), each model's file without PQV (evaluate.without_pqv) included once."""
    out = [
        dict(model=m["id"], importance=imp, ratio=ratio, precision=p, engine=e, merge=merge, format=f)
        for m in config["models"]
        for imp, ratio in branches(config)
        for p, e, f in combinations(config)
        for merge in merges(config)
    ]
    out += [bar for bar in without_pqv(config) if bar not in out]
    return out


def without_pqv(config: dict) -> list[dict]:
    """Each model's file without PQV (pqv.plan.registry.WITHOUT_PQV), the bar its picks are compared with."""
    if not config["evaluate"]["without_pqv"]:
        return []
    return [dict(model=m["id"], **registry.WITHOUT_PQV) for m in config["models"]]


def is_without_pqv(artifact: dict) -> bool:
    """Whether a file (its wildcards, or a summary row, which says merge_r) is the file without PQV."""
    unmerged = artifact.get("merge", "") == "" and not artifact.get("merge_r", 0)
    return (
        unmerged
        and float(artifact["ratio"]) == 0
        and all(str(artifact[k]) == v for k, v in registry.WITHOUT_PQV.items() if k not in ("ratio", "merge"))
    )


def eager_baselines(config: dict) -> list[dict]:
    """Each branch's eager FP32 model, measured like an artifact (format EAGER), if configured."""
    if not config["evaluate"]["eager_baseline"]:
        return []
    return [
        dict(model=m["id"], importance=imp, ratio=ratio, precision="fp32", engine=NO_ENGINE, merge=merge, format=EAGER)
        for m in config["models"]
        for imp, ratio in branches(config)
        for merge in merges(config)
    ]


def measured(config: dict) -> list[dict]:
    """What the accuracy and latency jobs measure: every artifact and every eager baseline."""
    return artifacts(config) + eager_baselines(config)


def matches(selector: dict, artifact: dict) -> bool:
    """Whether a profile selector picks an artifact (every key given must agree)."""
    shown = {"ratio": ratio_name, "merge": merge_name}
    return all(shown.get(k, str)(v) == artifact[k] for k, v in selector.items() if v is not None)


def profiled(config: dict) -> list[dict]:
    """The artifacts some profile selector matches."""
    return [a for a in artifacts(config) if any(matches(sel, a) for sel in config["profile"]["artifacts"])]


def passes_through(config: dict, ratio: str) -> bool:
    """Whether a branch's model goes on unfinetuned (the dense branch, unless finetune.dense)."""
    return float(ratio) == 0 and not config["finetune"]["dense"]


def made_by(config: dict, artifact: dict) -> list[tuple[str, dict]]:
    """(rule, wildcards) of the jobs that make one artifact (or eager baseline) and measure it:
    its branch's prune and finetune (or keep_dense), its program's quantize, its export, its
    accuracy and latency. The search (workflow/rules/search.smk) asks it for every probe."""
    a = artifact
    branch = job_graph.wildcards("prune", a)  # each job's wildcards: pqv.plan.jobs
    out = [("prune", branch), ("keep_dense" if passes_through(config, a["ratio"]) else "finetune", branch)]
    if a["format"] != EAGER:
        # a .ts or .pt2 program may serve more than one format
        program = job_graph.wildcards("quantize", {**a, "ir": registry.ir_of(a["format"])})
        out += [("quantize", program), ("export", a)]
    return out + [("accuracy", a), ("latency", a)]


def unique(jobs: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Jobs without repeats (several artifacts share a branch's prune, a program's quantize), in order."""
    seen: dict[tuple, tuple[str, dict]] = {}
    for rule, wc in jobs:
        seen.setdefault((rule, *sorted(wc.items())), (rule, wc))
    return list(seen.values())


def jobs(config: dict) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job the sweep schedules, aggregates included."""
    out = [("data_train", {}), ("data_eval", {}), ("summary", {})] + [("model", {"model": m["id"]}) for m in config["models"]]
    out += [job for a in measured(config) for job in made_by(config, a)]
    out += [("profile", a) for a in profiled(config)]
    return unique(out)
