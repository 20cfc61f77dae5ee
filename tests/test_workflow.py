"""The Snakemake DAG end to end on a tiny config, in a temporary folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pqv.plan import warm

from .conftest import TIMM_NAME, TINY_KWARGS, job_environment

pytestmark = pytest.mark.usefixtures("warm_jobs")  # their jobs fork from a warm-start server (tests/conftest.py)

REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = {
    "dataset": {"name": "digits"},
    "models": [
        {
            "id": "tiny",
            "timm_name": TIMM_NAME,
            "weights": "train",
            "kwargs": TINY_KWARGS,
            "train": {"epochs": 3, "lr": 3e-3, "batch_size": 64, "smoothing": 0.0},
        }
    ],
    "prune": {"importances": ["l2", "taylor"], "ratios": [0.0, 0.5], "calibration_batches": 2},
    "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 64},
    "quantize": {"precisions": ["fp32", "int8_dynamic"], "engines": ["x86"]},
    # a model trained for 3 epochs has small logits: int8's noise is a larger share of them
    "export": {"formats": ["ptl"], "min_cosine": 0.95},
    "evaluate": {"threads": 1, "warmup": 1, "runs": 3, "without_pqv": False},  # on in one test of its own
    "profile": {"artifacts": [{"importance": "l2", "precision": "int8_dynamic"}], "runs": 2, "warmup": 1},
}


def snakemake(workdir: Path, *args: str, config: dict | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    cfg = workdir / "config.yaml"
    cfg.write_text(yaml.safe_dump(config or TINY_CONFIG))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(cfg),
        "--cores",
        "2",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env or job_environment())


def pqv_commands(result: subprocess.CompletedProcess) -> list[str]:
    """The pqv command lines of a `-n -p` plan, as `... -m pqv <stage> ...` (without the workflow's
    --log-usage flag, which every job gets)."""
    return [line.strip().replace(" -m pqv --log-usage ", " -m pqv ") for line in result.stdout.splitlines() if " -m pqv " in line]


def scheduled(result: subprocess.CompletedProcess) -> Counter:
    """Jobs per rule from a dry run's 'Job stats' table (empty when nothing is to be done)."""
    out = result.stdout + result.stderr
    if "Nothing to be done" in out:
        return Counter()
    table = out.split("Job stats:")[1].split("total")[0]
    return Counter({m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The workflow on the tiny config, run once: the folder it ran in. Tests that change a file in
    it put it back as it was (bytes and times)."""
    workdir = tmp_path_factory.mktemp("workflow")
    # with a warm-start server of its own, as a user's run has (test_stage_costs_sum_every_jobs_benchmark)
    result = snakemake(workdir, env={k: v for k, v in job_environment().items() if k != warm.ENV})
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_dry_run_lists_every_stage_of_the_sweep(tmp_path):
    jobs = scheduled(snakemake(tmp_path, "-n"))
    # 3 branches (dense, l2 0.5, taylor 0.5) x 2 precisions, plus each branch's eager baseline; the
    # dense branch is passed through, not finetuned (finetune.dense: false)
    assert jobs == Counter(
        data_train=1,
        data_eval=1,
        model=1,
        prune=3,
        finetune=2,
        keep_dense=1,
        quantize=6,
        export=6,
        accuracy=9,
        latency=9,
        profile=1,
        summary=1,
        stage_costs=1,
        plot=1,
        all=1,
    )


def test_finetuning_the_dense_branch_is_opt_in(tmp_path):
    config = {**TINY_CONFIG, "finetune": {**TINY_CONFIG["finetune"], "dense": True}}
    jobs = scheduled(snakemake(tmp_path, "-n", config=config))
    assert jobs["finetune"] == 3 and "keep_dense" not in jobs


def test_device_is_passed_to_every_gradient_and_accuracy_job_and_reruns_nothing(finished):
    result = snakemake(finished, "-n", "-p", "--forceall", config={**TINY_CONFIG, "device": "cpu"})
    commands = pqv_commands(result)
    for stage in ("model", "prune", "finetune", "evaluate accuracy"):
        assert any(f"-m pqv {stage} " in c and "--device cpu" in c for c in commands), stage
    assert scheduled(snakemake(finished, "-n", config={**TINY_CONFIG, "device": "cpu"})) == Counter()


def test_shipped_configs_plan_their_sweeps(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("dataset: {root: /placeholder/imagenet}\n")
    base = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
    ]
    default = subprocess.run(base, capture_output=True, text=True)
    # 10 files, 5 eager baselines and the file without PQV (evaluate.without_pqv: ONNX Runtime's plain int8 of the dense model)
    assert scheduled(default)["latency"] == scheduled(default)["accuracy"] == 10 + 5 + 1
    paper = subprocess.run(base + ["--configfile", str(REPO / "config/paper.yaml"), str(site)], capture_output=True, text=True)
    # 2 models x (dense + 4 importances x 3 ratios) branches x (fp32 + int8 on 4 engines in .ptl,
    # fp32 + int8 xnnpack in .pte), and each model's file without PQV
    assert scheduled(paper)["export"] == 2 * 13 * 7 + 2, paper.stderr[-2000:]
    cifar = subprocess.run(base + ["--configfile", str(REPO / "config/cifar10.yaml")], capture_output=True, text=True)
    # 5 branches x (fp32 ptl + fp32 pte + int8 dynamic/static on x86 ptl and xnnpack pte)
    assert scheduled(cifar)["export"] == 5 * 6 + 1, cifar.stderr[-2000:]  # + the file without PQV
    deit_b = subprocess.run(base + ["--configfile", str(REPO / "config/deit_b.yaml")], capture_output=True, text=True)
    # dense (passed through) + taylor 0.09375: fp32/int8 x86 .ptl, fp32/int8 xnnpack .pte, each evaluated; the file
    # without PQV
    assert scheduled(deit_b) == Counter(
        data_train=1,
        data_eval=1,
        model=1,
        prune=2,
        finetune=1,
        keep_dense=1,
        quantize=9,
        export=9,
        accuracy=11,
        latency=11,
        profile=1,
        summary=1,
        stage_costs=1,
        plot=1,
        all=1,
    ), deit_b.stderr[-2000:]

    # a model job that trains its base model holds every core; one that only reads a weights file, one
    def model_threads(result):
        block = re.search(r"^rule model:\n(.*?)\n    resources:", result.stdout + result.stderr, re.S | re.M).group(1)
        found = re.search(r"threads: (\d+)", block)
        return int(found.group(1)) if found else 1

    assert (model_threads(default), model_threads(deit_b)) == (2, 1)
    for files in (["cifar10-wide.yaml"], ["cifar10-wide.yaml", "cifar10-wide-round_to64.yaml"]):
        wide = subprocess.run(base + ["--configfile", *(str(REPO / "config" / f) for f in files)], capture_output=True, text=True)
        # 3 branches (dense, l2 0.09375, l2 0.25) x fp32 and int8 dynamic xnnpack .pte, + the file without PQV
        assert scheduled(wide)["export"] == 3 * 2 + 1 and scheduled(wide)["finetune"] == 2, wide.stderr[-2000:]
    no_root = subprocess.run(base + ["--configfile", str(REPO / "config/paper.yaml")], capture_output=True, text=True)
    assert no_root.returncode != 0 and "dataset.root is required" in no_root.stdout + no_root.stderr


def test_workflow_writes_summary_figures_profile_and_logs(finished):
    summary = pd.read_csv(finished / "results/summary.csv")
    got = set(zip(summary["importance"], summary["ratio"], summary["precision"], summary["engine"], summary["format"]))
    assert got == {
        (imp, r, p, e, f)
        for imp, r in [("dense", 0.0), ("l2", 0.5), ("taylor", 0.5)]
        for p, e, f in [("fp32", "none", "ptl"), ("int8_dynamic", "x86", "ptl"), ("fp32", "none", "eager")]
    }
    required = [
        "model",
        "importance",
        "ratio",
        "precision",
        "engine",
        "format",
        "top1",
        "top5",
        "latency_ms_median",
        "latency_ms_min",
        "latency_ms_max",
        "size_mb",
        "params",
        "macs",
    ]
    assert not summary[required].isna().any().any()
    assert (summary["latency_ms_min"] <= summary["latency_ms_median"]).all()
    assert (summary["latency_ms_median"] <= summary["latency_ms_max"]).all()
    assert (summary["top1"] > 10).all()  # above chance on held-out digits
    dense = summary[summary["ratio"] == 0]["params"].iloc[0]
    assert (summary[summary["ratio"] > 0]["params"] < dense).all()
    for name in ["fig2_latency_memory", "fig4_accuracy", "fig5_importance", "fig6_models", "fig7_engines", "pareto_accuracy_latency"]:
        png = finished / f"results/figures/{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    profile = pd.read_csv(finished / "results/profile/tiny/l2_0.5/int8_dynamic-x86.ptl.csv")
    assert "quantized::linear_dynamic" in set(profile["operator"])
    assert (finished / "results/logs/prune/tiny/taylor_0.5.log").exists()
    assert not (finished / "logs").exists()  # the logs are the run's, under its results folder
    assert set(summary["status"]) == {"verified"}
    # every row's FP32 parent is its branch's eager row; the FP32 .ptl computes the same function
    eager = summary[summary["format"] == "eager"].set_index(["importance", "ratio"])["top1"]
    for _, row in summary.iterrows():
        assert row["eager_top1"] == eager[(row["importance"], row["ratio"])]
        if row["precision"] == "fp32":
            assert row["top1"] == pytest.approx(row["eager_top1"], abs=0.3)


def test_stage_costs_sum_every_jobs_benchmark(finished):
    costs = pd.read_csv(finished / "results/stage_costs.csv").set_index("stage")
    jobs = {
        "data_train": 1,
        "data_eval": 1,
        "model": 1,
        "prune": 3,
        "finetune": 2,
        "keep_dense": 1,
        "quantize": 6,
        "export": 6,
        "accuracy": 9,
        "latency": 9,
        "profile": 1,
        "summary": 1,
    }
    assert costs["jobs"].drop("total").to_dict() == jobs
    assert costs.loc["total", "jobs"] == sum(jobs.values())
    assert (costs["wall_s"] > 0).all() and (costs["max_rss_mb"] > 0).all()
    assert costs.loc["total", "wall_s"] == pytest.approx(costs["wall_s"].drop("total").sum())
    assert costs["mean_load"].to_dict() == pytest.approx((costs["cpu_s"] / costs["wall_s"]).to_dict(), rel=1e-4)  # 6 digits
    # every job's CPU seconds are its own count, from the usage line that ends its log (pqv.common.usage)
    assert costs["cpu_from_log"].to_dict() == costs["jobs"].to_dict()
    assert (costs["cpu_s"] > 0).all()
    # forked from the warm-start server (pqv.common.warmstart): every job but the timed ones and the
    # torch-free data jobs; and the server is gone with the run, its socket's folder with it
    cold = ["data_train", "data_eval", "latency", "profile"]
    assert (costs.loc[cold, "warm"] == 0).all()
    assert costs["warm"].drop([*cold, "total"]).to_dict() == costs["jobs"].drop([*cold, "total"]).to_dict()
    served = (finished / "results/logs/warm_start.log").read_text()
    # and the two jobs the table leaves out: the plot and the table itself
    assert served.count("pqv warm start: job ") == costs["warm"]["total"] + 2 and ": exit 0" in served
    assert not Path(served.split("serving ")[1].split()[0]).parent.exists()


def test_a_recipe_failing_its_check_is_a_result_not_a_crash(finished, tmp_path):
    """An impossible cosine gate rejects every int8 file: the sweep still completes, the rows say why.
    The files are ONNX Runtime's ORT Mobile format: a format of the workflow like any other, from
    the quantize job's .onnx program to `pqv choose`. On a copy of the finished run (its data and
    base model reused)."""
    work = tmp_path / "run"
    shutil.copytree(finished, work, symlinks=True)
    config = {
        **TINY_CONFIG,
        "prune": {**TINY_CONFIG["prune"], "importances": ["l2"], "ratios": [0.0]},
        "quantize": {"precisions": ["fp32", "int8_dynamic"], "engines": ["mlas"]},
        "export": {"formats": ["ort"], "min_cosine": 1.0},
        "profile": {"artifacts": []},
        "evaluate": {**TINY_CONFIG["evaluate"], "eager_baseline": False},
    }
    result = snakemake(work, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(work / "results/summary.csv")
    assert set(summary["format"]) == {"ort"} and summary["runtime"].str.startswith("onnxruntime ").all()
    assert (summary[summary["precision"] == "fp32"]["top1"] > 15).all()  # above chance (10 %): the file computes the model
    int8 = summary[summary["precision"] == "int8_dynamic"]
    assert set(int8["status"]) == {"rejected"} and int8["reason"].str.contains("cosine similarity").all()
    assert set(summary[summary["precision"] == "fp32"]["status"]) == {"verified"}
    assert (work / "results/figures/pareto_accuracy_latency.png").exists()
    chosen = subprocess.run(
        [sys.executable, "-m", "pqv", "choose", "--summary", str(work / "results/summary.csv"), "--max-accuracy-loss", "100"],
        capture_output=True,
        text=True,
    )
    assert chosen.returncode == 0 and "int8_dynamic" not in chosen.stdout


def test_second_run_schedules_nothing(finished):
    assert scheduled(snakemake(finished, "-n")) == Counter()


def test_adding_a_ratio_schedules_only_the_new_branch(finished):
    config = {**TINY_CONFIG, "prune": {**TINY_CONFIG["prune"], "ratios": [0.0, 0.5, 0.25]}}
    jobs = scheduled(snakemake(finished, "-n", config=config))
    # two new branches (l2 0.25, taylor 0.25), each 2 precisions; the l2 int8 one matches the profile
    # selector; then the aggregates
    assert jobs == Counter(
        prune=2, finetune=2, quantize=4, export=4, accuracy=6, latency=6, profile=1, summary=1, stage_costs=1, plot=1, all=1
    )


def test_changing_one_engine_reruns_only_that_engines_jobs(finished):
    config = {**TINY_CONFIG, "quantize": {**TINY_CONFIG["quantize"], "engines": ["onednn"]}}
    jobs = scheduled(snakemake(finished, "-n", config=config))
    # int8 for onednn in 3 branches; the x86 profile selector no longer matches -> profile re-targets
    assert jobs == Counter(quantize=3, export=3, accuracy=3, latency=3, profile=1, summary=1, stage_costs=1, plot=1, all=1)


def test_changing_a_finetune_setting_reruns_finetune_and_below_only(finished):
    config = {**TINY_CONFIG, "finetune": {**TINY_CONFIG["finetune"], "lr": 2e-3}}
    jobs = scheduled(snakemake(finished, "-n", config=config))
    # the two pruned branches; the dense one is not finetuned
    assert jobs == Counter(finetune=2, quantize=4, export=4, accuracy=6, latency=6, profile=1, summary=1, stage_costs=1, plot=1, all=1)


def test_the_printed_fix_for_a_damaged_artifact_works(finished):
    """(issue 20) The fix names `snakemake --forcerun FILE`; deleting the file works too, since `all`
    names every file of the sweep (Snakemake alone makes a missing file only when a planned job needs it)."""
    from .test_errors import one_line

    rel = "results/tiny/l2_0.5/export/fp32-none.ptl"  # as a job sees it, in the workflow's folder
    ptl, sidecar = finished / rel, finished / (rel + ".json")
    kept = {f: (f.read_bytes(), os.stat(f)) for f in (ptl, sidecar)}
    try:
        ptl.write_bytes(kept[ptl][0][:-100])
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pqv",
                "evaluate",
                "latency",
                "--artifact",
                rel,
                "--out",
                "m.json",
                "--data",
                "results/data/train.json",
            ],
            capture_output=True,
            text=True,
            cwd=finished,
        )
        one_line(result, "evaluate", f"corrupt .ptl file {rel}", f"snakemake --forcerun {rel}")
        ptl.unlink()
        sidecar.unlink()
        assert scheduled(snakemake(finished, "-n")) == Counter(
            export=1, accuracy=1, latency=1, summary=1, plot=1, stage_costs=1, all=1
        )
        command = result.stderr.split("`snakemake ")[1].split("`")[0].split()  # the printed fix, as written
        plan = scheduled(snakemake(finished, "-n", *command))
        assert plan["export"] == 1 and plan["accuracy"] == plan["latency"] == 1 and plan["summary"] == 1
    finally:
        for f, (data, st) in kept.items():
            f.write_bytes(data)
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_run_stopped_inside_a_job_being_made_again_remakes_it_and_only_its_branch(finished):
    """Snakemake deletes a job's old outputs before it runs it again (`--forcerun finetune`, a changed
    setting); stopped there, the file is missing while the files made from it remain. The next plain
    run makes it and what depends on it, nothing else."""
    finetuned = finished / "results/tiny/taylor_0.5/finetuned.safetensors"
    kept = (finetuned.read_bytes(), os.stat(finetuned))
    try:
        finetuned.unlink()
        assert scheduled(snakemake(finished, "-n")) == Counter(
            finetune=1, quantize=2, export=2, accuracy=3, latency=3, summary=1, plot=1, stage_costs=1, all=1
        )
    finally:
        finetuned.write_bytes(kept[0])
        os.utime(finetuned, ns=(kept[1].st_atime_ns, kept[1].st_mtime_ns))
    assert scheduled(snakemake(finished, "-n")) == Counter()


def test_choose_picks_the_fastest_artifact_within_the_budget(finished):
    result = subprocess.run(
        [sys.executable, "-m", "pqv", "choose", "--summary", str(finished / "results/summary.csv"), "--max-accuracy-loss", "100"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    summary = pd.read_csv(finished / "results/summary.csv")
    shipped = summary[summary["format"] != "eager"]
    fastest = shipped.sort_values(["latency_ms_median", "size_mb"]).iloc[0]
    assert "fastest within 100 top-1 points" in result.stdout
    assert str(fastest["artifact"]) in result.stdout.split("smallest")[0]
    impossible = subprocess.run(
        [sys.executable, "-m", "pqv", "choose", "--summary", str(finished / "results/summary.csv"), "--max-accuracy-loss", "-1"],
        capture_output=True,
        text=True,
    )
    assert impossible.returncode == 2 and "--max-accuracy-loss -1 is negative" in impossible.stderr
    assert len(impossible.stderr.strip().splitlines()) == 1


def test_the_file_without_pqv_is_a_row_of_its_own_and_every_pick_is_compared_with_it(finished, tmp_path):
    """evaluate.without_pqv (issue 39): ONNX Runtime's plain int8 file of the dense model is built,
    checked and measured like every file; the summary marks it, the figure shows it and `pqv choose`
    prints each pick's speed-up over it. On a copy of the finished run: only its jobs are new."""
    work = tmp_path / "run"
    shutil.copytree(finished, work, symlinks=True)
    config = {**TINY_CONFIG, "evaluate": {**TINY_CONFIG["evaluate"], "without_pqv": True}}
    plan = scheduled(snakemake(work, "-n", config=config))
    assert plan == Counter(quantize=1, export=1, accuracy=1, latency=1, summary=1, stage_costs=1, plot=1, all=1)
    result = snakemake(work, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = pd.read_csv(work / "results/summary.csv")
    bar = summary[summary["without_pqv"]]
    assert len(bar) == 1
    row = bar.iloc[0]
    assert (row["importance"], row["ratio"], row["precision"], row["engine"], row["format"]) == (
        "dense",
        0,
        "int8_dynamic",
        "mlas_plain",
        "onnx",
    )
    assert row["status"] == "verified" and row["top1"] > 15 and row["runtime"].startswith("onnxruntime ")
    assert row["artifact"].endswith("results/tiny/dense_0/export/int8_dynamic-mlas_plain.onnx")
    chosen = subprocess.run(
        [sys.executable, "-m", "pqv", "choose", "--summary", str(work / "results/summary.csv"), "--max-accuracy-loss", "100"],
        capture_output=True,
        text=True,
    )
    assert chosen.returncode == 0, chosen.stderr
    fastest = summary[summary["format"] != "eager"].sort_values(["latency_ms_median", "size_mb"]).iloc[0]
    line = next(x for x in chosen.stdout.splitlines() if x.strip().startswith("without PQV"))
    if fastest["artifact"] == row["artifact"]:  # at this size the bar itself may be the fastest file
        assert "this pick is the file without PQV" in line
    else:
        assert f"{row['latency_ms_median'] / fastest['latency_ms_median']:.2f}x the speed of {row['artifact']}" in line
    assert scheduled(snakemake(work, "-n", config=config)) == Counter()


def test_report_gathers_figures_and_summary(finished):
    result = snakemake(finished, "--report", "report.zip")
    assert result.returncode == 0, result.stderr[-2000:]
    import zipfile

    names = zipfile.ZipFile(finished / "report.zip").namelist()
    assert any(n.endswith("fig2_latency_memory.png") for n in names)
    assert any(n.endswith("summary.csv") for n in names)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"prune": {"ratios": [1.5]}}, "ratios"),
        ({"quantize": {"precisions": ["int3"]}}, "int3"),
        ({"prun": {}}, "prun"),
    ],
)
def test_bad_config_fails_with_a_message_naming_the_key(tmp_path, change, message):
    result = snakemake(tmp_path, "-n", config={**TINY_CONFIG, **change})
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


