"""What a sweep asks a SLURM cluster for: node-hours and GPU-hours per rule, from Snakemake's own plan.

    python bench/node_hours.py                                   # config/paper.yaml, this checkout
    python bench/node_hours.py --repo /tmp/pqv-before --label before   # a worktree of an older commit

Runs `snakemake -n` in cluster mode (`--jobs`; `--cores` only lifts a dry run's one-core cap) on the config with an ImageNet-sized
data set: manifests that state ImageNet-1k's image counts (1,281,167 / 50,000) stand in for the
data jobs' outputs, so each job's budget is the one the real run would compute, on a partition a
stand-in `sinfo` describes (default: GPUs, a 24-hour limit, which caps every request). Each job's
requested wall time (`runtime`) counts as
node-hours whole when the job asks for the node to itself (`--exclusive`), else as its share of a
node's cores (--node-cores); GPU-hours are runtime x GPUs. Requested, not used: a budget is twice
the expected time plus 10 minutes (pqv/plan/resources.py). Prints a table and writes
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


# The partition the sweep is planned for, as `sinfo -h -o "%P %l %G"` shows it: GPUs and a 24-hour
# limit, as many clusters have (a stand-in sinfo prints it, so the plan does not depend on this machine).
PARTITION = "gpu* 1-00:00:00 gpu:a100:4"


def imagenet_manifests(folder: Path) -> None:
    """The data jobs' manifests with ImageNet-1k's counts and no file list: enough for the budgets."""
    classes = [f"n{c:08d}" for c in range(1000)]
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in IMAGENET.items():
        splits = {split: {"folder": f"/imagenet/{split}", "items": [], "images": n, "counts": {}}}
        (folder / f"{split}.json").write_text(
            json.dumps(
                {
                    "format": 1,
                    "dataset": {"name": "imagefolder"},
                    "classes": classes,
                    "splits": splits,
                    "modes": {},
                    "value_range": None,
                    "warnings": [],
                    "fingerprint": f"imagenet-{split}-counts",
                }
            )
        )


def plan(repo: Path, configfile: Path, work: Path, partition: str = PARTITION, site: str = "") -> subprocess.CompletedProcess:
    """Snakemake's dry run of the sweep in cluster mode on `partition` (a stand-in sinfo's line)."""
    (work / "site.yaml").write_text("dataset: {root: /imagenet}\n" + site)
    imagenet_manifests(work / "results" / "data")
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    # Snakemake imports its SLURM plugin on every run, and the plugin stops there when it finds
    # sinfo but neither sacct nor squeue (it runs scontrol too): silent stand-ins for those.
    for name, body in {"sinfo": f"echo '{partition}'", "sacct": "true", "squeue": "true", "scontrol": "true"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(repo), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(repo / "Snakefile"),
            "--directory",
            str(work),
            "--jobs",
            "100",
            "--cores",
            "4096",
            "--configfile",
            str(configfile),
            str(work / "site.yaml"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )


def jobs(text: str) -> list[dict]:
    out = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        rule = re.match(r"(local)?rule (\w+):", block)
        res = re.search(r"resources: (.*)", block)
        if not rule or not res or rule.group(1):
            continue  # local rules run in Snakemake itself
        values = dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", res.group(1)))
        threads = re.search(r"threads: (\d+)", block)
        out.append(
            {
                "rule": rule.group(2),
                "runtime_min": int(values.get("runtime", 0)),
                "gpus": int(values.get("gpu", 0)),
                "exclusive": "--exclusive" in values.get("slurm_extra", ""),
                "threads": int(threads.group(1)) if threads else 1,
            }
        )
    return out


def markdown(csv: Path) -> str:
    """The table docs/clusters.md shows, rendered from a CSV this script wrote."""
    t = pd.read_csv(csv)
    t = t[["rule", "jobs", "longest_hours", "node_hours", "exclusive_node_hours", "gpu_hours"]].astype({"jobs": int})
    t.columns = ["rule", "jobs", "longest request (h)", "node-hours", "of which exclusive", "GPU-hours"]
    return t.to_markdown(index=False, floatfmt=",.1f")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=str(HERE.parent))
    p.add_argument("--label", default="after")
    p.add_argument("--configfile", default=str(HERE.parent / "config" / "paper.yaml"))
    p.add_argument("--node-cores", type=int, default=64, help="cores of one cluster node")
    p.add_argument("--partition", default=PARTITION, help="the partition, as a line of `sinfo -h -o '%%P %%l %%G'`")
    p.add_argument("--out", default=str(HERE / "results"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pqv-node-hours-") as tmp:
        done = plan(Path(a.repo).resolve(), Path(a.configfile).resolve(), Path(tmp), a.partition)
    if done.returncode:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-3000:])
    planned = jobs(done.stdout)
    totals = defaultdict(lambda: defaultdict(float))
    for job in planned:
        hours = job["runtime_min"] / 60
        row = totals[job["rule"]]
        row["jobs"] += 1
        row["node_hours"] += hours if job["exclusive"] else hours * min(1.0, job["threads"] / a.node_cores)
        row["exclusive_node_hours"] += hours if job["exclusive"] else 0.0
        row["gpu_hours"] += hours * job["gpus"]
        row["longest_hours"] = max(row["longest_hours"], hours)
    table = pd.DataFrame([{"rule": r, **v} for r, v in sorted(totals.items())])
    table = table[table["longest_hours"] > 0].reset_index(drop=True)  # rules run in Snakemake itself ask for nothing
    total = table.drop(columns="rule").sum().to_dict()
    table.loc[len(table)] = {"rule": "total", **total, "longest_hours": table["longest_hours"].max()}
    table.insert(0, "label", a.label)
    table["node_cores"] = a.node_cores
    print(table.round(1).to_string(index=False))
    out = Path(a.out) / f"node_hours-{a.label}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.round(2).to_csv(out, index=False)
    print(f"wrote {out}")
    print(markdown(out))


if __name__ == "__main__":
    main()
