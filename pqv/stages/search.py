"""The search's report: every probe as a CSV row, the curve with the budget line, and the file it
ships, chosen by timing the candidates against each other.

The candidates are the verified files of the answer's branch within the budget (any precision and
format). Their latency jobs ran at different moments, so their medians carry the machine's drift:
the same two files ranked in opposite orders in two runs. Here they are timed again in one
process, interleaved (a few calls of each in turn, `rounds` times), and a candidate whose
interquartile range overlaps the fastest one's is a tie: ties go to the smallest file. The CSV
beside the report lists each candidate's timing and says which were tied.

Imports torch (the runtimes): the planning side of the search (pqv.plan.search) stays torch-free.
"""

from __future__ import annotations

import statistics

from ..common import appfile
from ..plan.errors import PQVError
from ..plan.registry import EAGER, Status
from ..plan.search import COLUMNS, REFERENCE, describe_probe

KEYS = ("model", "importance", "ratio", "precision", "engine", "merge_r", "format")
CHOICE_COLUMNS = [
    "artifact",
    "precision",
    "engine",
    "format",
    "top1",
    "size_mb",
    "race_ms_median",
    "race_ms_p25",
    "race_ms_p75",
    "race_calls",
    "tied",
    "chosen",
]


def quartiles(times: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q1, median, q3


def race(artifacts: list[str], threads: int, warmup: int, runs: int, rounds: int, manifest=None) -> dict[str, dict]:
    """Each artifact's latency (ms) measured interleaved: `warmup` untimed calls each, then `rounds`
    turns in which every artifact makes `runs` timed calls, all in this process on `threads` threads."""
    import time

    import torch

    from ..common import datasets
    from .evaluate import _load, describe, set_threads

    set_threads(threads)
    loaded = {}
    for path in artifacts:
        meta = describe(path)
        size = meta["data_config"]["input_size"]
        example = datasets.sample_batch(manifest, meta["data_config"], 1, split="train") if manifest else torch.zeros(1, *size)
        loaded[path] = (_load(path, meta), example)
    times: dict[str, list[float]] = {path: [] for path in artifacts}
    with torch.no_grad():
        for fn, example in loaded.values():
            for _ in range(warmup):
                fn(example)
        for _ in range(rounds):
            for path, (fn, example) in loaded.items():
                for _ in range(runs):
                    start = time.perf_counter()
                    fn(example)
                    times[path].append((time.perf_counter() - start) * 1e3)
    out = {}
    for path, values in times.items():
        q1, median, q3 = quartiles(values)
        out[path] = {"race_ms_median": median, "race_ms_p25": q1, "race_ms_p75": q3, "race_calls": len(values)}
    return out


def pick(candidates: list[dict]) -> tuple[dict, list[dict]]:
    """(the chosen candidate, the candidates tied with the fastest): a tie is an interquartile range
    that overlaps the fastest one's; the smallest file of the tied ones is chosen."""
    fastest = min(candidates, key=lambda c: c["race_ms_median"])
    tied = [c for c in candidates if c["race_ms_p25"] <= fastest["race_ms_p75"] and fastest["race_ms_p25"] <= c["race_ms_p75"]]
    chosen = min(tied, key=lambda c: (c["size_mb"], c["race_ms_median"]))
    return chosen, tied


def report(
    rounds: list[str],
    out_csv: str,
    out_png: str,
    out_json: str,
    out_choice: str,
    candidates: list[str],
    budget: float,
    searched: tuple[str, str] = ("", ""),
    threads: int = 1,
    warmup: int = 5,
    runs: int = 20,
    race_rounds: int = 5,
    manifest=None,
) -> dict:
    """CLI entry: the probes' CSV (`answer` marks the answer's ratio), the figure, the candidates'
    race (CSV) and the chosen file (JSON)."""
    import pandas as pd

    from ..plan.fileio import atomic_path, read_json, write_json

    final = read_json(rounds[-1])
    table = pd.DataFrame(final["probes"]).assign(answer=lambda t: t["ratio"] == final["answer"])
    table = table[[c for c in COLUMNS if c in table]]
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    rows = {}
    for path in candidates:
        row = {"merge_r": 0, **read_json(path)}  # an unmerged file's labels say no merge_r
        if abs(float(row["ratio"]) - final["answer"]) > 1e-9:
            continue  # a probe: judged above, not a candidate
        key = tuple(row[k] for k in KEYS)
        rows[key] = {**rows.get(key, {}), **row}
    ok = [
        r
        for r in rows.values()
        if Status.shippable(r.get("status")) and r["format"] != EAGER and r["top1"] >= final["reference_top1"] - budget
    ]
    if not ok:
        raise PQVError("no verified artifact at the search's answer is within the budget", "allow a larger search.budget")
    timed = race([r["artifact"] for r in ok], threads, warmup, runs, race_rounds, manifest)
    ok = [{**r, **timed[r["artifact"]]} for r in ok]
    chosen, tied = pick(ok)
    tie = [t["artifact"] for t in tied]
    choice = pd.DataFrame([{**r, "tied": r["artifact"] in tie and len(tie) > 1, "chosen": r is chosen} for r in ok])
    with atomic_path(out_choice) as tmp:
        choice.sort_values("race_ms_median")[CHOICE_COLUMNS].to_csv(tmp, index=False, float_format="%.6g")
    method = (
        f"{len(ok)} candidates timed interleaved in one process: {race_rounds} rounds x {runs} calls each after "
        f"{warmup} warm-ups, {threads} thread(s), batch 1; a tie is an interquartile range overlapping the fastest's"
    )
    result = {
        "model": searched[0],
        "importance": searched[1],
        "answer_ratio": final["answer"],
        "reference_top1": final["reference_top1"],
        "reference": REFERENCE,
        "budget": budget,
        "probes": len(final["probes"]) - 1,
        "rounds": final["round"] + 1,
        "uncertain": [p["ratio"] for p in final["probes"] if p.get("uncertain")],
        "chosen": chosen,
        "tied": tie if len(tie) > 1 else [],
        "choice_method": method,
    }
    write_json(out_json, result)
    draw(table, final, chosen, out_png, searched)
    print("\n".join(probe_lines(final["probes"], budget)))
    merging = f" merging {chosen['merge_r']} tokens per block" if chosen.get("merge_r") else ""
    print(
        f"search {searched[0]}, {searched[1]}{merging}: the largest ratio within {budget:g} top-1 points of the dense FP32 "
        f"model ({final['reference_top1']:.2f} %, {REFERENCE}) is {final['answer']:g}, after {result['probes']} "
        f"probes in {result['rounds']} rounds; its fastest file within the budget: {chosen['artifact']} "
        f"({chosen['top1']:.2f} %, {chosen['race_ms_median']:.3g} ms in the race), for the app with "
        f"{appfile.path_of(chosen['artifact'])}"
    )
    if len(tie) > 1:
        print(f"a tie: {', '.join(tie)} are within each other's spread ({method}); the smallest file is chosen")
    if result["uncertain"]:
        print(
            f"uncertain: the probes at {', '.join(f'{r:g}' for r in result['uncertain'])} are within one standard "
            "error of the budget line: another evaluation split could move the answer by a grid step"
        )
    return result


def probe_lines(probes: list[dict], budget: float) -> list[str]:
    """One line per measured branch; the dense one is the curve's start (and the reference), not a probe."""

    def name(p: dict) -> str:
        return "dense 0 (the start, not a probe)" if float(p["ratio"]) == 0 else f"probe {p['ratio']:g}"

    return [f"{name(p)}: {describe_probe(p, budget)}" for p in probes]


def draw(table, final: dict, chosen: dict, out_png: str, searched: tuple[str, str] = ("", "")) -> None:
    import matplotlib.pyplot as plt

    from ..plan.fileio import atomic_path

    fig = figure(table, final, chosen, searched)
    with atomic_path(out_png) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)


