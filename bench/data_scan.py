"""How often a sweep lists an ImageNet-shaped tree, and what the data check and each job's data set
set-up cost, for the code in --repo (this checkout by default; a `git worktree` of an older commit
measures "before").

    python bench/data_scan.py                                   # this checkout
    git worktree add /tmp/pqv-before <commit> && python bench/data_scan.py --repo /tmp/pqv-before --label before

The tree: 1,000 class folders, --train-per-class and --val-per-class files each (default 100 and
10: 110,000 files), hard links to a few tiny JPEGs. Three measurements, each in a fresh process
with PYTHONPATH=--repo:
- check: the full data check on a cold cache (after: the data job, `pqv data`; before:
  pqv.imagecheck.check_splits);
- setup: what one job spends building its data sets of both splits once the check has run
  (after: from the manifest; before: pqv.stages.data.dataset, which re-lists both splits);
- sweep: a tiny sweep (3 branches x fp32/int8 .ptl, max_train/max_eval subsets) run by Snakemake
  with bench/audit/sitecustomize.py counting every folder listing under the tree, per process.
Prints a table and writes bench/results/data_scan-<label>.csv. Method: DESIGN.md ("Measuring").
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

HERE = Path(__file__).resolve().parent
AUDIT = HERE / "audit"


def build_tree(root: Path, classes: int, train: int, val: int) -> int:
    """An ImageNet-shaped tree of hard links to four tiny JPEGs; returns the number of files."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    sources = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        path = root / f".source-{i}.jpg"
        Image.new("RGB", (16, 16), colour).save(path, quality=90)
        sources.append(path)
    files = 0
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                os.link(sources[(c + i) % len(sources)], folder / f"n{c:08d}_{i}.JPEG")
                files += 1
    return files


CHECK = {  # code run in a fresh process, for each version of the data stage
    "after": "from pqv.stages import data; data.run(SPEC, OUT, threads=THREADS)",
    "before": "from pqv import imagecheck; imagecheck.check_splits(SPEC)",
}
SETUP = {
    "after": "from pqv.common import datasets; [datasets.dataset(OUT, s, DC) for s in ('train', 'eval')]",
    "before": "from pqv import data; [data.dataset(SPEC, s, DC) for s in ('train', 'eval')]",
}
PRELUDE = """
import json, sys, time
SPEC, OUT, THREADS = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
DC = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0}
import torch, timm  # imports are not what is measured
start = time.perf_counter()
"""


def version(repo: Path) -> str:
    return "after" if (repo / "pqv" / "datasets.py").exists() else "before"


def timed(repo: Path, code: str, spec: dict, out: Path, threads: int, env: dict) -> float:
    script = PRELUDE + code + "\nprint(time.perf_counter() - start)\n"
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(spec), str(out), str(threads)], env=env, capture_output=True, text=True, cwd=repo
    )
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return float(done.stdout.strip().splitlines()[-1])


def sweep_config(spec: dict) -> dict:
    return {
        "dataset": {**spec, "max_train": 256, "max_eval": 128},
        "models": [
            {
                "id": "tiny",
                "timm_name": "vit_tiny_patch16_224",
                "weights": "train",
                "kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 48, "depth": 2, "num_heads": 3},
                "data_config": {"crop_pct": 1.0},
                "train": {"epochs": 1, "batch_size": 64},
            }
        ],
        "prune": {"importances": ["l2", "taylor"], "ratios": [0.0, 0.5], "calibration_batches": 1, "batch_size": 16},
        "finetune": {"epochs": 1, "batch_size": 64},
        "quantize": {"precisions": ["fp32", "int8_dynamic"], "engines": ["x86"]},
        "export": {"formats": ["ptl"], "check_images": 16},
        "evaluate": {"threads": 1, "warmup": 1, "runs": 3},
        "profile": {"artifacts": []},
    }


def sweep(repo: Path, spec: dict, work: Path, env: dict) -> tuple[dict, float]:
    """Run the tiny sweep with every listing under the tree logged; listings per kind of process."""
    log = work / "listings.tsv"
    (work / "config.yaml").write_text(yaml.safe_dump(sweep_config(spec)))
    env = {
        **env,
        "PYTHONPATH": os.pathsep.join([str(AUDIT), str(repo)]),
        "PQV_AUDIT_ROOT": spec["root"],
        "PQV_CACHE": str(work / "cache"),  # a cold cache, as a new sweep has
        "PQV_AUDIT_LOG": str(log),
    }
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(repo / "Snakefile"),
            "--directory",
            str(work),
            "--configfile",
            str(work / "config.yaml"),
            "--cores",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-3000:])
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    class_dirs = [(who, path) for _, who, path in rows if Path(path).parent.name in ("train", "val")]
    by_who = collections.Counter(who.split(":")[1] if who.startswith("pqv:") else "snakemake (planning)" for who, _ in class_dirs)
    jobs = len(list((work / "logs").rglob("*.log")))
    return {
        "listings_of_class_folders": len(class_dirs),
        "listings_by": dict(by_who),
        "jobs": jobs,
        "class_folder_listings_per_folder": round(len(class_dirs) / 2000, 2),
    }, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=str(HERE.parent), help="the PQV checkout whose code is measured")
    p.add_argument("--label", default=None, help="name of this measurement (default: after/before by the code)")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(HERE / "results"))
    a = p.parse_args()
    repo = Path(a.repo).resolve()
    kind = version(repo)
    label = a.label or kind
    scratch = Path(tempfile.mkdtemp(prefix="pqv-data-scan-"))
    try:
        started = time.perf_counter()
        files = build_tree(scratch / "imagenet", a.classes, a.train_per_class, a.val_per_class)
        print(f"tree: {files} files in {2 * a.classes} class folders ({time.perf_counter() - started:.1f} s to link)")
        spec = {"name": "imagefolder", "root": str(scratch / "imagenet"), "train_dir": "train", "eval_dir": "val"}
        env = {**os.environ, "PYTHONPATH": str(repo), "PQV_CACHE": str(scratch / "cache")}
        manifest = scratch / "manifest.json"
        check_s = timed(repo, CHECK[kind], spec, manifest, a.threads, env)
        setup_s = timed(repo, SETUP[kind], spec, manifest, a.threads, env)
        (scratch / "sweep").mkdir()
        listings, sweep_s = sweep(repo, spec, scratch / "sweep", env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    row = {
        "label": label,
        "code": kind,
        "files": files,
        "class_folders": 2 * a.classes,
        "check_s": round(check_s, 2),
        "setup_s_per_job": round(setup_s, 3),
        **{k: v for k, v in listings.items() if k != "listings_by"},
        "listings_by": json.dumps(listings["listings_by"], sort_keys=True),
        "sweep_wall_s": round(sweep_s, 1),
        "threads": a.threads,
        "cpu": _cpu(),
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
    }
    table = pd.DataFrame([row])
    print(table.T.to_string(header=False))
    out = Path(a.out) / f"data_scan-{label}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    print(f"wrote {out}")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
