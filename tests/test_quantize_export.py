import pytest
import torch

from pqv import data, export, io, quantize
from pqv.errors import PQVError

from .conftest import DIGITS


def _export(saved, tmp_path, precision, engine, fmt="ptl", mobile_optimizer=True):
    ts = tmp_path / f"{precision}-{engine}.ts"
    quantize.run(str(saved), str(ts), precision, engine)
    out = tmp_path / f"{precision}-{engine}.{fmt}"
    fidelity = export.run(str(ts), str(saved), str(out), fmt, DIGITS, mobile_optimizer=mobile_optimizer)
    return out, fidelity


def _reference(saved, n=64):
    m, a = io.load_model(saved)
    x = data.sample_batch(DIGITS, a["data_config"], n)
    with torch.no_grad():
        return x, m(x)


@pytest.mark.parametrize("mobile_optimizer", [True, False])
def test_fp32_lite_artifact_matches_its_eager_parent(saved_tiny, tmp_path, mobile_optimizer):
    out, fidelity = _export(saved_tiny, tmp_path, "fp32", "none", mobile_optimizer=mobile_optimizer)
    x, ref = _reference(saved_tiny)
    lite = export.load(str(out), "ptl", "none")
    torch.testing.assert_close(lite(x), ref, atol=1e-4, rtol=0)
    assert fidelity["max_abs_diff"] <= 1e-4
    assert io.read_sidecar(out)["fidelity"] == fidelity


def test_fp16_lite_artifact_is_close_to_its_parent(saved_tiny, tmp_path):
    out, fidelity = _export(saved_tiny, tmp_path, "fp16", "none")
    x, ref = _reference(saved_tiny)
    lite = export.load(str(out), "ptl", "none")
    assert lite(x).dtype == torch.float32
    torch.testing.assert_close(lite(x), ref, atol=5e-2, rtol=0)
    assert fidelity["top1_agreement"] == 1.0


@pytest.mark.parametrize("engine", quantize.available_engines())
def test_int8_dynamic_lite_artifact_agrees_with_its_parent(saved_tiny, tmp_path, engine):
    out, fidelity = _export(saved_tiny, tmp_path, "int8_dynamic", engine)
    x, ref = _reference(saved_tiny)
    lite = export.load(str(out), "ptl", engine)
    got = lite(x)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.95
    assert fidelity["cosine_min"] >= 0.98
    assert "quantized::linear_dynamic" in str(torch.jit.load(tmp_path / f"int8_dynamic-{engine}.ts").inlined_graph)
    # int8 weights: the artifact is smaller than the float one
    fp32, _ = _export(saved_tiny, tmp_path, "fp32", "none")
    assert out.stat().st_size < fp32.stat().st_size


def test_failed_fidelity_check_writes_nothing(saved_tiny, tmp_path):
    ts = tmp_path / "int8.ts"
    quantize.run(str(saved_tiny), str(ts), "int8_dynamic", "x86")
    out = tmp_path / "int8.ptl"
    with pytest.raises(PQVError, match="cosine similarity"):
        export.run(str(ts), str(saved_tiny), str(out), "ptl", DIGITS, min_cosine=1.0 + 1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.ts", "int8.ts.json"]


@pytest.mark.parametrize(
    "precision, engine, message",
    [
        ("int4", "x86", "unknown precision"),
        ("int8_dynamic", "tpu", "unknown engine"),
        ("fp32", "x86", "takes no quantized engine"),
    ],
)
def test_bad_quantize_input_is_one_clear_error(precision, engine, message):
    with pytest.raises(PQVError, match=message):
        quantize.check(precision, engine)


def test_engine_missing_from_this_build_names_the_available_ones(monkeypatch):
    monkeypatch.setattr(quantize, "available_engines", lambda: ["x86"])
    with pytest.raises(PQVError, match="not in this torch build.*x86"):
        quantize.check("int8_dynamic", "qnnpack")


def test_unknown_format_is_one_clear_error():
    with pytest.raises(PQVError, match="unknown export format"):
        export.check_format("tflite", "none")