def figure(table, final: dict, chosen: dict, searched: tuple[str, str] = ("", "")):
    """The probes' top-1 against the budget line, and the judged file's latency below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # accuracy above, latency in a panel of its own below: on a second axis of one panel its line
    # crossed the budget line and read as accuracy
    fig, (ax, below) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    shippable = table["status"].map(Status.shippable).astype(bool)
    verified = table[shippable]
    passed, failed = verified[verified["passed"]], verified[~verified["passed"]]
    broken = table[~shippable]
    ax.plot(verified["ratio"], verified["top1"], color="0.6", lw=1, zorder=1)
    ax.errorbar(
        passed["ratio"],
        passed["top1"],
        yerr=passed["top1_se"],
        fmt="o",
        color="tab:green",
        label="within the budget (± 1 standard error)",
        zorder=3,
    )
    ax.errorbar(
        failed["ratio"], failed["top1"], yerr=failed["top1_se"], fmt="x", ms=8, color="tab:red", label="outside the budget", zorder=3
    )
    uncertain = verified[verified["uncertain"]]
    ax.scatter(
        uncertain["ratio"],
        uncertain["top1"],
        s=160,
        facecolors="none",
        edgecolors="tab:orange",
        label="uncertain: within one standard error of the line",
        zorder=4,
    )
    line = final["reference_top1"] - final["budget"]
    for _, row in broken.iterrows():
        ax.axvline(row["ratio"], color="tab:red", ls="--", lw=0.8, alpha=0.7)
        ax.annotate(
            f"failed: {str(row['reason'])[:40]}",
            (row["ratio"], line),
            rotation=90,
            fontsize=7,
            va="bottom",
            ha="right",
            color="tab:red",
        )
    ax.axhline(line, color="k", ls="--", lw=1, label=f"budget: dense FP32 {final['reference_top1']:.2f} − {final['budget']:g}")
    ax.axvline(final["answer"], color="tab:green", ls=":", lw=1, label=f"answer: ratio {final['answer']:g}")
    ax.set(
        xlabel="pruning ratio",
        ylabel="top-1 of the shipped file (%)",
        title=f"search: {searched[0] or chosen['model']}, {searched[1] or chosen['importance']}; chosen: "
        f"{chosen['precision']} {chosen['engine']} .{chosen['format']} at {chosen['ratio']:g}",
    )
    low, high = ax.get_ylim()
    # top-1 is a percentage: a budget below 0 % is off the chart; a little room above 100 % keeps a
    # marker at 100 % off the frame
    ax.set_ylim(max(0.0, low), min(101.5, high))
    ax.grid(alpha=0.3)
    ax.set_xlabel("")
    below.plot(verified["ratio"], verified["latency_ms_median"], color="tab:blue", marker="o", lw=0.8)
    below.set(xlabel="pruning ratio", ylabel="latency (ms)", title="latency of the judged file (median)")
    below.set_ylim(0, max(verified["latency_ms_median"].max(), 1e-9) * 1.15)  # from zero: noise must not look like a trend
    below.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside: it hides no error bar
    fig.tight_layout()
    return fig
