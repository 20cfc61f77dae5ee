"""Every mistake a user can make is one line `pqv <stage>: error: ... (fix: ...)`, exit status 2,
before work is wasted, and nothing is written: damaged artifacts, a diverging finetune, an offline
hub, config mistakes in the workflow."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from pqv.common import arch, checkpoint, store
from pqv.plan import fileio
from pqv.plan.errors import PQVError
from pqv.stages import data, export, finetune

from .conftest import job_environment, manifest_file
from .test_workflow import TINY_CONFIG, pqv_commands, snakemake

pytestmark = pytest.mark.usefixtures("warm_jobs")  # their jobs fork from a warm-start server (tests/conftest.py)

SMALL = {"name": "digits", "max_train": 64, "max_eval": 32}


def pqv(*args, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "pqv", *map(str, args)], capture_output=True, text=True, env=job_environment(**(env or {}))
    )


PROGRESS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO |\d+%\|")  # log lines, progress bars


def one_line(result, stage: str, *fragments: str) -> str:
    """The command failed with status 2 and its error is one line, naming problem and fix: the last
    line, after nothing but the stage's progress (timestamped log lines, progress bars)."""
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"pqv {stage}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]
    assert all(PROGRESS.search(line) for line in lines[:-1]), result.stderr[-2000:]
    assert "(fix: " in errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def nothing_in(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


# ---- damaged artifacts ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(saved_tiny, tiny_file):
    """A finetuned model and its quantized and exported files in both families (.ts/.ptl, .pt2/.pte).
    Tests damage copies of them."""
    files = {"model": saved_tiny}
    for fmt in ("ptl", "pte"):
        ir = {"ptl": "ts", "pte": "pt2"}[fmt]
        files[fmt] = tiny_file("fp32", "none", fmt)
        files[ir] = files[fmt].parent / "quantized" / f"fp32-none.{ir}"
    return files


def _copy(src: Path, dst: Path, cut: int | None = None) -> Path:
    """A copy of an artifact and its sidecar; `cut` keeps that many bytes of the artifact."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    dst.write_bytes(data[:cut] if cut else data)
    fileio.sidecar_path(dst).write_text(fileio.sidecar_path(src).read_text())
    return dst


def test_model_file_with_a_cut_architecture_header(artifacts, tmp_path):
    from safetensors import safe_open

    with safe_open(str(artifacts["model"]), framework="pt") as f:
        arch_json = f.metadata()[store.ARCH_KEY]
    bad = _copy(artifacts["model"], tmp_path / "b" / "model-v2.safetensors")  # the sidecar names the stage
    save_file(load_file(str(artifacts["model"])), str(bad), metadata={store.ARCH_KEY: arch_json[: len(arch_json) // 2]})
    out = tmp_path / "out" / "q.ts"
    result = pqv("quantize", "--model", bad, "--out", out, "--precision", "fp32", "--engine", "none")
    one_line(
        result,
        "quantize",
        f"corrupt model file {bad}: its architecture header is cut",
        "remake it with the finetune stage",
        f"snakemake --forcerun {bad}",
    )
    assert nothing_in(out.parent)


def test_model_file_missing_a_tensor(artifacts, tmp_path):
    from safetensors import safe_open

    with safe_open(str(artifacts["model"]), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(artifacts["model"]))
    state.pop("blocks.0.attn.qkv.weight")
    bad = tmp_path / "b" / "pruned.safetensors"  # no sidecar: the stage comes from the name
    bad.parent.mkdir()
    save_file(state, str(bad), metadata=meta)
    out = tmp_path / "out" / "f.safetensors"
    result = pqv("finetune", "--model", bad, "--out", out, "--data", manifest_file(SMALL), "--metrics", tmp_path / "out" / "m.csv")
    one_line(
        result,
        "finetune",
        f"model file {bad} does not fit its architecture",
        "blocks.0.attn.qkv.weight",
        "remake it with the prune stage",
    )
    assert nothing_in(out.parent)


@pytest.mark.parametrize(
    "sidecar, problem",
    [
        ([1, 2], "holds a JSON list, not an object"),
        ({"stage": "quantize", "engine": "none"}, "lacks precision, data_config"),
        (
            {"stage": "quantize", "precision": "fp32", "engine": "none", "data_config": {"input_size": 8}},
            "has no valid data_config.input_size",
        ),
        ('{"stage": "quantize", "prec', "corrupt JSON in"),
    ],
)
def test_sidecar_with_the_wrong_structure(artifacts, tmp_path, sidecar, problem):
    src = _copy(artifacts["ts"], tmp_path / "q" / "fp32-none.ts")
    fileio.sidecar_path(src).write_text(sidecar if isinstance(sidecar, str) else json.dumps(sidecar))
    out = tmp_path / "out" / "fp32-none.ptl"
    result = pqv("export", "--src", src, "--parent", artifacts["model"], "--out", out, "--format", "ptl", "--data", manifest_file())
    one_line(result, "export", problem, f"snakemake --forcerun {src}", "remake it with the quantize stage")
    assert nothing_in(out.parent)


@pytest.mark.parametrize("kind", ["ts", "pt2"])
def test_truncated_quantized_program(artifacts, tmp_path, kind):
    fmt = {"ts": "ptl", "pt2": "pte"}[kind]
    src = _copy(artifacts[kind], tmp_path / "q" / f"fp32-none.{kind}", cut=4000)
    out = tmp_path / "out" / f"fp32-none.{fmt}"
    result = pqv("export", "--src", src, "--parent", artifacts["model"], "--out", out, "--format", fmt, "--data", manifest_file())
    one_line(result, "export", f"corrupt .{kind} file {src}", "remake it with the quantize stage")
    assert nothing_in(out.parent)


@pytest.mark.parametrize("kind", ["ptl", "pte"])
@pytest.mark.parametrize("stage", ["evaluate latency", "evaluate accuracy", "profile"])
def test_truncated_exported_artifact(artifacts, tmp_path, kind, stage):
    bad = _copy(artifacts[kind], tmp_path / "e" / f"fp32-none.{kind}", cut=len(artifacts[kind].read_bytes()) - 100)
    out = tmp_path / "out"
    if stage.startswith("evaluate"):
        result = pqv(*stage.split(), "--artifact", bad, "--out", out / "m.json", "--data", manifest_file())
        stage = "evaluate"
    else:
        result = pqv("profile", "--artifact", bad, "--out-csv", out / "p.csv", "--out-png", out / "p.png", "--runs", 1)
    one_line(result, stage, f"corrupt .{kind} file {bad}", "remake it with the export stage")
    assert nothing_in(out)


def test_a_damaged_program_that_keeps_its_length_is_caught_by_its_checksums(artifacts, tmp_path):
    src = _copy(artifacts["ptl"], tmp_path / "e" / "fp32-none.ptl")
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    src.write_bytes(bytes(data))
    with pytest.raises(PQVError, match="fails its checksum.*remake it with the export stage"):
        export.load(str(src), "ptl", "none")


# ---- training, hub, permissions, resume ------------------------------------------------------


def test_a_diverging_finetune_is_a_failed_branch_with_its_reason(saved_tiny, tmp_path):
    """A result of the branch's settings, not a crash (issue 29): one sweep or search goes on; the
    pruned model is kept unfinetuned, flagged, and every file made from it says why."""
    out = tmp_path / "out" / "finetuned.safetensors"
    hparams = {"epochs": 2, "lr": 1e30, "warmup_epochs": 0, "batch_size": 32, "smoothing": 0.0}
    result = pqv(
        "finetune",
        "--model",
        saved_tiny,
        "--out",
        out,
        "--data",
        manifest_file(SMALL),
        "--hparams",
        json.dumps(hparams),
        "--metrics",
        out.parent / "m.csv",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "FAILED: training diverged at epoch 1" in result.stderr and "lower lr (now 1e+30)" in result.stderr
    side = fileio.read_sidecar(out)
    assert side["status"] == "failed" and side["reason"].startswith("training diverged at epoch 1")
    loaded, _ = store.load_model(out)
    assert all(torch.isfinite(p).all() for p in loaded.parameters())  # the pruned model, not NaN weights
    assert not (tmp_path / "out" / "finetuned.safetensors.ckpt").exists()


@pytest.mark.parametrize(
    "env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}], ids=["offline-mode", "unreachable-endpoint"]
)
def test_hub_weights_without_network_fail_fast_with_how_to_predownload(tmp_path, env):
    out = tmp_path / "out" / "model.safetensors"
    cfg = {"id": "d", "timm_name": "deit_tiny_patch16_224", "weights": "hub"}
    result = pqv(
        "model",
        "--model-cfg",
        json.dumps(cfg),
        "--data",
        manifest_file(),
        "--out",
        out,
        "--metrics",
        out.parent / "m.csv",
        env={"HF_HOME": str(tmp_path / "hf"), **env},
    )
    one_line(
        result,
        "model",
        "the hub is out of reach (offline)",
        "'deit_tiny_patch16_224' are not in the local cache",
        "timm.create_model('deit_tiny_patch16_224', pretrained=True)",
        "set weights to a local file",
    )
    assert nothing_in(out.parent)


def test_model_files_are_as_readable_as_every_other_artifact(trained_tiny, tmp_path):
    m, a, _ = trained_tiny
    store.save_model(m, tmp_path / "m.safetensors", a)
    fileio.write_json(tmp_path / "m.json", {})
    umask = os.umask(0)
    os.umask(umask)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "m.safetensors") == mode(tmp_path / "m.json") == 0o666 & ~umask


def test_a_checkpoint_made_on_other_data_is_not_resumed(saved_tiny, tmp_path, monkeypatch):
    out = tmp_path / "finetuned.safetensors"
    hp = {"epochs": 2, "lr": 1e-3, "batch_size": 32}
    save = checkpoint.save_checkpoint

    def killed_after_epoch_1(ckpt_dir, epoch, *args):
        save(ckpt_dir, epoch, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(str(saved_tiny), str(out), data.scan(SMALL), hp, str(tmp_path / "m.csv"))
    monkeypatch.undo()
    assert (Path(checkpoint.checkpoint_dir(out)) / "epoch-0001").is_dir()
    other_data = {**SMALL, "split_seed": 1}
    result = finetune.run(str(saved_tiny), str(out), data.scan(other_data), hp, str(tmp_path / "m.csv"))
    assert result["resumed_after_epoch"] == 0


def test_unknown_timm_name_suggests_the_closest_names(tmp_path):
    with pytest.raises(PQVError) as e:
        arch.create("deit_bse_patch16_224")
    assert "unknown timm model 'deit_bse_patch16_224' (did you mean 'deit_base_patch16_224'?)" in str(e.value)
    out = tmp_path / "out" / "model.safetensors"
    cfg = {"id": "d", "timm_name": "deit_bse_patch16_224", "weights": "train"}
    result = pqv("model", "--model-cfg", json.dumps(cfg), "--data", manifest_file(), "--out", out, "--metrics", out.parent / "m.csv")
    one_line(result, "model", "(did you mean 'deit_base_patch16_224'?)", "(fix: use deit_base_patch16_224 or ")
    assert nothing_in(out.parent)


# ---- the workflow: config mistakes stop before any job ------------------------------------------


def _workflow_error(tmp_path, change: dict, *fragments: str) -> None:
    config = {**TINY_CONFIG, **{k: {**TINY_CONFIG.get(k, {}), **v} if isinstance(v, dict) else v for k, v in change.items()}}
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("pqv config: error: ")]
    # Snakemake's own notices (the profile it uses, --configfile extending the default) may precede
    # it; nothing else is printed
    notices = ("is extended by additional config", "Using workflow specific profile")
    others = [line for line in lines if line not in ours and not any(n in line for n in notices)]
    assert len(ours) == 1 and not others, lines
    for fragment in fragments:
        assert fragment in ours[0], ours[0]
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_a_run_whose_data_folder_is_missing_stops_before_any_job(tmp_path):
    """A dry run plans it (the data may live elsewhere); a run stops with one line before its first job."""
    config = {**TINY_CONFIG, "dataset": {"name": "imagefolder", "root": str(tmp_path / "photos")}}
    assert snakemake(tmp_path, "-n", config=config).returncode == 0
    _stops_before_any_job(
        tmp_path,
        config,
        f"pqv config: error: data folder {tmp_path / 'photos' / 'train'} does not "
        "exist (fix: check dataset.root and dataset.train_dir in the config)",
    )


def _stops_before_any_job(tmp_path, config: dict, line: str) -> None:
    """A real run (not a dry run) stops with `line`, status 2, no traceback, and nothing made."""
    result = snakemake(tmp_path, config=config)
    assert result.returncode == 2
    assert line in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_an_evaluation_class_the_training_split_lacks_stops_the_run_before_any_job(tmp_path):
    """(issue 40) Found by listing the class folders when the run starts, not by the evaluation
    split's data job after the model job has trained: no image is read, no job runs."""
    from PIL import Image

    for split, classes in (("train", ("a", "b")), ("val", ("a", "b", "c"))):
        for c in classes:
            (tmp_path / "photos" / split / c).mkdir(parents=True)
            Image.new("L", (8, 8), 40 * len(c)).save(tmp_path / "photos" / split / c / "0.png")
    config = {**TINY_CONFIG, "dataset": {"name": "imagefolder", "root": str(tmp_path / "photos")}}
    _stops_before_any_job(
        tmp_path,
        config,
        f"pqv config: error: the evaluation split {tmp_path / 'photos' / 'val'} has "
        "class(es) the training split lacks: c (the model has no output for them)",
    )


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"prun": {"ratios": [0.25]}}, ["unknown key 'prun' (did you mean 'prune'?)", "(fix: rename it to 'prune')"]),
        ({"quantize": {"precisions": ["int8_dynamc"]}}, ["did you mean 'int8_dynamic'?"]),
        ({"profile": {"artifacts": [{"importance": "tayler"}]}}, ["asks for importance 'tayler'", "did you mean 'taylor'?"]),
        ({"finetune": {"opt": "adamww"}}, ["finetune.opt: unknown timm optimizer 'adamww'"]),
        ({"finetune": {"sched": "cosin"}}, ["finetune.sched is 'cosin', not a valid value"]),
        ({"prune": {"heads": "dims", "head_ratio": 0.5}}, ["applies to whole-head pruning only"]),
        ({"finetune": {"mixup": 0.8, "batch_size": 63}}, ["mixup/cutmix need an even batch_size, got 63"]),
        ({"quantize": {"engines": ["x86", "xnnpack"]}}, ["quantize.engines lists 'xnnpack'", "add pte to export.formats"]),
        (
            {"models": [{**TINY_CONFIG["models"][0], "timm_name": "vit_tiny_patch16_22"}]},
            ["models[0].timm_name: unknown timm model 'vit_tiny_patch16_22'", "did you mean 'vit_tiny_patch16_224'?"],
        ),
        # two models with one id: the second silently replaced the first
        (
            {"models": [TINY_CONFIG["models"][0], {**TINY_CONFIG["models"][0], "timm_name": "deit_tiny_patch16_224"}]},
            ["models[1].id 'tiny' is also models[0].id", "give every model its own id"],
        ),
        # a results folder nobody can write (root included): the first job failed with a traceback
        ({"results": "/sys/pqv-results"}, ["the results folder /sys/pqv-results cannot be written", "set results: to a folder"]),
        # a .pte operator profile without ExecuTorch's event tracer: it stopped the sweep after 36 jobs
        (
            {
                "export": {"formats": ["pte"]},
                "quantize": {"precisions": ["fp32"], "engines": ["xnnpack"]},
                "profile": {"artifacts": [{"format": "pte"}]},
            },
            ["selects .pte files", "bash envs/etdump.sh"],
        ),
    ],
)
def test_config_mistakes_are_one_line_before_any_job(tmp_path, change, fragments, monkeypatch):
    # whatever this machine has installed (envs/etdump.sh), the run sees no event tracer
    monkeypatch.setenv("PQV_ETDUMP_PYTHON", str(tmp_path / "no-such-python"))
    _workflow_error(tmp_path, change, *fragments)


