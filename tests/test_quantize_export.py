import pytest
import torch

from pqv.common import datasets, store
from pqv.plan import fileio, registry
from pqv.plan.errors import PQVError
from pqv.stages import export, quantize

from .conftest import DIGITS, manifest_file, quantize_and_export


@pytest.fixture(scope="module")
def exported(saved_tiny, tiny_file, tmp_path_factory):
    """`_export` of the trained tiny model, made once per recipe and options (tests only read the
    files): several tests check the same file in different ways, and with the workflow's options
    other test files read it too (tiny_file; CI time). (file, its fidelity check)."""
    made = {}

    def get(precision, engine, fmt="ptl", **options):
        key = (precision, engine, fmt, tuple(sorted(options.items())))
        if key not in made:
            if options:
                folder = tmp_path_factory.mktemp(f"{precision}-{engine}-{fmt}")
                made[key] = quantize_and_export(saved_tiny, folder, precision, engine, fmt, **options)
            else:
                out = tiny_file(precision, engine, fmt)
                made[key] = out, fileio.read_sidecar(out)["fidelity"]
        return made[key]

    return get


@pytest.fixture(scope="module")
def fp32_artifacts(exported):
    return {fmt: exported("fp32", "none", fmt)[0] for fmt in registry.FORMATS}


def _reference(saved, n=64):
    m, a = store.load_model(saved)
    x = datasets.sample_batch(DIGITS, a["data_config"], n, split="eval")
    with torch.no_grad():
        return x, m(x)


@pytest.mark.parametrize(
    "fmt, options",
    [("ptl", {}), ("ptl", {"mobile_optimizer": False}), ("ptl", {"xnnpack_rewrite": False}), ("pte", {}), ("onnx", {}), ("ort", {})],
)
def test_fp32_artifact_matches_its_eager_parent(saved_tiny, exported, fmt, options):
    out, fidelity = exported("fp32", "none", fmt, **options)
    x, ref = _reference(saved_tiny)
    lite = export.load(str(out), fmt, "none")
    torch.testing.assert_close(lite(x), ref, atol=1e-4, rtol=0)
    assert fidelity["max_abs_diff"] <= 1e-4
    assert fileio.read_sidecar(out)["fidelity"] == fidelity


def test_fp16_lite_artifact_is_close_to_its_parent(saved_tiny, tmp_path):
    out, fidelity = quantize_and_export(saved_tiny, tmp_path, "fp16", "none")
    x, ref = _reference(saved_tiny)
    lite = export.load(str(out), "ptl", "none")
    assert lite(x).dtype == torch.float32
    torch.testing.assert_close(lite(x), ref, atol=5e-2, rtol=0)
    assert fidelity["top1_agreement"] == 1.0


# every quantized recipe in its format; ORT Mobile's .ort converts whatever .onnx program a recipe
# made the same way, so one recipe stands for the rest there (CI time)
QUANTIZED_TARGETS = [
    c
    for c in registry.combinations(list(registry.PRECISIONS), quantize.available_engines(), list(registry.FORMATS))
    if c[1] != "none" and (c[2] != "ort" or c[1] == "mlas")
]


@pytest.mark.parametrize("precision, engine, fmt", QUANTIZED_TARGETS)
def test_every_quantized_artifact_agrees_with_its_parent(saved_tiny, fp32_artifacts, exported, precision, engine, fmt):
    out, fidelity = exported(precision, engine, fmt)
    x, ref = _reference(saved_tiny)
    got = export.load(str(out), fmt, engine)(x)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.95
    assert fidelity["cosine_min"] >= 0.98
    assert fileio.read_sidecar(out)["fidelity"]["cosine_min"] == fidelity["cosine_min"]
    # integer weights: the artifact is smaller than the float one of the same format
    assert out.stat().st_size < fp32_artifacts[fmt].stat().st_size


@pytest.mark.parametrize("precision, op", [("int8_dynamic", "quantized::linear_dynamic"), ("int8_static", "quantized::linear")])
def test_torchscript_int8_uses_quantized_linear_kernels(saved_tiny, tmp_path, precision, op):
    ts = tmp_path / "q.ts"
    quantize.run(str(saved_tiny), str(ts), precision, "x86", DIGITS, calibration_images=32)
    graph = str(torch.jit.load(ts).inlined_graph)
    assert f"{op}(" in graph
    assert "scaled_dot_product_attention" in graph  # attention stays float, deliberately


@pytest.mark.parametrize(
    "precision, engine, message",
    [
        ("int4", "x86", "unknown precision"),
        ("int8_dynamic", "tpu", "unknown engine"),
        ("fp32", "x86", "takes no quantized engine"),
        ("int4_weight", "x86", "cannot be exported as .ptl"),
        ("int8_dynamic", "xnnpack", "does not run in .ptl"),
    ],
)
def test_bad_quantize_input_is_one_clear_error(precision, engine, message):
    with pytest.raises(PQVError, match=message):
        quantize.check(precision, engine, "ts")


