"""What a job's params hold (pqv.plan.reruns): a file the config names is read by its content, not its path.

tests/test_workflow.py checks what Snakemake then schedules; these check the pieces without it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from pqv.plan import reruns
from pqv.plan.config import filled
from pqv.plan.errors import PQVError

from .conftest import TIMM_NAME, TINY_KWARGS


def config_with(weights: str) -> dict:
    return filled(
        {"dataset": {"name": "digits"}, "models": [{"id": "tiny", "timm_name": TIMM_NAME, "weights": weights, "kwargs": TINY_KWARGS}]}
    )


def model_cfg(options: str) -> dict:
    """The --model-cfg JSON of a model job's options."""
    import shlex

    words = shlex.split(options)
    return json.loads(words[words.index("--model-cfg") + 1])


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"base model weights " * 1000)
    return path


def test_a_weights_file_is_in_the_model_jobs_settings_by_its_sha256_and_its_path_is_not(weights):
    import hashlib

    config = config_with(str(weights))
    options = reruns.options("model", config, {"model": "tiny"})
    assert model_cfg(options)["weights"] == "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    assert str(weights) not in options and "w.safetensors" not in options
    assert reruns.files("model", config, {"model": "tiny"}) == {"--weights": str(weights)}
    # no other stage reads it
    assert all(
        not reruns.files(stage, config, {"model": "tiny", "importance": "l2", "ratio": "0.5"}) for stage in ("prune", "finetune")
    )


@pytest.mark.parametrize("weights, in_settings", [("train", "train"), ("hub", None)])
def test_hub_and_train_are_settings_as_before_and_name_no_file(weights, in_settings):
    config = config_with(weights)
    assert model_cfg(reruns.options("model", config, {"model": "tiny"})).get("weights") == in_settings
    assert reruns.files("model", config, {"model": "tiny"}) == {}


def test_the_stamp_follows_the_content_not_the_path_nor_the_time(weights, tmp_path):
    stamp = reruns.file_stamp(str(weights))
    assert stamp.startswith("sha256:")
    moved = tmp_path / "elsewhere" / "w.safetensors"
    moved.parent.mkdir()
    shutil.copyfile(weights, moved)
    os.utime(moved, ns=(1, 1))
    assert reruns.file_stamp(str(moved)) == stamp  # moved, copied, touched: the same bytes
    retrained = bytearray(weights.read_bytes())
    retrained[100] ^= 1  # one bit of a file of the same size
    weights.write_bytes(bytes(retrained))
    assert reruns.file_stamp(str(weights)) != stamp
    assert reruns.file_stamp(str(tmp_path / "missing.safetensors")) == "unreadable: FileNotFoundError"


def test_a_file_is_hashed_once_while_its_size_and_time_stay(weights):
    """The cache is what the Snakefile shares with a cluster's job processes (through the
    environment, as JSON): a job process finds the stamp there instead of hashing the file again."""
    cache: dict = {}
    stamp = reruns.file_stamp(str(weights), cache)
    cache = json.loads(json.dumps(cache))  # as a job process reads it back (pqv.plan.resources.shared_plan)
    ((key, (size, mtime_ns, kept)),) = cache.items()
    assert (key, kept) == (f"file {weights}", stamp)
    cache[key][2] = "sha256:kept"  # a stamp the file does not have: found by size and time, not hashed again
    assert reruns.file_stamp(str(weights), cache) == "sha256:kept"
    os.utime(weights, ns=(mtime_ns + 10**9, mtime_ns + 10**9))  # touched: hashed again, the same content
    assert reruns.file_stamp(str(weights), cache) == stamp and cache[key][2] == stamp
    config = config_with(str(weights))
    assert model_cfg(reruns.options("model", config, {"model": "tiny"}, cache))["weights"] == stamp


def test_the_table_says_the_weights_are_read_by_content():
    row = next(line for line in reruns.table().splitlines() if line.startswith("| `models[].weights`"))
    assert "content's sha256, not its path" in row


