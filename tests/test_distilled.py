"""A distilled DeiT (two classifier heads) through prune -> finetune -> quantize -> export -> evaluate."""

from __future__ import annotations

import json

import torch

from pqv.common import arch, store
from pqv.stages import evaluate, export, finetune, prune, quantize
from pqv.stages import model as pqv_model

from .conftest import DIGITS, TINY_KWARGS

DISTILLED = "deit_tiny_distilled_patch16_224"


def test_both_heads_stay_whole_and_the_pipeline_outputs_every_class(tmp_path):
    torch.manual_seed(0)
    kwargs = {"num_classes": 10, **TINY_KWARGS}
    m = arch.create(DISTILLED, pretrained=False, **kwargs).eval()
    assert len(prune.classifiers(m)) == 2
    dc = pqv_model.data_config_of(m)
    base = tmp_path / "model.safetensors"
    store.save_model(m, base, arch.describe(m, DISTILLED, kwargs, dc))
    store.write_sidecar(base, "model", top1=0.0, params=arch.count_params(m))

    pruned = tmp_path / "pruned.safetensors"
    report = prune.run(str(base), str(pruned), "taylor", 0.25, DIGITS, calibration_batches=2, batch_size=16)
    assert report["params"] < report["params_before"]
    model, _ = store.load_model(pruned)
    assert [h.out_features for h in prune.classifiers(model)] == [10, 10]
    assert model.head.in_features == model.head_dist.in_features < 48

    tuned = tmp_path / "finetuned.safetensors"
    finetune.run(str(pruned), str(tuned), DIGITS, {"epochs": 1, "batch_size": 64, "lr": 1e-3}, str(tmp_path / "ft.csv"))
    ts = tmp_path / "int8.ts"
    quantize.run(str(tuned), str(ts), "int8_dynamic", "x86")
    ptl = tmp_path / "int8.ptl"
    export.run(str(ts), str(tuned), str(ptl), "ptl", DIGITS)
    out = export.load(str(ptl), "ptl", "x86")(torch.zeros(2, *dc["input_size"]))
    assert out.shape == (2, 10)
    metrics = evaluate.run_accuracy(str(ptl), str(tmp_path / "eval.json"), DIGITS, {}, threads=1)
    assert metrics["status"] == "verified" and 0 <= metrics["top1"] <= 100
    assert json.loads((tmp_path / "eval.json").read_text())["top1"] == metrics["top1"]