def test_engine_missing_from_this_build_names_the_available_ones(monkeypatch):
    monkeypatch.setattr(quantize, "available_engines", lambda: ["x86"])
    with pytest.raises(PQVError, match="not in this build.*x86"):
        quantize.check("int8_dynamic", "qnnpack")


def test_unknown_format_is_one_clear_error():
    with pytest.raises(PQVError, match="unknown export format"):
        export.check_format("tflite", "none")


def test_x86_lite_files_store_each_int8_weight_once_and_compute_the_same(saved_tiny, tmp_path):
    ts = tmp_path / "q.ts"
    quantize.run(str(saved_tiny), str(ts), "int8_dynamic", "x86", DIGITS)
    compact = tmp_path / "compact.ptl"
    export._export_ptl(str(ts), str(compact), "int8_dynamic", {"engine": "x86"})
    with quantize.engine_scope("x86"):  # the unpatched path: packed and saved under x86
        plain = tmp_path / "plain.ptl"
        export._write_ptl(str(ts), str(plain), "int8_dynamic", {})
        x = torch.randn(8, 1, 8, 8)
        torch.testing.assert_close(export._load_ptl(str(compact))(x), export._load_ptl(str(plain))(x), atol=0, rtol=0)
    assert compact.stat().st_size < 0.7 * plain.stat().st_size


# The recipes bench/latency.py finds fastest for DeiT-B (docs/latency.md): speed must not cost
# fidelity, so each keeps >= 99 % top-1 agreement with its trained FP32 parent on every held-out image.
FAST_RECIPES = [
    ("int8_dynamic", "xnnpack", "pte", {}),
    ("int8_static", "xnnpack", "pte", {}),
    ("int8_dynamic", "onednn", "ptl", {}),
    ("int8_dynamic", "x86", "ptl", {"xnnpack_rewrite": False}),
]


@pytest.mark.parametrize("precision, engine, fmt, options", FAST_RECIPES)
def test_fast_recipes_agree_with_the_trained_parent_on_the_whole_held_out_split(saved_tiny, exported, precision, engine, fmt, options):
    if engine not in quantize.available_engines():
        pytest.skip(f"engine {engine} not in this build")
    out, _ = exported(precision, engine, fmt, **options)
    artifact = export.load(str(out), fmt, engine)
    model, a = store.load_model(saved_tiny)
    got, ref = [], []
    with torch.no_grad():
        for images, _ in datasets.loader(DIGITS, "eval", a["data_config"], 64):
            got.append(artifact(images))
            ref.append(model(images))
    fidelity = export.compare(torch.cat(got), torch.cat(ref))
    assert len(torch.cat(ref)) >= 300
    assert fidelity["top1_agreement"] >= 0.99


def test_a_recipe_below_the_gate_is_written_as_rejected_with_its_reason(saved_tiny, exported, tmp_path):
    out, fidelity = quantize_and_export(saved_tiny, tmp_path, "int8_dynamic", "x86", min_cosine=1.0)
    meta = fileio.read_sidecar(out)
    assert out.exists() and meta["status"] == "rejected"
    assert "cosine similarity" in meta["reason"] and f"{fidelity['cosine_min']:.4f}" in meta["reason"]
    ok, _ = exported("int8_dynamic", "x86")
    assert fileio.read_sidecar(ok)["status"] == "verified" and fileio.read_sidecar(ok)["reason"] == ""


@pytest.mark.parametrize(
    "fidelity",
    [
        {"max_abs_diff": float("nan"), "cosine_min": float("nan"), "top1_agreement": 0.1},
        {"max_abs_diff": 0.0, "cosine_min": 1.0, "top1_agreement": 1.0, "finite": False},
    ],
)
def test_garbage_outputs_fail_the_check(fidelity):
    """NaN compared with a bound is false either way: the check must not pass it."""
    assert "non-finite" in export.verdict("int8_dynamic", fidelity, 0.98) or "cosine" in export.verdict("int8_dynamic", fidelity, 0.98)
    assert export.verdict("fp32", fidelity, 0.98) is not None


def _broken_runtime(monkeypatch, change):
    """The ptl runtime, but its outputs changed by `change` (a broken exporter or layer rewrite)."""
    real = export.FORMATS["ptl"]

    def load(path):
        loaded = real.load(path)
        return lambda x: change(loaded(x))

    monkeypatch.setitem(export.FORMATS, "ptl", export.Format(real.export, load))


