"""Search: the largest pruning ratio whose shipped artifact stays within an accuracy budget.

Per model and importance, the search bisects [lo, hi] on a grid (the resolution, snapped to what
prune.round_to can express and cut at what Torch-Pruning can reach). A probe at ratio r is the
sweep's own branch at r: the same prune, finetune, quantize, export, accuracy and latency jobs,
the same files, so a grid run and a search share every job and a changed budget reuses every
probe made. Each round is a Snakemake checkpoint (workflow/rules/search.smk): it reads the probes
the round before asked for and decides the next ones, so a search runs unchanged on one machine
or on SLURM, and a killed search resumes where it stopped.

The rule: a probe passes when its judged artifact (search.artifact, e.g. int8 .ptl) is verified
and its top-1, measured in its own runtime, is at most `budget` points below the reference
(REFERENCE). Accuracy near the budget is noisy (each top-1 has a standard error from the evaluation
split's size), so a failure by less than one standard error (WEAK) does not bound the answer when
a probe above it passes, and a WEAK failure that bounds the open interval is checked by probing the
ratio above it; the answer is the largest passing ratio with no bounding failure below it. Each
round places k probes evenly inside the interval still open (k = search.parallel; the interval
narrows k+1-fold per round), until it is one grid step wide or search.max_probes probes were made.
The report, which imports torch to time the candidates at the answer, is pqv.stages.search.

Torch-free: the Snakefile imports it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import PQVError
from .registry import Status

# The one accuracy reference of the search and of `pqv choose`, in words (both print it).
REFERENCE = "the best top-1 of the model's dense FP32 files (each format and the eager baseline), verified, merging no token"

DIGITS = 6  # ratios are rounded to this many decimals: they name the branches' folders


# ---- what Torch-Pruning can reach (shared with pqv.stages.prune.check_widths) ----------------------------


def groups(widths: dict[str, int], heads: str = "dims", bottleneck: bool = False) -> list[str]:
    """The width groups a ratio prunes: the embedding (unless bottleneck), each MLP, and each block's
    head dims (heads dims) or heads (heads whole)."""
    kinds = (["embed"] if not bottleneck else []) + ["mlp"] + (["head_dim"] if heads == "dims" else ["heads"])
    return [g for g in widths if g.rsplit(".", 1)[-1] in kinds]


def reach(widths: dict[str, int], round_to: int | None = None, heads: str = "dims", bottleneck: bool = False) -> tuple[float, str]:
    """(the largest ratio Torch-Pruning can apply, the narrowest group): it leaves a group whole when
    the ratio would keep less than one channel (or round_to channels) of it."""
    pruned = groups(widths, heads, bottleneck)
    narrowest = min(pruned, key=lambda g: widths[g])
    return 1 - (round_to or 1) / widths[narrowest], narrowest


# ---- the grid and the rule ------------------------------------------------------------------------


def grid(lo: float, hi: float, resolution: float, embed: int | None = None, round_to: int | None = None) -> list[float]:
    """The ratios a search may probe, from lo up to hi. With round_to, only ratios that keep the
    embedding a multiple of round_to wide (embed x (1 - r)), thinned to the resolution."""
    if round_to and embed:
        ratios = sorted({round(1 - m * round_to / embed, DIGITS) for m in range(1, embed // round_to + 1)})
        ratios = [r for r in ratios if lo - 1e-9 <= r <= hi + 1e-9]
        if lo not in ratios:
            ratios = [lo, *ratios]
        out = [ratios[0]]
        for r in ratios[1:]:
            if r - out[-1] >= resolution - 1e-9:
                out.append(r)
        return out
    steps = int(math.floor((hi - lo) / resolution + 1e-9))
    return [round(lo + i * resolution, DIGITS) for i in range(steps + 1)]


# A probe's verdict: within the budget, outside it by more than one standard error of its top-1 (or
# failed for a reason of its own: a diverged finetune, a failed export check), or outside it by
# less: a failure that the evaluation split's sampling noise alone can explain.
PASS, FAIL, WEAK = "pass", "fail", "weak"


def verdict(result) -> str:
    """A result as PASS, FAIL or WEAK (True and False, as older callers give, are PASS and FAIL)."""
    if result is True:
        return PASS
    if result is False:
        return FAIL
    return result


def interval(points: list[float], results: dict) -> tuple[int, int]:
    """(a, b) on the grid: b the smallest binding failure (len(points) if none), a the largest pass
    below it (the answer); grid points between them are still open. A failure binds unless it is
    WEAK and a probe above it passed: accuracy near the budget is noisy, and one failure by less
    than its standard error, contradicted from above, does not cap the answer."""
    index = {r: i for i, r in enumerate(points)}
    verdicts = {index[r]: verdict(v) for r, v in results.items() if r in index}
    passes = [i for i, v in verdicts.items() if v == PASS]
    b = len(points)
    for i in sorted(i for i, v in verdicts.items() if v != PASS):
        if verdicts[i] == FAIL or not any(p > i for p in passes):
            b = i
            break
    a = max((i for i in passes if i < b), default=0)
    return a, b


def _unchecked_weak(points: list[float], results: dict, b: int) -> int | None:
    """The grid point above a WEAK failure that bounds the interval, if it was not probed yet: one
    probe there tells a fluke (it passes) from the edge of the budget (it fails too)."""
    if b < len(points) and verdict(results[points[b]]) == WEAK and b + 1 < len(points) and points[b + 1] not in results:
        return b + 1
    return None


def next_probes(points: list[float], results: dict, parallel: int = 1, max_probes: int = 8) -> list[float]:
    """The ratios the next round probes: the point above a WEAK bounding failure first, then points
    evenly inside the open interval, none already probed (a pick already probed gives way to the
    nearest open point), `parallel` in all; none when no point inside the interval is left open
    (and its failure checked) or the probes are spent."""
    a, b = interval(points, results)
    made = sum(1 for r in results if r != points[0])  # the dense artifact is not a probe
    left = min(parallel, max_probes - made)
    if left <= 0:
        return []
    picked = []
    check = _unchecked_weak(points, results, b)
    if check is not None:
        picked.append(check)
        left -= 1
    # Points inside the interval may be probed already (weak failures below a pass leave them open):
    # each evenly spaced pick that was probed gives way to the nearest open point not picked yet.
    free = [i for i in range(a + 1, b) if points[i] not in results]
    k = min(left, len(free))
    for j in range(1, k + 1):
        target = a + max(1, min(b - a - 1, round((b - a) * j / (k + 1))))
        picked.append(min((i for i in free if i not in picked), key=lambda i: (abs(i - target), i)))
    return [points[i] for i in sorted(set(picked))]


def simulate(curve, points: list[float], parallel: int = 1, max_probes: int = 8) -> tuple[float, list[list[float]]]:
    """Run the rule against `curve(ratio)` -> PASS, FAIL or WEAK (or True/False): (the answer, the
    probes of every round)."""
    results = {points[0]: curve(points[0])}
    rounds = []
    while True:
        probes = next_probes(points, results, parallel, max_probes)
        if not probes:
            break
        rounds.append(probes)
        results.update({r: curve(r) for r in probes})
    a, _ = interval(points, results)
    return points[a], rounds


def standard_error(top1: float, images: int | None) -> float:
    """The standard error of a top-1 (in points) measured on `images` images: binomial, with the
    proportion kept half an image away from 0 and 1 (a perfect score on 360 images is not exact)."""
    if not images:
        return float("nan")
    p = min(max(top1 / 100, 0.5 / images), 1 - 0.5 / images)
    return 100 * math.sqrt(p * (1 - p) / images)


# ---- one round of the workflow's search -------------------------------------------------------------

# The columns of a search's CSV, in order (pqv.stages.search).
COLUMNS = [
    "ratio",
    "passed",
    "verdict",
    "uncertain",
    "top1",
    "top1_se",
    "loss",
    "top1_agreement",
    "latency_ms_median",
    "size_mb",
    "params",
    "macs",
    "widths",
    "status",
    "reason",
    "answer",
]


def merges_tokens(row) -> bool:
    """Whether a measured row (a file's labels or a summary row) merges tokens: merge_r above 0 (a
    row from before token merging, or an unmerged file's, says none, or NaN in a table)."""
    r = row.get("merge_r")
    return isinstance(r, (int, float)) and r == r and r > 0


def reference_top1(rows) -> float | None:
    """REFERENCE, of one model's measured rows (accuracy files or summary rows); None if it has none."""
    tops = [
        float(r["top1"])
        for r in rows
        if float(r["ratio"]) == 0 and r["precision"] == "fp32" and not merges_tokens(r) and Status.shippable(r.get("status"))
    ]
    return max(tops) if tops else None


def judge(measured: dict, reference_top1: float, budget: float) -> dict:
    """A probe's record: its accuracy with its standard error, latency, widths and verdict. A probe
    whose file is not verified (a diverged finetune, a failed export check, no status at all) fails
    with its reason; one within one standard error of the budget line, either side, is `uncertain`."""
    status, shippable = Status.word(measured.get("status")), Status.shippable(measured.get("status"))
    top1, line = float(measured["top1"]), reference_top1 - budget
    se = standard_error(top1, measured.get("images"))
    if not shippable:
        result = FAIL
    elif top1 >= line:
        result = PASS
    else:
        result = WEAK if line - top1 < se else FAIL
    return {
        "ratio": float(measured["ratio"]),
        "passed": result == PASS,
        "verdict": result,
        "uncertain": shippable and abs(top1 - line) < se,
        "top1": top1,
        "top1_se": se,
        "loss": reference_top1 - top1,
        "top1_agreement": measured.get("top1_agreement"),
        "latency_ms_median": measured.get("latency_ms_median"),
        "size_mb": measured.get("size_mb"),
        "params": measured.get("params"),
        "macs": measured.get("macs"),
        "widths": widths_text(measured.get("widths") or {}),
        "status": status,
        "reason": measured.get("reason") or ("" if shippable else f"status {status}"),
    }


def describe_probe(p: dict, budget: float) -> str:
    """A probe's verdict in words, for the round's log and the report."""
    if not Status.shippable(p["status"]):
        return f"failed ({p['status']}: {p['reason']})"
    where = "within" if p["passed"] else ("outside, by less than its standard error," if p["verdict"] == WEAK else "outside")
    se = f" ± {p['top1_se']:.2f}" if p.get("top1_se") == p.get("top1_se") else ""  # NaN: no image count
    points = round(-p["loss"], 2) + 0.0  # + 0.0: a loss that rounds to zero prints +0.00, not -0.00
    return f"top-1 {p['top1']:.2f}{se} ({points:+.2f} points), {where} the budget of {budget:g}" + (
        " (uncertain: within one standard error of the line)" if p.get("uncertain") else ""
    )


def widths_text(widths: dict[str, int]) -> str:
    """A pruned model's widths in one cell: 'embed 96, mlp 288, head_dim 24, heads 3' (a range
    where the blocks differ)."""
    kinds: dict[str, list[int]] = {k: [] for k in ("embed", "mlp", "head_dim", "heads")}
    for group, width in widths.items():
        kinds.setdefault(group.rsplit(".", 1)[-1], []).append(width)
    return ", ".join(f"{k} {min(v)}" if min(v) == max(v) else f"{k} {min(v)}-{max(v)}" for k, v in kinds.items() if v)


def run_round(
    out: str,
    model_sidecar: str,
    settings: dict,
    prune_settings: dict,
    measured: list[str],
    previous: str | None = None,
    references: list[str] = (),
) -> dict:
    """CLI entry: read the probes measured so far (accuracy and latency files of the judged artifact),
    decide the next ones, write the round's state. The first round reads the reference (REFERENCE)
    from `references`, the dense branch's FP32 accuracy files; later rounds carry it."""
    from ..plan.fileio import read_json, write_json

    base = read_json(model_sidecar)
    state = read_state(previous) if previous else {"probes": [], "round": -1}
    reference = state.get("reference_top1") if previous else reference_top1(read_json(p) for p in references)
    if reference is None:
        raise PQVError(
            "the search has no accuracy reference: no verified dense FP32 file was measured",
            "keep fp32 in quantize.precisions (the search measures the dense branch's FP32 files)",
        )
    records = {}
    for path in measured:
        row = read_json(path)
        key = float(row["ratio"])
        records[key] = {**records.get(key, {}), **row}
    probes = {p["ratio"]: p for p in state["probes"]}
    for ratio, row in records.items():
        probes[ratio] = judge(row, reference, settings["budget"])
    dense = probes.get(0.0)
    if dense is None or not dense["passed"]:
        why = (
            f"its file is {dense['status']}: {dense['reason']}"
            if dense and not Status.shippable(dense["status"])
            else (
                f"top-1 {dense['top1']:.2f} is {dense['loss']:.2f} points below the dense FP32 model's {reference:.2f}"
                if dense
                else "it was not measured"
            )
        )
        raise PQVError(
            f"search budget {settings['budget']:g} top-1 points: even the unpruned "
            f"{settings['artifact']['precision']} .{settings['artifact']['format']} artifact fails it ({why})",
            "allow a larger search.budget, or judge another search.artifact (e.g. fp32)",
        )
    widths = base["widths"]
    top, narrowest = reach(
        widths, prune_settings.get("round_to"), prune_settings.get("heads", "dims"), prune_settings.get("bottleneck", False)
    )
    hi = min(settings["hi"], round(math.floor(top * 10**DIGITS) / 10**DIGITS, DIGITS))
    points = grid(0.0, hi, settings["resolution"], widths.get("embed"), prune_settings.get("round_to"))
    points = [0.0] + [p for p in points if p >= settings["lo"] and p > 0]
    if len(points) == 1:
        snapped = f", in steps of prune.round_to {prune_settings['round_to']}" if prune_settings.get("round_to") else ""
        raise PQVError(
            f"the search has no ratio to probe: from search.lo {settings['lo']:g} to search.hi "
            f"{settings['hi']:g} in steps of {settings['resolution']:g}{snapped}, cut at {top:.4g} "
            f"(the most Torch-Pruning can prune this model: its {narrowest} group is {widths[narrowest]} wide)",
            f"lower search.lo below {top:.4g}, or search.resolution",
        )
    results = {r: p["verdict"] for r, p in probes.items()}
    nxt = next_probes(points, results, settings["parallel"], settings["max_probes"])
    a, b = interval(points, results)
    new = {
        "round": state["round"] + 1,
        "reference_top1": reference,
        "budget": settings["budget"],
        "grid": points,
        "reach": {"ratio": top, "narrowest": narrowest},
        "probes": sorted(probes.values(), key=lambda p: p["ratio"]),
        "answer": points[a],
        "open": [points[a], points[b] if b < len(points) else None],
        "next": nxt,
        "done": not nxt,
    }
    write_json(out, new)
    for p in new["probes"]:
        print(f"probe {p['ratio']:g}: " + describe_probe(p, settings["budget"]))
    print(f"reference: {reference:.2f} % ({REFERENCE})")
    print(
        f"round {new['round']}: answer so far {new['answer']:g}; " + (f"next: {', '.join(f'{r:g}' for r in nxt)}" if nxt else "done")
    )
    return new


def read_state(path: str | Path) -> dict:
    """A round's file (the Snakefile reads it while planning); a damaged one (cut short by a full
    disk or a copy stopped mid-way, edited by hand) is one line naming it and the fix."""
    try:
        state = json.loads(Path(path).read_text())
        why = None if isinstance(state, dict) else f"it holds a JSON {type(state).__name__}, not an object"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        state, why = None, f"{type(e).__name__}: {e}"
    if why is None:
        missing = [k for k in ("round", "probes", "answer", "next", "done") if k not in state]
        why = f"it lacks {', '.join(missing)}" if missing else None
        if why is None and not (
            isinstance(state["next"], list)
            and isinstance(state["probes"], list)
            and all(isinstance(p, dict) and "ratio" in p for p in state["probes"])
        ):
            why = "its next or probes are not lists of probes"
    if why is not None:
        raise PQVError(
            f"damaged search state {path} ({why})",
            f"delete it (rm {path}) and run again: the search's results are kept, and a change that needs "
            "the round (another budget) makes it again from its probes, which are kept too",
        )
    return state