# ---- exact reruns (docs/configuring.md renders the same table) ----------------------------------

RERUNS = yaml.safe_load((REPO / "tests/data/reruns.yaml").read_text())


def changed(config: dict, settings: dict) -> dict:
    """`config` with dotted keys set (models[0].train.epochs: the first model's)."""
    import copy

    out = copy.deepcopy(config)
    for dotted, value in settings.items():
        node, parts = out, dotted.split(".")
        for part in parts[:-1]:
            name, _, index = part.partition("[")
            node = node.setdefault(name, {})
            if index:
                node = node[int(index.rstrip("]"))]
        node[parts[-1]] = value
    return out


def expected(row: dict) -> Counter:
    jobs = Counter(row["reruns"])
    return jobs + Counter(all=1) if jobs else jobs  # the target rule, whenever anything runs


def test_the_rerun_table_has_a_change_in_every_section():
    sections = {key.split(".")[0].split("[")[0] for row in RERUNS for key in row["set"]}
    assert sections >= {"dataset", "models", "prune", "finetune", "quantize", "export", "evaluate", "profile", "search", "device"}
    assert len(RERUNS) >= 15


@pytest.mark.parametrize("row", RERUNS, ids=[", ".join(f"{k}={v}" for k, v in r["set"].items()) for r in RERUNS])
def test_one_changed_setting_reruns_exactly_the_jobs_that_read_it(finished, row):
    assert scheduled(snakemake(finished, "-n", config=changed(TINY_CONFIG, row["set"]))) == expected(row)