def test_an_fp32_artifact_that_changed_the_function_is_a_failed_file_never_verified(saved_tiny, tmp_path, monkeypatch, caplog):
    """A bug of the exporter for this model, said loudly; the branch's row says failed (issue 29: one
    such file must not stop a sweep or a search)."""
    _broken_runtime(monkeypatch, lambda y: y + 1e-2)
    out, _ = quantize_and_export(saved_tiny, tmp_path, "fp32", "none")
    meta = fileio.read_sidecar(out)
    assert meta["status"] == "failed" and "exporting to .ptl changed the model's function" in meta["reason"]
    assert any(r.levelname == "ERROR" and "changed the model's function" in r.message for r in caplog.records)


def test_a_failed_branch_stays_failed_in_every_file_made_from_it(saved_tiny, tmp_path):
    from pqv.stages import quantize

    src = tmp_path / "failed" / "finetuned.safetensors"
    m, a = store.load_model(saved_tiny)
    store.save_model(m, src, a)
    store.write_sidecar(src, "finetune", status="failed", reason="training diverged at epoch 3", data_config=a["data_config"])
    program = tmp_path / "failed" / "int8_dynamic-x86.ts"
    quantize.run(str(src), str(program), "int8_dynamic", "x86", None, 0)
    out = tmp_path / "failed" / "int8_dynamic-x86.ptl"
    export.run(str(program), str(src), str(out), "ptl", manifest_file())
    meta = fileio.read_sidecar(out)
    assert meta["status"] == "failed" and meta["reason"] == "training diverged at epoch 3"


def test_a_lossy_recipe_with_nan_outputs_is_rejected_not_verified(saved_tiny, tmp_path, monkeypatch):
    _broken_runtime(monkeypatch, lambda y: y * float("nan"))
    out, fidelity = quantize_and_export(saved_tiny, tmp_path, "int8_dynamic", "x86")
    meta = fileio.read_sidecar(out)
    assert meta["status"] == "rejected" and "non-finite outputs" in meta["reason"] and fidelity["finite"] is False


def _recording_train_draws(monkeypatch) -> list[set[int]]:
    """The training images each call of datasets.dataset hands out (one set per data set built)."""
    draws: list[set[int]] = []
    real = datasets.dataset

    class Recording(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner, self.seen = inner, set()
            draws.append(self.seen)

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            self.seen.add(int(i))
            return self.inner[i]

    monkeypatch.setattr(
        datasets,
        "dataset",
        lambda manifest, split, *a, **k: (
            Recording(real(manifest, split, *a, **k)) if split == "train" else real(manifest, split, *a, **k)
        ),
    )
    return draws


def _with_train_images(n: int) -> dict:
    """The digits manifest with only the first `n` training images (a small photo set's split)."""
    import copy

    small = copy.deepcopy(DIGITS)
    small["splits"]["train"]["items"] = small["splits"]["train"]["items"][:n]
    small["splits"]["train"]["images"] = n
    return small


@pytest.mark.parametrize(
    "train_images, calibration, check, checked",
    [
        (None, 128, 64, 64),  # the workflow's defaults on the digits: 1,437 training images
        (300, 64, 64, 64),
        (30, 16, 64, 14),  # too small to hold both: the check takes what calibration left, and says how many
    ],
)
def test_the_export_check_of_an_int8_static_file_scores_no_image_it_was_calibrated_on(
    saved_tiny, tmp_path, monkeypatch, train_images, calibration, check, checked
):
    """Issue 40 item 5a: the check drew with another seed than calibration, and the two overlapped (4
    of 64 on the digits, 24 of 64 on a 300-image set, all of them on a 30-image set): a check on
    images the file was calibrated on is optimistic."""
    manifest = DIGITS if train_images is None else _with_train_images(train_images)
    draws = _recording_train_draws(monkeypatch)
    program, out = tmp_path / "int8_static-x86.ts", tmp_path / "int8_static-x86.ptl"
    quantize.run(str(saved_tiny), str(program), "int8_static", "x86", manifest, calibration_images=calibration)
    calibrated = set().union(*draws)
    draws.clear()
    export.run(str(program), str(saved_tiny), str(out), "ptl", manifest, check_images=check)
    scored = set().union(*draws)
    assert len(calibrated) == calibration and len(scored) == checked
    assert not calibrated & scored
    meta = fileio.read_sidecar(out)
    assert meta["check_images"] == checked
    assert meta["check_sample"] == {
        "split": "train",
        "images": checked,
        "calibration_images": calibration,
        "disjoint_from_calibration": True,
    }


def test_a_split_that_calibration_used_up_leaves_no_check_and_says_so(saved_tiny, tmp_path):
    manifest = _with_train_images(30)
    program, out = tmp_path / "int8_static-x86.ts", tmp_path / "int8_static-x86.ptl"
    quantize.run(str(saved_tiny), str(program), "int8_static", "x86", manifest, calibration_images=64)
    with pytest.raises(PQVError, match=r"calibration took all 30 training images .*quantize.calibration_images below 30"):
        export.run(str(program), str(saved_tiny), str(out), "ptl", manifest, check_images=64)
    assert not out.exists()
