"""What a sweep asks a SLURM cluster for: node-hours and GPU-hours per rule, from Snakemake's own plan.

    python bench/node_hours.py                                   # config/paper.yaml, this checkout
    python bench/node_hours.py --repo /tmp/pqv-before --label before   # a worktree of an older commit

Runs `snakemake -n` in cluster mode (`--jobs`; `--cores` only lifts a dry run's one-core cap) on the config with an ImageNet-sized
data set: a manifest that states ImageNet-1k's image counts (1,281,167 / 50,000) stands in for the
data job's output, so each job's budget is the one the real run would compute. (Code from before
the data stage budgets ImageNet by itself.) Each job's requested wall time (`runtime`) counts as
node-hours whole when the job asks for the node to itself (`--exclusive`), else as its share of a
node's cores (--node-cores); GPU-hours are runtime x GPUs. Requested, not used: a budget is twice
the expected time plus 10 minutes (pqv/resources.py). Prints a table and writes
bench/results/node_hours-<label>.csv.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
IMAGENET = {"train": 1_281_167, "eval": 50_000}


def imagenet_manifest(path: Path) -> None:
    """A manifest with ImageNet-1k's counts and no file list: enough for the budgets."""
    classes = [f"n{c:08d}" for c in range(1000)]
    splits = {s: {"folder": "/imagenet", "items": [], "images": n, "counts": {}} for s, n in IMAGENET.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": 1, "dataset": {"name": "imagefolder"}, "classes": classes,
                                "splits": splits, "modes": {}, "value_range": None, "warnings": [],
                                "fingerprint": "imagenet-counts"}))


def plan(repo: Path, configfile: Path, work: Path) -> str:
    (work / "site.yaml").write_text("dataset: {root: /imagenet}\n")
    imagenet_manifest(work / "results" / "data" / "manifest.json")
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(repo / "Snakefile"), "--directory",
                           str(work), "--jobs", "100", "--cores", "4096", "--configfile", str(configfile), str(work / "site.yaml")],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-3000:])
    return done.stdout


def jobs(text: str) -> list[dict]:
    out = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        rule = re.match(r"(local)?rule (\w+):", block)
        res = re.search(r"resources: (.*)", block)
        if not rule or not res or rule.group(1):
            continue  # local rules run in Snakemake itself
        values = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", res.group(1)))
        threads = re.search(r"threads: (\d+)", block)
        out.append({"rule": rule.group(2), "runtime_min": int(values.get("runtime", 0)), "gpus": int(values.get("gpu", 0)),
                    "exclusive": "--exclusive" in values.get("slurm_extra", ""), "threads": int(threads.group(1)) if threads else 1})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=str(HERE.parent))
    p.add_argument("--label", default="after")
    p.add_argument("--configfile", default=str(HERE.parent / "config" / "paper.yaml"))
    p.add_argument("--node-cores", type=int, default=64, help="cores of one cluster node")
    p.add_argument("--out", default=str(HERE / "results"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pqv-node-hours-") as tmp:
        planned = jobs(plan(Path(a.repo).resolve(), Path(a.configfile).resolve(), Path(tmp)))
    totals = defaultdict(lambda: defaultdict(float))
    for job in planned:
        hours = job["runtime_min"] / 60
        row = totals[job["rule"]]
        row["jobs"] += 1
        row["node_hours"] += hours if job["exclusive"] else hours * min(1.0, job["threads"] / a.node_cores)
        row["exclusive_node_hours"] += hours if job["exclusive"] else 0.0
        row["gpu_hours"] += hours * job["gpus"]
    table = pd.DataFrame([{"rule": r, **v} for r, v in sorted(totals.items())])
    table.loc[len(table)] = {"rule": "total", **table.drop(columns="rule").sum().to_dict()}
    table.insert(0, "label", a.label)
    table["node_cores"] = a.node_cores
    print(table.round(1).to_string(index=False))
    out = Path(a.out) / f"node_hours-{a.label}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.round(2).to_csv(out, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