def test_a_stage_whose_code_changed_reruns_with_what_is_made_from_it(finished):
    """After an upgrade that bumps a stage's version (pqv/plan/reruns.py VERSIONS), that stage and what
    is made from its outputs rerun, nothing else."""
    cfg = finished / "config.yaml"
    cfg.write_text(yaml.safe_dump(TINY_CONFIG))
    upgraded = (
        "import sys; from pqv.plan import reruns; reruns.VERSIONS['quantize'] += 1; from snakemake.cli import main; "
        "sys.argv[0] = 'snakemake'; main(sys.argv[1:])"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            upgraded,
            "-n",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(finished),
            "--configfile",
            str(cfg),
            "--cores",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert scheduled(result) == Counter(
        quantize=6, export=6, accuracy=6, latency=6, profile=1, summary=1, plot=1, stage_costs=1, all=1
    ), result.stderr[-2000:]
    assert scheduled(snakemake(finished, "-n")) == Counter()


def test_a_replaced_weights_file_reruns_what_is_made_from_it_and_the_same_bytes_nothing(tmp_path):
    """(issue 40) A local weights file is read by its content: replaced under its path (a retrained
    base model, the same size), it reruns the model job and every job made from it, and so does a
    file gone; the same bytes written back, touched, or moved to another path the config then
    names, rerun nothing. One branch's finetuned model is the target (CI time): every job it needs
    but the data set's is made from the base model."""
    from safetensors.torch import save_file

    from .conftest import tiny_vit

    def write(path, seed):
        save_file({k: v.contiguous() for k, v in tiny_vit(seed).state_dict().items()}, str(path))

    weights = tmp_path / "base" / "w.safetensors"
    weights.parent.mkdir()
    write(weights, seed=0)
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = {
        **TINY_CONFIG,
        "models": [{"id": "tiny", "timm_name": TIMM_NAME, "weights": str(weights), "kwargs": TINY_KWARGS}],
        "prune": {**TINY_CONFIG["prune"], "importances": ["l2"]},
        "quantize": {"precisions": ["fp32"], "engines": ["x86"]},
        "profile": {"artifacts": []},
    }
    target = "results/tiny/l2_0.5/finetuned.safetensors"

    def plan():
        return scheduled(snakemake(workdir, "-n", target, config=config))

    planned = plan()
    result = snakemake(workdir, target, config=config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert plan() == Counter()
    # every job of the branch but the data set's is made from the model
    made_from_model = planned - Counter(data_train=1)
    assert made_from_model == Counter(model=1, prune=1, finetune=1)
    original = weights.read_bytes()
    write(weights, seed=1)  # retrained
    assert len(weights.read_bytes()) == len(original) and weights.read_bytes() != original
    assert plan() == made_from_model
    weights.write_bytes(original)  # the same bytes again, with a new modification time
    assert plan() == Counter()
    later = weights.stat().st_mtime_ns + 10**10
    os.utime(weights, ns=(later, later))  # touched
    assert plan() == Counter()
    moved = tmp_path / "elsewhere" / "base.safetensors"
    moved.parent.mkdir()
    weights.rename(moved)
    assert plan() == made_from_model  # gone: the model job says so
    config["models"] = [{**config["models"][0], "weights": str(moved)}]
    assert plan() == Counter()