@pytest.mark.parametrize("precisions", [["fp32"], ["fp32", "fp16"]])
def test_a_float_only_sweep_plans_with_the_default_engines(tmp_path, precisions):
    from .test_workflow import scheduled

    config = {**TINY_CONFIG, "quantize": {"precisions": precisions}, "profile": {"artifacts": []}}
    result = snakemake(tmp_path, "-n", config=config)
    assert result.returncode == 0, result.stderr[-2000:]
    # 3 branches, one artifact per float precision each, no engine-specific job
    assert scheduled(result)["export"] == 3 * len(precisions)
    assert "-x86." not in result.stdout and "quantized/fp32-none.ts" in result.stdout


# ---- issue 20: mistakes that reached the user as something else -------------------------------


def test_a_results_path_with_a_space_is_quoted_in_every_command(tmp_path):
    """Every rule's command keeps a path with a space whole (it split into `unrecognized arguments`),
    and a job with such paths runs."""
    import shlex

    config = {**TINY_CONFIG, "results": "my results"}
    plan = snakemake(tmp_path, "-n", "-p", "--forceall", config=config)
    commands = pqv_commands(plan)
    assert len({c.split(" -m pqv ")[1].split()[0] for c in commands}) >= 9  # every stage's command
    for command in commands:
        words = shlex.split(command)
        assert "my" not in words and "results/data/train.json" not in words, command
        assert any(w.startswith("my results/") for w in words), command
    result = snakemake(tmp_path, "my results/data/eval.json", config=config)
    assert result.returncode == 0 and (tmp_path / "my results/data/eval.json").exists(), result.stderr[-2000:]


