"""Search: the largest pruning ratio whose shipped artifact stays within an accuracy budget.

Per model and importance, the search bisects [lo, hi] on a grid (the resolution, snapped to what
prune.round_to can express and cut at what Torch-Pruning can reach). A probe at ratio r is the
sweep's own branch at r: the same prune, finetune, quantize, export, accuracy and latency jobs,
the same files, so a grid run and a search share every job and a changed budget reuses every
probe made. Each round is a Snakemake checkpoint (workflow/rules/search.smk): it reads the probes
the round before asked for and decides the next ones, so a search runs unchanged on one machine
or on SLURM, and a killed search resumes where it stopped.

The rule: a probe passes when its judged artifact (search.artifact, e.g. int8 .ptl) is verified
and its top-1, measured in its own runtime, is at most `budget` points below the dense FP32
model's. Accuracy is not monotone in the ratio near the budget, so the answer is the largest
passing ratio with no failing probe below it; each round places k probes evenly inside the
interval still open (k = search.parallel; the interval narrows k+1-fold per round), until it is
one grid step wide or search.max_probes probes were made.

Torch-free: the Snakefile imports it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import PQVError
from .registry import Status

# The one accuracy reference of the search and of `pqv choose`, in words (both print it).
REFERENCE = "the best top-1 of the model's dense FP32 files (each format and the eager baseline), verified"

DIGITS = 6  # ratios are rounded to this many decimals: they name the branches' folders


# ---- what Torch-Pruning can reach (shared with pqv.prune.check_widths) ----------------------------

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


def interval(points: list[float], results: dict[float, bool]) -> tuple[int, int]:
    """(a, b) on the grid: b the smallest failing probe (len(points) if none), a the largest passing
    probe below it (the answer); grid points between them are still open."""
    index = {r: i for i, r in enumerate(points)}
    failed = [index[r] for r, ok in results.items() if not ok and r in index]
    b = min(failed, default=len(points))
    a = max((index[r] for r, ok in results.items() if ok and r in index and index[r] < b), default=0)
    return a, b


def next_probes(points: list[float], results: dict[float, bool], parallel: int = 1, max_probes: int = 8) -> list[float]:
    """The ratios the next round probes: `parallel` points evenly inside the open interval, none
    already probed; none when the interval is one step wide or the probes are spent."""
    a, b = interval(points, results)
    made = sum(1 for r in results if r != points[0])  # the dense artifact is not a probe
    left = max_probes - made
    if b - a <= 1 or left <= 0:
        return []
    k = min(parallel, left, b - a - 1)
    picked = sorted({a + max(1, min(b - a - 1, round((b - a) * j / (k + 1)))) for j in range(1, k + 1)})
    return [points[i] for i in picked if points[i] not in results]


def simulate(curve, points: list[float], parallel: int = 1, max_probes: int = 8) -> tuple[float, list[list[float]]]:
    """Run the rule against `curve(ratio) -> passes?`: (the answer, the probes of every round)."""
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


# ---- one round of the workflow's search -------------------------------------------------------------

# The columns of a search's CSV, in order (pqv.search.report).
COLUMNS = ["ratio", "passed", "top1", "loss", "top1_agreement", "latency_ms_median", "size_mb", "params", "macs",
           "widths", "status", "answer"]


def reference_top1(rows) -> float | None:
    """REFERENCE, of one model's measured rows (accuracy files or summary rows); None if it has none."""
    tops = [float(r["top1"]) for r in rows
            if float(r["ratio"]) == 0 and r["precision"] == "fp32" and r.get("status") == Status.VERIFIED.value]
    return max(tops) if tops else None


def judge(measured: dict, reference_top1: float, budget: float) -> dict:
    """A probe's record: its accuracy, latency, widths and verdict (a probe without a status fails)."""
    ok = measured.get("status") == Status.VERIFIED.value and measured["top1"] >= reference_top1 - budget
    return {"ratio": float(measured["ratio"]), "top1": measured["top1"], "loss": reference_top1 - measured["top1"],
            "top1_agreement": measured.get("top1_agreement"), "latency_ms_median": measured.get("latency_ms_median"),
            "size_mb": measured.get("size_mb"), "params": measured.get("params"), "macs": measured.get("macs"),
            "widths": widths_text(measured.get("widths") or {}), "status": measured.get("status", "missing"),
            "passed": bool(ok)}


