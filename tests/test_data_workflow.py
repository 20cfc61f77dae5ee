"""The data set as the DAG's first node, on an ImageFolder tree as people keep it: a hidden
`.ipynb_checkpoints/` folder inside train/, a val/ that lacks one class, notes beside the images.

One run of a tiny sweep; then what Snakemake schedules after each kind of change to the tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import TIMM_NAME, TINY_KWARGS
from .test_appfile import follow  # an app's preprocessing, with PIL and numpy alone
from .test_data import _jpeg
from .test_workflow import REPO, scheduled, snakemake

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def config(root) -> dict:
    return {
        "dataset": {"name": "imagefolder", "root": str(root)},
        "models": [
            {
                "id": "tiny",
                "timm_name": TIMM_NAME,
                "weights": "train",
                "kwargs": {**TINY_KWARGS, "in_chans": 3},
                "data_config": {"crop_pct": 1.0},
                "train": {
                    "epochs": 4,
                    "lr": 3e-3,
                    "batch_size": 8,
                    "smoothing": 0.0,
                    "warmup_epochs": 0,
                    "hflip": 0.0,
                    "color_jitter": None,
                },
            }
        ],
        "prune": {"importances": ["l2"], "ratios": [0.5]},  # one branch, pruned and finetuned (CI time)
        "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 8, "warmup_epochs": 0},
        "quantize": {"precisions": ["fp32"]},
        "export": {"formats": ["ptl"], "check_images": 8},
        "evaluate": {"threads": 1, "warmup": 1, "runs": 2, "eager_baseline": False, "without_pqv": False},
        "profile": {"artifacts": []},
    }


def make_tree(root):
    for split, n in (("train", 10), ("val", 4)):
        for name, (r, g, b) in COLOURS.items():
            if split == "val" and name == "blue":
                continue  # val/ lacks a class: it cannot be scored, and must not shift the others
            for i in range(n):
                _jpeg(root / split / name / f"{i}.jpg", (r, g + 3 * i, b))
    _jpeg(root / "train" / ".ipynb_checkpoints" / "0-checkpoint.jpg", (1, 2, 3))
    (root / "train" / "red" / "notes.txt").write_text("not an image")


def audited_run(workdir: Path, cfg: dict, audit: Path) -> subprocess.CompletedProcess:
    """The workflow with every folder listing under the data root logged (bench/audit)."""
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "bench" / "audit"),
        "PQV_AUDIT_ROOT": cfg["dataset"]["root"],
        "PQV_AUDIT_LOG": str(audit),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(workdir / "config.yaml"),
            "--cores",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("imagefolder-sweep")
    make_tree(workdir / "photos")
    cfg = config(workdir / "photos")
    result = audited_run(workdir, cfg, workdir / "listings.tsv")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, cfg


def test_the_sweep_scores_hidden_folders_and_missing_classes_right(sweep):
    workdir, _ = sweep
    manifests = {s: json.loads((workdir / f"results/data/{s}.json").read_text()) for s in ("train", "eval")}
    assert manifests["train"]["classes"] == manifests["eval"]["classes"] == ["blue", "green", "red"]
    assert [manifests[s]["splits"][s]["images"] for s in ("train", "eval")] == [30, 8]
    assert "cannot be scored: blue" in manifests["eval"]["warnings"][0]
    assert "cannot be scored: blue" in (workdir / "results/logs/data_eval.log").read_text()
    base = json.loads((workdir / "results/tiny/model.safetensors.json").read_text())
    assert base["classes"] == 3
    summary = pd.read_csv(workdir / "results/summary.csv")
    assert set(summary["status"]) == {"verified"}
    assert (summary["top1"] > 50).all(), summary[["importance", "ratio", "format", "top1"]]  # chance: 50 % (2 scored classes)


def test_a_shipped_file_and_its_app_file_alone_give_the_workflows_top1(sweep):
    """Issue 31: labels, input and preprocessing beside the file, readable without PQV. (Before the
    tests below change the tree.)"""
    import torch
    from torch.jit.mobile import _load_for_lite_interpreter  # what the Android/iOS Lite runtime does

    workdir, cfg = sweep
    artifact = workdir / "results/tiny/l2_0.5/export/fp32-none.ptl"
    app = json.loads(Path(f"{artifact}.app.json").read_text())
    assert app["labels"] == ["blue", "green", "red"] and app["input"]["shape"] == [1, 3, 8, 8]  # the tiny ViT
    model = _load_for_lite_interpreter(str(artifact))
    right = total = 0
    for folder in sorted((Path(cfg["dataset"]["root"]) / "val").iterdir()):
        if folder.name.startswith("."):
            continue
        for image in sorted(folder.glob("*.jpg")):
            logits = model(torch.from_numpy(follow(str(image), app["preprocess"])[None].astype("float32")))
            right += app["labels"][int(logits.argmax())] == folder.name
            total += 1
    workflow = json.loads((workdir / "results/tiny/l2_0.5/eval/fp32-none.ptl.accuracy.json").read_text())
    assert total == workflow["images"] and 100 * right / total == pytest.approx(workflow["top1"])


def test_changes_outside_the_class_folders_rerun_nothing(sweep):
    workdir, cfg = sweep
    root = workdir / "photos"
    assert scheduled(snakemake(workdir, "-n", config=cfg)) == Counter()
    _jpeg(root / "train" / ".ipynb_checkpoints" / "1-checkpoint.jpg", (5, 5, 5))
    _jpeg(root / "val" / ".thumbnails" / "x.jpg", (5, 5, 5))
    _jpeg(root / "test" / "red" / "0.jpg", (5, 5, 5))  # a split the config does not name
    (root / "train" / "README.md").write_text("files beside the class folders are not images of a class")
    assert scheduled(snakemake(workdir, "-n", config=cfg)) == Counter()


def test_an_added_image_reruns_the_data_job_and_what_reads_it(sweep):
    workdir, cfg = sweep
    everything = scheduled(snakemake(workdir, "-n", "--forceall", config=cfg))
    evaluation = Counter({rule: everything[rule] for rule in ("data_eval", "accuracy", "summary", "plot", "stage_costs", "all")})
    _jpeg(workdir / "photos" / "val" / "green" / "new.jpg", (30, 230, 40))
    plan = snakemake(workdir, "-n", config=cfg)
    # only the accuracy jobs read the evaluation split
    assert scheduled(plan) == evaluation
    assert "params" in plan.stdout.split("rule data_eval:")[1].split("rule ")[0]  # the stamp parameter changed
    # the data job alone, for real: the manifest counts the new image, and the rest is still to do
    result = snakemake(workdir, "results/data/eval.json", config=cfg)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((workdir / "results/data/eval.json").read_text())
    assert manifest["splits"]["eval"]["images"] == 9
    assert scheduled(snakemake(workdir, "-n", config=cfg)) == evaluation - Counter(data_eval=1)


def test_the_sweep_lists_each_class_folder_once(sweep):
    """Measured in every process of the run: the data jobs list the tree once; no stage lists it;
    Snakemake's planning lists each class folder once (the stamp) and a few again (the estimate)."""
    workdir, _ = sweep
    rows = [line.split("\t") for line in (workdir / "listings.tsv").read_text().splitlines()]
    root = os.path.realpath(workdir / "photos")
    by_data_job = Counter(path for _, who, path in rows if who == "pqv:data")
    by_stages = [(who, path) for _, who, path in rows if who.startswith("pqv:") and who != "pqv:data"]
    planning = [path for _, who, path in rows if who.startswith("snakemake:")]
    assert len(by_data_job) + len(by_stages) + len(planning) == len(rows), Counter(who for _, who, _ in rows)
    class_folders = {os.path.join(root, s, c) for s in ("train", "val") for c in COLOURS if (s, c) != ("val", "blue")}
    assert {p for p in by_data_job if p in class_folders} == class_folders
    assert all(by_data_job[p] == 1 for p in class_folders)
    assert by_stages == [], by_stages[:5]
    by_planning = Counter(p for p in planning if p in class_folders)
    assert set(by_planning) == class_folders and all(n <= 2 for n in by_planning.values()), by_planning


def test_a_symbolic_link_loop_in_the_tree_stops_planning_with_one_line(tmp_path):
    """The stamp is computed while Snakemake plans: a link back up the tree is pqv's one line there."""
    root = tmp_path / "data"
    make_tree(root)
    (root / "train" / "red" / "up").symlink_to(root / "train", target_is_directory=True)
    (tmp_path / "work").mkdir()
    result = snakemake(tmp_path / "work", "-n", config=config(root))
    err = result.stdout + result.stderr
    assert result.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    (line,) = [ln for ln in err.splitlines() if "error:" in ln]
    assert line.startswith("pqv data: error: symbolic link loop in the data tree: ") and str(root / "train/red/up") in line
