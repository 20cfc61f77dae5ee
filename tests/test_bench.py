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
    distinct = {
        (r.precision, r.engine, r.fmt, tuple(r.options.items()), r.layers, r.merge_r) for r in (latency.RECIPES[n] for n in names)
    }
    assert len(paths) == len(distinct)
    static = latency.RECIPES["pte int8_static"]
    dynamic = latency.RECIPES["pte int8_dynamic"]
    assert latency.artifact_path(tmp_path, static, digits, 128) != latency.artifact_path(tmp_path, static, digits, 32)
    folder = {"dataset": {"name": "imagefolder", "root": str(tmp_path)}, "fingerprint": "f2"}
    assert latency.artifact_path(tmp_path, static, digits, 128) != latency.artifact_path(tmp_path, static, folder, 128)
    # an uncalibrated recipe does not depend on the calibration set
    assert latency.artifact_path(tmp_path, dynamic, digits, 128) == latency.artifact_path(tmp_path, dynamic, folder, 32)
    # a file that merges tokens is named after its r, as the workflow's paths (-tome{r}); r = 0 names nothing
    merged = latency.artifact_path(tmp_path, latency.RECIPES["pte int8 pruned r16"], digits, 128)
    assert "-tome16" in merged.name and "-tome" not in latency.artifact_path(tmp_path, dynamic, digits, 128).name
    assert not any(latency.RECIPES[n].merge_r for n in latency.ORT_ROWS)  # the peer's best never merges tokens


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
    assert (
        latency.layers_fingerprint()
        not in latency.artifact_path(tmp_path, latency.RECIPES["paper recipe"], {"name": "digits"}, 128).name
    )  # a .ptl does not use the twins


@pytest.mark.parametrize("kind", ["timm", "pooled-mean", "portable-layernorm", "fp16-attention"])
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
        tolerance = 2e-3 if kind == "fp16-attention" else 1e-5  # FP16 keeps 11 bits of each attention weight
        torch.testing.assert_close(latency.LAYERS[kind](copy.deepcopy(model))(x), model(x), atol=tolerance, rtol=tolerance)


def _bench_module(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_second_run_the_same_day_never_overwrites_the_first(latency, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = latency.default_out("latency", {"cpu": "AMD EPYC 9R14"})
    assert first.endswith("-amd-epyc-9r14.csv")
    Path(first).parent.mkdir(parents=True)
    Path(first).write_text("row\n")
    second = latency.default_out("latency", {"cpu": "AMD EPYC 9R14"})
    assert second == first.replace(".csv", "-run2.csv")


def test_the_attention_probe_is_the_blocks_without_norms_and_gelu(latency, monkeypatch):
    """gemm_floor's step from the Linears to the whole model goes through the same blocks, with
    LayerNorm and GELU taken out: nothing else differs, so the step is what attention costs."""
    import torch
    from torch import nn

    from .conftest import tiny_vit

    monkeypatch.syspath_prepend(str(BENCH.parent))
    floor = _bench_module("gemm_floor")
    model = tiny_vit().eval()
    probe = floor.LinearsAndAttention(model).eval()
    for block in model.blocks:
        block.norm1, block.norm2, block.mlp.act = nn.Identity(), nn.Identity(), nn.Identity()
    x = torch.randn(1, 17, model.embed_dim)
    with torch.no_grad():
        torch.testing.assert_close(probe(x), model.blocks(x), atol=1e-5, rtol=1e-5)
    tokens, heads, head_dim = 17, model.blocks[0].attn.num_heads, model.blocks[0].attn.head_dim
    assert floor.attention_macs(model, tokens) == len(model.blocks) * 2 * tokens * tokens * heads * head_dim


def test_hosts_split_each_hosts_time_into_parts_that_add_up(tmp_path):
    """bench/hosts.py renders a column per host from the CSVs; the parts of a model's time come
    from its gemm_floor programs and add up to the whole model."""
    import pandas as pd

    hosts = _bench_module("hosts")
    for cpu, scale in (("host-a", 1.0), ("host-b", 2.0)):
        pd.DataFrame(
            [
                {
                    "row": r,
                    "format": fmt,
                    "threads": 2,
                    "note": note,
                    "latency_ms_median": ms * scale,
                    "speedup_vs_ort": ort,
                    "speedup_vs_paper": 2.0,
                    "speedup_vs_eager_dense": 4.0,
                    "cpu": cpu,
                    "cpu_features": "AVX-512",
                }
                for r, fmt, ms, ort, note in (
                    ("pte int8_dynamic", "pte", 50.0, 1.1, ""),
                    ("pte int8_dynamic round_to=64", "pte", 40.0, 1.3, ""),
                    ("onnxruntime int8_dynamic", "onnx", 52.0, 1.0, ""),
                    ("pte int8_dynamic fp16 attention", "pte", 30.0, 1.7, "lever, not a workflow recipe"),
                    ("eager fp32 dense", "eager", 20.0, 2.6, ""),
                )
            ]
        ).to_csv(tmp_path / f"latency-2026-11-30-{cpu}.csv", index=False)
        pd.DataFrame(
            [
                {"row": r, "latency_ms_median": ms * scale, "x_linears_only": x, "widths": w}
                for r, ms, x, w in (
                    ("whole model (pte int8_dynamic)", 50.0, 1.25, "696/58/2784"),
                    ("its Linear layers and attention", 45.0, 1.1, "696/58/2784"),
                    ("its Linear layers only", 40.0, 1.0, "696/58/2784"),
                    ("whole model (pte int8_dynamic, round_to=64)", 40.0, 1.14, "640/64/2752"),
                    ("its Linear layers and attention, round_to=64", 37.0, 1.1, "640/64/2752"),
                    ("its Linear layers only, round_to=64", 35.0, 1.0, "640/64/2752"),
                )
            ]
        ).to_csv(tmp_path / f"gemm_floor-2026-11-30-{cpu}.csv", index=False)
    paths = [str(p) for p in tmp_path.glob("*.csv")]
    table = hosts.render(paths)
    assert "| pte int8_dynamic | 50.0 ms · ×1.10 ORT" in table and "| 100.0 ms · ×1.10 ORT" in table
    assert "×1.10 ORT (not met)" in table and "×1.30 ORT (met)" in table
    assert "its whole ÷ its Linear layers 1.25 (not met)" in table and "1.14 (met)" in table
    # what `pqv choose` ships there: the fastest verified file of a workflow recipe, not a lever or a baseline
    assert "| fastest file the workflow ships here | pte int8_dynamic round_to=64: 40.0 ms, ×1.30 ORT |" in table
    split = hosts.split(paths)
    default = [line.split(" | ")[2:] for line in split.splitlines() if line.startswith("| PQV .pte, workflow default (696/58/2784)")]
    assert default == [
        ["50.0 ms (100%)", "100.0 ms (100%) |"],
        ["40.0 ms (80%)", "80.0 ms (80%) |"],
        ["10.0 ms (20%)", "20.0 ms (20%) |"],
        ["5.0 ms (10%)", "10.0 ms (10%) |"],
    ]
    assert "| PQV .pte, round_to: 64 (640/64/2752) | int8 Linear layers alone | 35.0 ms (88%) |" in split
    assert "ONNX Runtime" not in split  # these runs timed no ONNX Runtime programs
