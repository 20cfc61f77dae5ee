"""ONNX Runtime's formats (pqv/common/ort.py): built by ORT's own tools the way its docs advise for a ViT,
checked, timed, profiled and described for an app like every PQV file.

Agreement with the parent for every precision and format is in test_quantize_export.py (its
targets come from the registry); here: what the programs contain, the runtime's own measurements,
and the errors of a missing runtime or a cut file."""

import json
import subprocess
import sys
from collections import Counter

import pytest
import torch

from pqv.common import ort, store
from pqv.plan import config as C
from pqv.plan import fileio, registry, sweep
from pqv.plan.errors import PQVError
from pqv.stages import evaluate, export, quantize
from pqv.stages import profile as profiling

from .conftest import DIGITS, held_out_top1
from .test_config import DEFAULT, merged

# the tiny ViT of conftest: 2 blocks of qkv, proj, fc1, fc2, then the head; q @ k^T and attn @ v per block
LINEARS = 2 * 4 + 1
ATTENTION_MATMULS = 2 * 2


def _artifact(saved, folder, precision, engine, fmt):
    """The workflow's two steps: quantize writes the .onnx program, export ships and checks it."""
    (folder / "quantized").mkdir(exist_ok=True)
    program = folder / "quantized" / f"{precision}-{engine}.{registry.ir_of(fmt)}"
    if not program.exists():
        quantize.run(str(saved), str(program), precision, engine, DIGITS, calibration_images=128)
    out = folder / f"{precision}-{engine}.{fmt}"
    export.run(str(program), str(saved), str(out), fmt, DIGITS)
    return program, out


@pytest.fixture(scope="module")
def files(saved_tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ort")
    program, onnx_file = _artifact(saved_tiny, folder, "int8_dynamic", "mlas", "onnx")
    _, ort_file = _artifact(saved_tiny, folder, "int8_dynamic", "mlas", "ort")
    static, _ = _artifact(saved_tiny, folder, "int8_static", "mlas", "onnx")
    return {"program": program, "onnx": onnx_file, "ort": ort_file, "static": static}


def _ops(path) -> Counter:
    import onnx

    return Counter(node.op_type for node in onnx.load_model(str(path)).graph.node)


def test_the_dynamic_program_quantizes_the_linear_layers_and_keeps_attention_float(files):
    ops = _ops(files["program"])
    assert ops["MatMulInteger"] == LINEARS  # int8 weights, activations quantized at run time (fused at load)
    assert ops["MatMul"] + ops["FusedMatMul"] == ATTENTION_MATMULS  # two activations: float, as in every PQV recipe
    # the transformer optimizer ran: GELU and the residual LayerNorms fused
    assert ops["Gelu"] == 2 and ops["SkipLayerNormalization"] >= 2


def test_the_static_program_is_qdq_with_per_channel_weights(files):
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_model(str(files["static"])).graph
    ops = Counter(node.op_type for node in graph.node)
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    # a weight's DequantizeLinear has one scale per output channel; an activation's one scale
    per_channel = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in weights
        and weights[n.input[0]].dtype == "int8"
        and weights[n.input[1]].size > 1
    ]
    assert len(per_channel) == LINEARS
    assert ops["QuantizeLinear"] >= LINEARS  # each Linear's input, calibrated
    assert ops["MatMul"] + ops["FusedMatMul"] == ATTENTION_MATMULS  # fed by no DequantizeLinear: float
    assert not any(n.op_type in ("MatMul", "FusedMatMul") and any(i in weights for i in n.input) for n in graph.node)


def test_the_ort_file_is_ort_mobiles_format_and_computes_what_the_onnx_file_does(files):
    assert files["ort"].read_bytes()[4:8] == b"ORTM"
    x = torch.randn(5, 1, 8, 8)  # any batch: the static batch of one is run image by image
    a, b = export.load(str(files["onnx"]), "onnx", "mlas")(x), export.load(str(files["ort"]), "ort", "mlas")(x)
    assert a.shape == (5, 10)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    for fmt in ("onnx", "ort"):
        meta = fileio.read_sidecar(files[fmt])
        assert meta["status"] == "verified" and meta["fidelity"]["cosine_min"] >= 0.98