def test_a_model_job_refuses_a_file_replaced_after_its_run_was_planned(weights, tmp_path):
    """The job's settings hold the sha256 its run was planned with: a file replaced since then is
    one line, not a model recorded under the old file's stamp."""
    from pqv.stages import model

    planned = reruns.file_stamp(str(weights))
    assert model.planned_weights(str(weights), planned) == str(weights)
    weights.write_bytes(b"retrained")
    with pytest.raises(PQVError, match="changed after this run was planned"):
        model.planned_weights(str(weights), planned)
    missing = str(tmp_path / "missing.safetensors")  # left to the model stage's own error
    assert model.planned_weights(missing, planned) == missing
    cfg = {"id": "tiny", "timm_name": TIMM_NAME, "weights": planned, "kwargs": TINY_KWARGS}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pqv",
            "model",
            "--model-cfg",
            json.dumps(cfg),
            "--weights",
            str(weights),
            "--data",
            "unused.json",
            "--out",
            str(tmp_path / "m.safetensors"),
            "--metrics",
            str(tmp_path / "m.csv"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "changed after this run was planned" in result.stderr, result.stderr
    assert not (tmp_path / "m.safetensors").exists()


# ---- the dataset keys a data job reads (issue 40, item 3) ----------------------------------------


def data_config(**dataset) -> dict:
    return filled({"dataset": dataset, "models": [{"id": "tiny", "timm_name": TIMM_NAME}]})


def test_the_digits_read_no_folder_keys():
    """dataset.root, train_dir and eval_dir name ImageFolder folders: under the digits no job reads
    them, so neither the data jobs' settings nor their stamps change with them."""
    from pqv.plan import manifest as manifests

    plain, foldered = data_config(name="digits"), data_config(name="digits", root="/elsewhere", train_dir="t", eval_dir="v")
    for stage, split in (("data_train", "train"), ("data_eval", "eval")):
        assert reruns.options(stage, foldered, {}) == reruns.options(stage, plain, {})
        assert manifests.stamp(reruns.section_read(stage, foldered, {}, "dataset"), split) == manifests.stamp(
            reruns.section_read(stage, plain, {}, "dataset"), split
        )
    # under imagefolder they are read
    assert '"root": "/a"' in reruns.options("data_train", data_config(name="imagefolder", root="/a"), {})


def test_split_seed_is_read_where_images_are_drawn(tmp_path):
    """The digits split is drawn with split_seed, and so are max_train/max_eval subsets; a whole
    ImageFolder split is not: there a changed split_seed reruns nothing."""
    from pqv.plan import manifest as manifests

    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "0.jpg").write_bytes(b"not decoded by the stamp")

    def read(stage, **dataset):
        config = data_config(**dataset)
        spec = reruns.section_read(stage, config, {}, "dataset")
        return ("dataset", "split_seed") in reruns.settings(stage, config, {}), manifests.stamp(spec, stage.removeprefix("data_"))

    whole = dict(name="imagefolder", root=str(tmp_path))
    for stage in ("data_train", "data_eval"):
        assert read(stage, **whole) == read(stage, **whole, split_seed=7)
        assert not read(stage, **whole, split_seed=7)[0]
        assert read(stage, name="digits", split_seed=7)[0]
    assert read("data_train", **whole, max_train=1, split_seed=7)[0]
    assert not read("data_eval", **whole, max_train=1, split_seed=7)[0]  # the evaluation split is whole
    assert read("data_eval", **whole, max_eval=1, split_seed=7)[0]


# ---- a default changed in code: its stage's version goes with it ----------------------------------


def _stage_defaults():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "stage_defaults.py"
    spec = importlib.util.spec_from_file_location("stage_defaults", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_stages_defaults_are_those_of_its_version():
    """Issue 40: a job's params leave out every key at its default, so a default changed in
    pqv/plan/config.py (or a constant a stage makes its output from) reruns nothing unless its stage's
    version is bumped with it. tests/data/stage_defaults.json holds each stage's version with its
    defaults; this fails, naming the stage, the change and the fix, until both are current."""
    module = _stage_defaults()
    found = module.problems(json.loads(module.SNAPSHOT.read_text()), module.current())
    assert not found, "\n".join(found)


def test_a_changed_default_asks_for_a_bumped_version_then_for_the_snapshot(monkeypatch):
    module = _stage_defaults()
    snapshot = module.current()
    changed = tuple(
        reruns.Key(k.path, k.name, k.reads, k.kind, k.sweep, 3e-4) if k.name == "finetune.lr" else k for k in reruns.keys()
    )  # as if pqv/plan/config.py's default of finetune.lr were 3e-4
    monkeypatch.setattr(reruns, "keys", lambda: changed)
    (line,) = module.problems(snapshot, module.current())
    assert line.startswith("stage finetune's defaults changed (finetune.lr: 0.00015 -> 0.0003)")
    assert "bump its version in pqv/plan/reruns.py VERSIONS (now 1) and run `python scripts/stage_defaults.py`" in line
    monkeypatch.setitem(reruns.VERSIONS, "finetune", 2)
    (line,) = module.problems(snapshot, module.current())
    assert line.startswith("stage finetune's version is 2, the snapshot's 1") and "to update the snapshot" in line
    assert module.problems(module.current(), module.current()) == []
