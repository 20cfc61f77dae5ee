"""What a workflow job pays before it works: the seconds each import takes in a fresh process.

    python bench/import_cost.py                # 5 rounds, prints a table, writes bench/results/import_cost-<date>.csv

Every job is a fresh `python -m pqv <stage>` process, so on the demo (jobs of a few seconds) the
imports are most of the wall time. Each row is the median over `--rounds` fresh interpreters of
`python -c "import <modules>"`, less the median of `python -c "pass"`, with the min and max; the
modules of a row are imported together (later ones share what earlier ones loaded). Stage rows
list what that stage's job imports: the `pqv` module it runs and the libraries it loads while
running (timm to build a model from its safetensors file, ExecuTorch for `.pte` files, torch's
profiler for the paper-method call). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# (row, modules imported together)
ROWS = [
    ("pqv CLI (every job)", ["pqv.cli", "pqv.plan.config"]),
    ("torch", ["torch"]),
    ("timm (with torchvision)", ["torch", "timm"]),
    ("sklearn.datasets (the digits, before 2026-12-03)", ["sklearn.datasets"]),
    ("executorch.exir (lowering .pte)", ["torch", "executorch.exir"]),
    ("executorch runtime (.pte accuracy, latency)", ["torch", "executorch.runtime"]),
    ("torch.profiler + inductor (latency's paper-method call, profile)", ["torch", "torch._inductor.standalone_compile"]),
    ("stage data (digits)", ["pqv.cli", "pqv.stages.data"]),
    ("stage model / prune / finetune (build a model)", ["pqv.cli", "pqv.stages.finetune", "pqv.stages.prune", "timm"]),
    ("stage quantize", ["pqv.cli", "pqv.stages.quantize", "timm"]),
    ("stage export .ptl", ["pqv.cli", "pqv.stages.export", "timm"]),
    ("stage export .pte", ["pqv.cli", "pqv.stages.export", "timm", "executorch.exir"]),
    ("stage accuracy .ptl", ["pqv.cli", "pqv.stages.evaluate", "pqv.common.datasets"]),
    ("stage latency .ptl", ["pqv.cli", "pqv.stages.evaluate", "pqv.common.datasets", "torch._inductor.standalone_compile"]),
]


def seconds(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=HERE.parent)
    return time.perf_counter() - started


def markdown(csv: Path) -> str:
    """The table docs/default-run.md shows, rendered from a CSV this script wrote."""
    t = pd.read_csv(csv)
    t = t[["row", "median_s", "min_s", "max_s"]]
    t.columns = ["imports", "median s", "min s", "max s"]
    return t.to_markdown(index=False, floatfmt=".2f")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    base = [seconds("pass") for _ in range(a.rounds)]
    rows = []
    for name, modules in ROWS:
        times = []
        for _ in range(a.rounds):  # interleaved with the baseline would be fairer; the spread says how much it matters
            times.append(seconds("import " + ", ".join(modules)) - statistics.median(base))
        rows.append(
            {
                "row": name,
                "modules": " ".join(modules),
                "median_s": statistics.median(times),
                "min_s": min(times),
                "max_s": max(times),
                "rounds": a.rounds,
            }
        )
    table = pd.DataFrame(rows)
    from pqv.stages.evaluate import machine  # noqa: E402  (the CPU, as every latency row names it)

    facts = machine()
    table["cpu"] = facts.get("cpu")
    table["date"] = datetime.date.today().isoformat()
    table["python_s"] = statistics.median(base)
    print(table[["row", "median_s", "min_s", "max_s"]].round(2).to_string(index=False))
    out = Path(a.out or HERE / "results" / f"import_cost-{datetime.date.today().isoformat()}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    table.round(3).to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