def test_latency_and_accuracy_jobs_measure_it_in_onnx_runtime(saved_tiny, files, tmp_path):
    manifest = tmp_path / "digits.json"
    manifest.write_text(json.dumps(DIGITS))
    out = tmp_path / "latency.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pqv",
            "evaluate",
            "latency",
            "--artifact",
            str(files["ort"]),
            "--out",
            str(out),
            "--data",
            str(manifest),
            "--runs",
            "3",
            "--warmup",
            "1",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    latency = json.loads(out.read_text())
    assert latency["runtime"].startswith("onnxruntime ") and latency["latency_ms_median"] > 0
    assert 0 < latency["rss_model_mb"] < latency["peak_rss_mb"]
    accuracy = evaluate.run_accuracy(str(files["onnx"]), str(tmp_path / "accuracy.json"), DIGITS, {}, threads=1)
    model, a = store.load_model(saved_tiny)
    assert accuracy["images"] >= 300
    assert abs(accuracy["top1"] - held_out_top1(model, a["data_config"])) <= 2.0


def test_its_profile_is_onnx_runtimes_kernel_time_by_operator(files, tmp_path):
    csv, png = tmp_path / "p.csv", tmp_path / "p.png"
    profiling.run(str(files["ort"]), str(csv), str(png), threads=1, warmup=2, runs=5, manifest=DIGITS)
    import pandas as pd

    table = pd.read_csv(csv).set_index("operator")
    assert table.loc["DynamicQuantizeMatMul", "calls"] == LINEARS
    assert table["self_cpu_pct"].sum() == pytest.approx(100, abs=0.1)
    assert table["runtime"].iloc[0].startswith("onnxruntime ")
    assert png.stat().st_size > 0


def test_its_app_file_names_the_tensors_session_run_takes(files):
    app = json.loads((files["ort"].parent / f"{files['ort'].name}.app.json").read_text())
    assert (app["input"]["name"], app["output"]["name"]) == registry.ONNX_TENSORS
    assert "ONNX Runtime" in app["runtime"]


def test_onnx_and_ort_files_of_a_branch_share_one_quantize_job():
    config = C.check(
        merged(
            {
                "quantize": {"precisions": ["fp32", "int8_dynamic"], "engines": ["x86", "mlas"]},
                "export": {"formats": ["ptl", "onnx", "ort"]},
                "profile": {"artifacts": []},
                "evaluate": {"without_pqv": False},
            }
        ),
        default=DEFAULT,
    )
    programs = Counter(wc["ir"] for rule, wc in sweep.jobs(config) if rule == "quantize")
    exports = Counter(wc["format"] for rule, wc in sweep.jobs(config) if rule == "export")
    branches = len(sweep.branches(config))
    assert programs == {"ts": 2 * branches, "onnx": 2 * branches}
    assert exports == {"ptl": 2 * branches, "onnx": 2 * branches, "ort": 2 * branches}


def test_a_config_asking_for_onnx_runtime_without_it_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(
        PQVError,
        match=r"export.formats lists 'ort', whose runtime needs onnxruntime, not installed here "
        r"\(fix: pip install -e \"\.\[onnx\]\"",
    ):
        C.check(merged({"quantize": {"engines": ["mlas"]}, "export": {"formats": ["ort"]}}), default=DEFAULT)
    assert "mlas" not in quantize.available_engines()


