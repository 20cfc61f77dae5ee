"""The same .pte files timed in two ExecuTorch runtimes: the project's (1.3.1) and a newer one.

A newer ExecuTorch ships newer XNNPACK kernels in its runtime. Its exporting side cannot be
installed beside PQV's stack (issue 15: executorch 1.5 wants torch 2.13-2.15, the Lite path keeps
torch 2.12.1), but its runtime can, in the side environment `envs/etdump.sh` builds for profiling.
This script times each file in a fresh process of each runtime, in interleaved rounds (batch 1,
fixed threads, warm-up, median per round), and gives each runtime's speed-up over the project's as
the median of the per-round ratios, with both outputs compared on one input.

    bash envs/etdump.sh                                           # once
    .venv/bin/python bench/runtime.py bench/work/deit_base_patch16_224/l2_0.09375/*.pte
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# Runs under either interpreter, so it imports only torch and executorch.runtime (no pqv).
PROBE = r"""
import json, statistics, sys, time
import torch
from executorch.extension.pybindings import portable_lib
from executorch.runtime import Runtime
import executorch, importlib.metadata as md
path, threads, warmup, runs, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.set_num_threads(threads)
portable_lib._unsafe_reset_threadpool(threads)
method = Runtime.get().load_program(path).load_method("forward")
shape = list(method.metadata.input_tensor_meta(0).sizes())
x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
for _ in range(warmup):
    method.execute([x])
times = []
for _ in range(runs):
    start = time.perf_counter()
    method.execute([x])
    times.append((time.perf_counter() - start) * 1e3)
torch.save(method.execute([x])[0].clone(), out)
print(json.dumps({"median": statistics.median(times), "min": min(times), "max": max(times),
                  "executorch": md.version("executorch"), "torch": torch.__version__,
                  "threads": portable_lib._threadpool_get_thread_count()}))
"""


def time_once(python: str, path: Path, threads: int, warmup: int, runs: int, out: Path) -> dict:
    done = subprocess.run(
        [python, "-c", PROBE, str(path), str(threads), str(warmup), str(runs), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    if done.returncode != 0:
        raise SystemExit(f"{python} could not time {path}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    import pandas as pd
    import torch

    from pqv.plan import fileio
    from pqv.stages import evaluate

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pte", nargs="+", type=Path)
    p.add_argument(
        "--side-python",
        default=os.environ.get("PQV_ETDUMP_PYTHON", "envs/etdump/.venv/bin/python"),
        help="the newer runtime's interpreter (envs/etdump.sh builds it)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="bench/results/runtime.csv")
    args = p.parse_args()
    if not Path(args.side_python).exists():
        raise SystemExit(f"no newer runtime at {args.side_python}: run `bash envs/etdump.sh` or pass --side-python")
    runtimes = {"project": sys.executable, "side": args.side_python}
    scratch = Path(args.out).parent / "runtime-outputs"
    scratch.mkdir(parents=True, exist_ok=True)
    results = {(f, r): [] for f in args.pte for r in runtimes}
    output = {(f, r): scratch / f"{i}-{r}.pt" for i, f in enumerate(args.pte) for r in runtimes}
    for round_ in range(args.rounds):
        for f in args.pte:
            for r, python in runtimes.items():
                t = time_once(python, f, args.threads, args.warmup, args.runs, output[f, r])
                results[f, r].append(t)
                print(f"  round {round_ + 1}: {f.name:<60} {r:<8} executorch {t['executorch']:<7} {t['median']:7.1f} ms", flush=True)
    machine = evaluate.machine()
    table = []
    for f in args.pte:
        project = results[f, "project"]
        for r in runtimes:
            runs = results[f, r]
            table.append(
                {
                    "artifact": str(f),
                    "runtime": r,
                    "executorch": runs[0]["executorch"],
                    "torch": runs[0]["torch"],
                    "threads": runs[0]["threads"],
                    "ms_median": statistics.median(t["median"] for t in runs),
                    "ms_min": min(t["min"] for t in runs),
                    "ms_max": max(t["max"] for t in runs),
                    "round_medians_ms": " ".join(f"{t['median']:.1f}" for t in runs),
                    "speedup_vs_project": statistics.median(a["median"] / b["median"] for a, b in zip(project, runs)),
                    "warmup": args.warmup,
                    "runs": args.runs,
                    "rounds": args.rounds,
                    **machine,
                }
            )
        # same file, same input: the two runtimes must compute the same function
        a, b = (torch.load(output[f, r], weights_only=True) for r in runtimes)
        for row in table[-2:]:
            row["max_abs_diff_between_runtimes"] = (a - b).abs().max().item()
    df = pd.DataFrame(table)
    print(
        f"batch 1, {args.threads} threads, warm-up {args.warmup}, median of {args.runs} per round, "
        f"{args.rounds} interleaved rounds; {machine['cpu']}"
    )
    print(
        df.assign(artifact=df.artifact.map(lambda s: Path(s).name))[
            ["artifact", "executorch", "ms_median", "ms_min", "ms_max", "speedup_vs_project", "max_abs_diff_between_runtimes"]
        ].to_string(index=False)
    )
    with fileio.atomic_path(Path(args.out)) as tmp:
        df.to_csv(tmp, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