def test_a_full_disk_is_one_line_before_the_file_and_a_dead_writers_part_file_goes(trained_tiny, tmp_path, monkeypatch):
    m, a, _ = trained_tiny
    out = tmp_path / "model.safetensors"
    stale = tmp_path / ".model.safetensors.abc123.part"  # left by a writer that died in C++ (terminate)
    stale.write_bytes(b"half a model")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 * 2**20))
    with pytest.raises(PQVError, match=r"not enough disk space for .*model.safetensors: 10 MB free.*larger disk"):
        store.save_model(m, out, a)
    assert not out.exists() and not stale.exists() and not list(tmp_path.glob("*.part"))
    monkeypatch.undo()
    store.save_model(m, out, a)
    assert out.exists()


def test_enospc_while_writing_names_the_full_disk(tmp_path):
    import errno

    with pytest.raises(PQVError, match=r"the disk holding .* is full \(writing x.bin\)"):
        with fileio.atomic_path(tmp_path / "x.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not list(tmp_path.iterdir())


def test_a_file_of_another_runtime_version_is_not_called_corrupt(artifacts, tmp_path):
    pte = _copy(artifacts["pte"], tmp_path / "e" / "fp32-none.pte")
    raw = bytearray(pte.read_bytes())
    raw[4:8] = b"ET99"  # a program format this runtime does not read
    pte.write_bytes(bytes(raw))
    meta = json.loads(fileio.sidecar_path(pte).read_text())
    meta["versions"]["executorch"] = "9.9.0"
    fileio.sidecar_path(pte).write_text(json.dumps(meta))
    with pytest.raises(PQVError) as e:
        export.load(str(pte), "pte", "none")
    assert "was made with executorch 9.9.0 (this machine has executorch 1.3.1)" in str(e.value)
    assert "corrupt" not in str(e.value) and "export it again with these versions" in str(e.value)


def test_the_hub_check_goes_through_the_proxy_the_environment_names(monkeypatch):
    import socket

    from pqv.stages import model

    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # unreachable from anywhere
    assert model.hub_offline()
    with socket.socket() as proxy:  # a proxy that accepts connections
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(1)
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        assert not model.hub_offline()
        monkeypatch.setenv("NO_PROXY", "hub.invalid")
        assert model.hub_offline()


@pytest.mark.parametrize("summary", ["empty", "folder", "other"])
def test_choose_on_a_file_that_is_not_a_summary_is_one_line(tmp_path, summary):
    """Issue 31: pandas tracebacks for an empty file or a folder."""
    path = tmp_path / "summary.csv"
    if summary == "empty":
        path.write_text("")
    elif summary == "folder":
        path.mkdir()
    else:
        path.write_text("a,b\n1,2\n")
    result = pqv("choose", "--summary", path, "--max-accuracy-loss", "1")
    one_line(result, "choose", str(path), "summary.csv")


def test_choose_finds_a_runs_summary_from_the_runs_own_config_files(tmp_path):
    """(issue 43) After a run whose config sets its own results: folder, `pqv choose` without
    --summary said "run the workflow first": wrong, the run happened. --configfile reads the folder
    from the files the run used; the missing-summary line names both ways."""
    config = tmp_path / "my.yaml"
    config.write_text("results: my-results\n")
    missing = subprocess.run(
        [sys.executable, "-m", "pqv", "choose", "--max-accuracy-loss", "1"], capture_output=True, text=True, cwd=tmp_path
    )
    one_line(missing, "choose", "no summary at results/summary.csv", "--configfile")
    found = subprocess.run(
        [sys.executable, "-m", "pqv", "choose", "--configfile", str(config), "--max-accuracy-loss", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    one_line(found, "choose", "no summary at my-results/summary.csv", "--summary FOLDER/summary.csv")