def widths_text(widths: dict[str, int]) -> str:
    """A pruned model's widths in one cell: 'embed 96, mlp 288, head_dim 24, heads 3' (a range
    where the blocks differ)."""
    kinds: dict[str, list[int]] = {k: [] for k in ("embed", "mlp", "head_dim", "heads")}
    for group, width in widths.items():
        kinds.setdefault(group.rsplit(".", 1)[-1], []).append(width)
    return ", ".join(f"{k} {min(v)}" if min(v) == max(v) else f"{k} {min(v)}-{max(v)}" for k, v in kinds.items() if v)


def run_round(out: str, model_sidecar: str, settings: dict, prune_settings: dict, measured: list[str],
              previous: str | None = None, references: list[str] = ()) -> dict:
    """CLI entry: read the probes measured so far (accuracy and latency files of the judged artifact),
    decide the next ones, write the round's state. The first round reads the reference (REFERENCE)
    from `references`, the dense branch's FP32 accuracy files; later rounds carry it."""
    from .store import read_json, write_json

    base = read_json(model_sidecar)
    state = read_json(previous) if previous else {"probes": [], "round": -1}
    reference = state.get("reference_top1") if previous else reference_top1(read_json(p) for p in references)
    if reference is None:
        raise PQVError("the search has no accuracy reference: no verified dense FP32 file was measured",
                       "keep fp32 in quantize.precisions (the search measures the dense branch's FP32 files)")
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
        why = "its export check failed" if dense and dense["status"] != "verified" else (
            f"top-1 {dense['top1']:.2f} is {dense['loss']:.2f} points below the dense FP32 model's {reference:.2f}" if dense else "it was not measured")
        raise PQVError(f"search budget {settings['budget']:g} top-1 points: even the unpruned "
                       f"{settings['artifact']['precision']} .{settings['artifact']['format']} artifact fails it ({why})",
                       "allow a larger search.budget, or judge another search.artifact (e.g. fp32)")
    widths = base["widths"]
    top, narrowest = reach(widths, prune_settings.get("round_to"), prune_settings.get("heads", "dims"),
                           prune_settings.get("bottleneck", False))
    hi = min(settings["hi"], round(math.floor(top * 10**DIGITS) / 10**DIGITS, DIGITS))
    points = grid(0.0, hi, settings["resolution"], widths.get("embed"), prune_settings.get("round_to"))
    points = [0.0] + [p for p in points if p >= settings["lo"] and p > 0]
    if len(points) == 1:
        snapped = f", in steps of prune.round_to {prune_settings['round_to']}" if prune_settings.get("round_to") else ""
        raise PQVError(f"the search has no ratio to probe: from search.lo {settings['lo']:g} to search.hi "
                       f"{settings['hi']:g} in steps of {settings['resolution']:g}{snapped}, cut at {top:.4g} "
                       f"(the most Torch-Pruning can prune this model: its {narrowest} group is {widths[narrowest]} wide)",
                       f"lower search.lo below {top:.4g}, or search.resolution")
    results = {r: p["passed"] for r, p in probes.items()}
    nxt = next_probes(points, results, settings["parallel"], settings["max_probes"])
    a, b = interval(points, results)
    new = {"round": state["round"] + 1, "reference_top1": reference, "budget": settings["budget"], "grid": points,
           "reach": {"ratio": top, "narrowest": narrowest}, "probes": sorted(probes.values(), key=lambda p: p["ratio"]),
           "answer": points[a], "open": [points[a], points[b] if b < len(points) else None], "next": nxt,
           "done": not nxt}
    write_json(out, new)
    for p in new["probes"]:
        print(f"probe {p['ratio']:g}: top-1 {p['top1']:.2f} ({p['loss']:+.2f} points), "
              f"{'within' if p['passed'] else 'outside'} the budget of {settings['budget']:g}")
    print(f"reference: {reference:.2f} % ({REFERENCE})")
    print(f"round {new['round']}: answer so far {new['answer']:g}; "
          + (f"next: {', '.join(f'{r:g}' for r in nxt)}" if nxt else "done"))
    return new