@pytest.mark.parametrize("fmt", ["onnx", "ort"])
def test_a_cut_file_is_one_clear_error(files, tmp_path, fmt):
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(files[fmt].read_bytes()[: files[fmt].stat().st_size // 2])
    with pytest.raises(PQVError, match="corrupt|cannot load"):
        export.load(str(cut), fmt, "mlas")


def test_every_precision_pqv_lists_for_onnx_has_a_recipe():
    listed = {p for p, spec in registry.PRECISIONS.items() if set(registry.ONNX_FORMATS) & set(spec["formats"])}
    assert listed == set(ort.PRECISIONS)


def _program(saved, folder, precision, engine):
    path = folder / f"{precision}-{engine}.onnx"
    quantize.run(str(saved), str(path), precision, engine, DIGITS, calibration_images=64)
    return path


def _weight_scales(path) -> list[int]:
    """The size of each int8 weight's scale: 1 per tensor, the output width per channel."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_model(str(path)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return sorted(
        values[name[: -len("_quantized")] + "_scale"].size
        for name in values
        if name.endswith("_quantized") and values[name].dtype == "int8"
    )


def test_each_onnx_runtime_recipe_builds_the_program_it_names(saved_tiny, tmp_path):
    """(issue 39) ONNX Runtime's recipes are engines of its formats: the plain recipe skips the
    transformer optimizer, per-tensor recipes give each weight one scale, QOperator makes
    QLinearMatMul nodes; each is a file of the sweep, checked like every file (test_quantize_export)."""
    plain = _ops(_program(saved_tiny, tmp_path, "int8_dynamic", "mlas_plain"))
    assert plain["MatMulInteger"] == LINEARS and plain["SkipLayerNormalization"] == plain["Gelu"] == 0
    assert plain["Erf"] == 2  # timm's GELU as exported, unfused
    documented = _program(saved_tiny, tmp_path, "int8_dynamic", "mlas")
    per_tensor = _program(saved_tiny, tmp_path, "int8_dynamic", "mlas_tensor")
    assert _ops(per_tensor)["SkipLayerNormalization"] >= 2
    assert set(_weight_scales(per_tensor)) == {1} and len(_weight_scales(per_tensor)) == LINEARS
    assert min(_weight_scales(documented)) > 1  # per channel
    assert set(_weight_scales(_program(saved_tiny, tmp_path, "int8_dynamic", "mlas_plain_tensor"))) == {1}
    qop = _ops(_program(saved_tiny, tmp_path, "int8_static", "mlas_qop"))
    assert qop["QLinearMatMul"] + qop["QGemm"] == LINEARS and qop["MatMulInteger"] == 0  # QOperator nodes, not QDQ pairs
    static_plain = _ops(_program(saved_tiny, tmp_path, "int8_static", "mlas_plain"))
    assert static_plain["SkipLayerNormalization"] == 0 and static_plain["QuantizeLinear"] >= LINEARS


def test_a_recipe_of_one_precision_only_is_refused_for_another():
    with pytest.raises(PQVError, match="engine 'mlas_qop' makes int8_static files, not int8_dynamic"):
        quantize.check("int8_dynamic", "mlas_qop", "onnx")
    config = C.check(
        merged(
            {
                "quantize": {"precisions": ["int8_dynamic", "int8_static"], "engines": ["mlas", "mlas_qop"]},
                "export": {"formats": ["onnx"]},
                "profile": {"artifacts": []},
            }
        ),
        default=DEFAULT,
    )
    made = {(a["precision"], a["engine"]) for a in sweep.artifacts(config) if a["format"] == "onnx"}
    assert ("int8_static", "mlas_qop") in made and ("int8_dynamic", "mlas_qop") not in made
    with pytest.raises(
        PQVError,
        match="quantize.engines lists 'mlas_qop' but no quantized precision in quantize.precisions runs on it "
        r"\(fix: drop 'mlas_qop' or add int8_static to quantize.precisions\)",
    ):
        C.check(
            merged({"quantize": {"precisions": ["int8_dynamic"], "engines": ["mlas", "mlas_qop"]}, "export": {"formats": ["onnx"]}}),
            default=DEFAULT,
        )


def test_the_file_without_pqv_joins_each_models_sweep_once():
    config = C.check(merged({"profile": {"artifacts": []}}), default=DEFAULT)
    bars = [a for a in sweep.artifacts(config) if sweep.is_without_pqv(a)]
    assert bars == [{"model": m["id"], **registry.WITHOUT_PQV} for m in config["models"]]
    # already in the grid: the same file, not a second one
    config = C.check(
        merged(
            {
                "quantize": {"precisions": ["int8_dynamic"], "engines": ["mlas_plain"]},
                "export": {"formats": ["onnx"]},
                "profile": {"artifacts": []},
            }
        ),
        default=DEFAULT,
    )
    assert len([a for a in sweep.artifacts(config) if sweep.is_without_pqv(a)]) == len(config["models"])
    off = C.check(merged({"evaluate": {"without_pqv": False}, "profile": {"artifacts": []}}), default=DEFAULT)
    assert not any(sweep.is_without_pqv(a) for a in sweep.artifacts(off))


def test_the_file_without_pqv_without_onnx_runtime_is_one_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(
        PQVError,
        match=r"evaluate.without_pqv is on, whose runtime needs onnxruntime, not installed here "
        r"\(fix: .*set evaluate.without_pqv: false",
    ):
        C.check(merged({}), default=DEFAULT)
