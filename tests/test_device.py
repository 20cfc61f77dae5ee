"""One device rule for every stage: CUDA where it exists unless the config says cpu (injected here)."""

from __future__ import annotations

import pytest
import torch

from pqv.common import device, distributed
from pqv.plan.errors import PQVError


@pytest.mark.parametrize(
    "preference, cuda, expected",
    [
        ("auto", True, "cuda"),
        ("auto", False, "cpu"),
        ("cpu", True, "cpu"),
        ("cpu", False, "cpu"),
        ("cuda", True, "cuda"),
    ],
)
def test_resolve(preference, cuda, expected):
    assert device.resolve(preference, cuda_available=cuda).type == expected


def test_asking_for_cuda_without_it_is_a_one_line_error():
    with pytest.raises(PQVError, match="no CUDA GPU"):
        device.resolve("cuda", cuda_available=False)
    with pytest.raises(PQVError, match="unknown device 'gpu'"):
        device.resolve("gpu")


def test_training_follows_the_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node, as far as the rule can tell
    assert distributed.join("auto").device.type == "cuda"
    assert distributed.join("cpu").device.type == "cpu"  # device: cpu keeps training on the CPU


def test_prune_and_accuracy_run_on_the_given_device_and_return_to_cpu(trained_tiny):
    from pqv.common import datasets
    from pqv.stages import evaluate, prune

    from .conftest import DIGITS, tiny_vit

    m, a, _ = trained_tiny
    dc = a["data_config"]
    loader = datasets.loader(DIGITS, "eval", dc, 64)
    top1, _ = evaluate.accuracy_on(m, loader, torch.device("cpu"))
    assert top1 > 50 and next(m.parameters()).device.type == "cpu"
    model = tiny_vit()
    calibration = datasets.calibration_batches(DIGITS, dc, 2, 8)
    prune.prune(model, "taylor", 0.25, torch.zeros(1, *dc["input_size"]), calibration, device=torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in model.parameters())