def report(rounds: list[str], out_csv: str, out_png: str, out_json: str, candidates: list[str], budget: float,
           searched: tuple[str, str] = ("", "")) -> dict:
    """CLI entry: every probe as a CSV row (`answer` marks the answer's ratio), the curve with the
    budget line, and the chosen artifact: the fastest verified artifact (any precision and format)
    at the answer's ratio within budget. `searched`: the search's model and importance."""
    import pandas as pd

    from .store import atomic_path, read_json, write_json

    final = read_json(rounds[-1])
    table = pd.DataFrame(final["probes"]).assign(answer=lambda t: t["ratio"] == final["answer"])
    table = table[[c for c in COLUMNS if c in table]]
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    rows = {}
    for path in candidates:
        row = read_json(path)
        if abs(float(row["ratio"]) - final["answer"]) > 1e-9:
            continue  # a probe: judged above, not a candidate
        key = tuple(row[k] for k in ("model", "importance", "ratio", "precision", "engine", "format"))
        rows[key] = {**rows.get(key, {}), **row}
    ok = [r for r in rows.values() if r.get("status", "verified") == "verified" and r["format"] != "eager"
          and r["top1"] >= final["reference_top1"] - budget]
    if not ok:
        raise PQVError("no verified artifact at the search's answer is within the budget",
                       "allow a larger search.budget")
    chosen = min(ok, key=lambda r: (r["latency_ms_median"], r["size_mb"]))
    result = {"model": searched[0], "importance": searched[1], "answer_ratio": final["answer"],
              "reference_top1": final["reference_top1"], "budget": budget, "probes": len(final["probes"]) - 1,
              "rounds": final["round"] + 1, "chosen": chosen}
    write_json(out_json, result)
    draw(table, final, chosen, out_png, searched)
    print(f"search {searched[0]}, {searched[1]}: the largest ratio within {budget:g} top-1 points of the dense FP32 "
          f"model ({final['reference_top1']:.2f} %) is {final['answer']:g}, after {result['probes']} probes in "
          f"{result['rounds']} rounds; its fastest file within the budget: {chosen['artifact']} "
          f"({chosen['top1']:.2f} %, {chosen['latency_ms_median']:.3g} ms)")
    return result


def draw(table, final: dict, chosen: dict, out_png: str, searched: tuple[str, str] = ("", "")) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .store import atomic_path

    fig, ax = plt.subplots(figsize=(8, 4.5))
    passed = table[table["passed"]]
    failed = table[~table["passed"]]
    ax.plot(table["ratio"], table["top1"], color="0.6", lw=1, zorder=1)
    ax.scatter(passed["ratio"], passed["top1"], color="tab:green", label="within the budget", zorder=3)
    ax.scatter(failed["ratio"], failed["top1"], color="tab:red", marker="x", s=60, label="outside the budget", zorder=3)
    ax.axhline(final["reference_top1"] - final["budget"], color="k", ls="--", lw=1,
               label=f"budget: dense FP32 {final['reference_top1']:.2f} − {final['budget']:g}")
    ax.axvline(final["answer"], color="tab:green", ls=":", lw=1, label=f"answer: ratio {final['answer']:g}")
    ax.set(xlabel="pruning ratio", ylabel="top-1 of the shipped file (%)",
           title=f"search: {searched[0] or chosen['model']}, {searched[1] or chosen['importance']}; chosen: "
                 f"{chosen['precision']} {chosen['engine']} .{chosen['format']} at {chosen['ratio']:g}")
    low, high = ax.get_ylim()
    ax.set_ylim(max(0.0, low), min(100.0, high))  # top-1 is a percentage: a budget below 0 % is off the chart
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(table["ratio"], table["latency_ms_median"], color="tab:blue", marker=".", lw=0.8, alpha=0.6)
    twin.set_ylabel("latency of the judged file (ms)", color="tab:blue")
    twin.set_ylim(0, table["latency_ms_median"].max() * 1.15)  # from zero: noise must not look like a trend
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    with atomic_path(out_png) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)


def read_state(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
