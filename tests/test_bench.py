"""bench/latency.py's artifact cache is keyed by everything that makes a file: another --model,
--ratio, --round-to, recipe, calibration set or trained model never reuses an earlier run's file."""
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "latency.py"


@pytest.fixture(scope="module")
def latency():
    spec = importlib.util.spec_from_file_location("bench_latency", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_model_paths_differ_by_model_ratio_and_round_to(latency, tmp_path):
    path = latency.model_path
    kinds = ("dense", "pruned", "pruned_round_to")
    base = {k: path(tmp_path, "deit_base_patch16_224", k, 0.09375, 64) for k in kinds}
    assert len(set(base.values())) == 3
    other_model = {k: path(tmp_path, "deit_tiny_patch16_224", k, 0.09375, 64) for k in kinds}
    assert not set(base.values()) & set(other_model.values())
    other_ratio = {k: path(tmp_path, "deit_base_patch16_224", k, 0.25, 64) for k in kinds}
    assert other_ratio["dense"] == base["dense"]  # the dense model does not depend on the ratio
    assert other_ratio["pruned"] != base["pruned"] and other_ratio["pruned_round_to"] != base["pruned_round_to"]
    other_round = {k: path(tmp_path, "deit_base_patch16_224", k, 0.09375, 32) for k in kinds}
    assert other_round["pruned"] == base["pruned"]
    assert other_round["pruned_round_to"] != base["pruned_round_to"]


def test_artifact_paths_differ_by_recipe_and_calibration(latency, tmp_path):
    names = [n for n, r in latency.RECIPES.items() if r.fmt != latency.EAGER]
    digits = {"dataset": {"name": "digits"}, "fingerprint": "d1"}
    paths = {latency.artifact_path(tmp_path, latency.RECIPES[n], digits, 128) for n in names}
    # rows that differ only in threads or source model share a file; every other pair differs
    distinct = {(r.precision, r.engine, r.fmt, tuple(r.options.items()), r.layers)
                for r in (latency.RECIPES[n] for n in names)}
    assert len(paths) == len(distinct)
    static = latency.RECIPES["pte int8_static"]
    dynamic = latency.RECIPES["pte int8_dynamic"]
    assert latency.artifact_path(tmp_path, static, digits, 128) != latency.artifact_path(tmp_path, static, digits, 32)
    folder = {"dataset": {"name": "imagefolder", "root": str(tmp_path)}, "fingerprint": "f2"}
    assert latency.artifact_path(tmp_path, static, digits, 128) != latency.artifact_path(tmp_path, static, folder, 128)
    # an uncalibrated recipe does not depend on the calibration set
    assert latency.artifact_path(tmp_path, dynamic, digits, 128) == latency.artifact_path(tmp_path, dynamic, folder, 32)


def test_trained_artifacts_are_keyed_by_the_file_content(latency, tmp_path):
    a, b, a_copy = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "elsewhere.safetensors"
    a.write_bytes(b"model a")
    b.write_bytes(b"model b")
    a_copy.write_bytes(b"model a")
    work = tmp_path / "work"
    assert latency.trained_folder(work, a) != latency.trained_folder(work, b)
    assert latency.trained_folder(work, a) == latency.trained_folder(work, a_copy)
    before = latency.trained_folder(work, b)
    b.write_bytes(b"model b, retrained")  # same name, new content: a new folder
    assert latency.trained_folder(work, b) != before


def test_pte_files_are_keyed_by_the_layers_code(latency, tmp_path):
    path = latency.artifact_path(tmp_path, latency.RECIPES["pte int8_dynamic"], {"name": "digits"}, 128)
    assert latency.layers_fingerprint() in path.name
    assert latency.layers_fingerprint() not in latency.artifact_path(
        tmp_path, latency.RECIPES["paper recipe"], {"name": "digits"}, 128).name  # a .ptl does not use the twins


@pytest.mark.parametrize("kind", ["timm", "pooled-mean", "portable-layernorm"])
def test_lever_baselines_compute_the_models_function(latency, kind, monkeypatch):
    """A lever row times another way of writing the same model, never a different model."""
    import copy

    import torch

    from .conftest import tiny_vit

    monkeypatch.syspath_prepend(str(BENCH.parent))  # the pooled-mean twin lives in bench/layernorm.py
    model = tiny_vit().eval()
    for block in model.blocks:
        torch.nn.init.normal_(block.norm1.weight, 1.0, 0.3)
        torch.nn.init.normal_(block.norm1.bias, 0.0, 0.3)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(latency.LAYERS[kind](copy.deepcopy(model))(x), model(x), atol=1e-5, rtol=1e-5)
