"""The search's rule against the grid on noisy accuracy curves (pqv.plan.search.simulate).

A probe's top-1 is measured once on the evaluation split: the true top-1 of its file plus the
split's sampling noise (binomial: its standard error, pqv.plan.search.standard_error). Each trial draws
a smooth accuracy curve (a loss that grows as (r / r0)^k), the budget line, and one measured value
per grid ratio; every rule then sees the same values:
- grid, strict: every ratio probed; the answer is the largest pass with no failure below it;
- grid, checked: every ratio probed; a failure by less than one standard error (WEAK) with a pass
  above it does not bound the answer (pqv.plan.search.interval);
- search, strict: bisection, WEAK counted as FAIL (the rule before issue 29);
- search, checked: bisection; a bounding WEAK failure is checked by probing the ratio above it.
"right" is the largest grid ratio whose true top-1 is within the budget; "±1 step" allows one grid
step either way; "finetunes" counts probes (the dense file aside). Scenario `fluke` forces one
ratio two steps below the true answer to a WEAK failure (a measured top-1 half a standard error
below the line): the first failure a bisection meets is a fluke.

python bench/search_noise.py [--trials N] [--out CSV]   prints the table and writes the CSV
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pqv.plan import search  # noqa: E402

POINTS = search.grid(0.0, 0.9, 0.05)  # the default search: 19 ratios
SCENARIOS = {"smooth": False, "fluke": True}
IMAGES = (360, 10_000, 50_000)  # the demo's evaluation split, CIFAR-10's, ImageNet's
RULES = ("grid, strict", "grid, checked", "search, strict", "search, checked")


def trial(rng: random.Random, images: int, fluke: bool, budget: float = 1.0):
    """(measured verdicts per ratio, the true answer's index) of one random curve."""
    reference = rng.uniform(80, 96)
    r0, k = rng.uniform(0.2, 0.8), rng.uniform(1.5, 4.0)
    true = [reference - budget * (r / r0) ** k for r in POINTS]
    line = reference - budget
    truth = max(i for i, t in enumerate(true) if t >= line)
    verdicts = {}
    for i, (r, t) in enumerate(zip(POINTS, true)):
        se = search.standard_error(t, images)
        measured = t + rng.gauss(0, se) if i else t  # the dense file is the reference itself
        if fluke and truth >= 3 and i == truth - 2:
            measured = line - 0.5 * se
        verdicts[r] = search.PASS if measured >= line else (search.WEAK if line - measured < se else search.FAIL)
    return verdicts, truth


def strict(verdicts: dict) -> dict:
    return {r: search.FAIL if v == search.WEAK else v for r, v in verdicts.items()}


def answers(verdicts: dict) -> dict[str, tuple[int, int]]:
    """(answer's index, finetunes) per rule."""
    out = {}
    for name, seen in (("strict", strict(verdicts)), ("checked", verdicts)):
        out[f"grid, {name}"] = (search.interval(POINTS, seen)[0], len(POINTS) - 1)
        answer, rounds = search.simulate(seen.get, POINTS, parallel=1, max_probes=8)
        out[f"search, {name}"] = (POINTS.index(answer), sum(map(len, rounds)))
    return out


def run(trials: int, seed: int = 0) -> list[dict]:
    rows = []
    for scenario, fluke in SCENARIOS.items():
        for images in IMAGES:
            rng = random.Random(seed)
            tally = {rule: [0, 0, 0] for rule in RULES}  # right, within one step, finetunes
            counted = 0
            for _ in range(trials):
                verdicts, truth = trial(rng, images, fluke)
                if fluke and truth < 3:
                    continue  # no ratio two steps below the answer to make a fluke of
                counted += 1
                for rule, (index, finetunes) in answers(verdicts).items():
                    tally[rule][0] += index == truth
                    tally[rule][1] += abs(index - truth) <= 1
                    tally[rule][2] += finetunes
            for rule in RULES:
                right, near, finetunes = tally[rule]
                rows.append(
                    {
                        "scenario": scenario,
                        "eval_images": images,
                        "rule": rule,
                        "trials": counted,
                        "right_pct": round(100 * right / counted, 1),
                        "within_one_step_pct": round(100 * near / counted, 1),
                        "finetunes_mean": round(finetunes / counted, 2),
                    }
                )
    return rows


def table(rows: list[dict]) -> str:
    """The markdown table docs/search.md shows (tests/test_docs.py renders it again from the CSV)."""
    lines = ["| curves | eval images | rule | right % | within one step % | finetunes |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {int(r['eval_images']):,} | {r['rule']} | {float(r['right_pct']):.1f} | "
            f"{float(r['within_one_step_pct']):.1f} | {float(r['finetunes_mean']):.2f} |"
        )
    return "\n".join(lines)


def read(path: str | Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--out", default=str(REPO / "docs" / "data" / "search-noise.csv"))
    a = p.parse_args()
    rows = run(a.trials)
    with open(a.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(table(rows))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
