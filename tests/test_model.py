import json

import pytest
import torch
from safetensors.torch import save_file

from pqv.common import arch, datasets, store
from pqv.plan import fileio
from pqv.plan.errors import PQVError
from pqv.stages import model

from .conftest import DIGITS, TIMM_NAME, TINY_KWARGS, held_out_top1, tiny_vit


def test_trained_demo_model_beats_chance_by_a_wide_margin(trained_tiny):
    _, _, top1 = trained_tiny
    assert top1 > 70.0  # chance is 10 %


def test_model_stage_trains_and_saves_a_reloadable_model(tmp_path):
    cfg = {
        "id": "t",
        "timm_name": TIMM_NAME,
        "weights": "train",
        "kwargs": TINY_KWARGS,
        "train": {"epochs": 2, "lr": 3e-3, "batch_size": 64, "smoothing": 0.0},
    }
    out = tmp_path / "model.safetensors"
    only_train = {**DIGITS, "splits": {"train": DIGITS["splits"]["train"]}}  # the model job reads no other split
    model.run(cfg, only_train, str(out), str(tmp_path / "train.csv"))
    side = fileio.read_sidecar(out)
    assert "top1" not in side  # scored by the accuracy jobs, on the evaluation split
    assert side["data_config"]["input_size"] == [1, 8, 8]
    assert len((tmp_path / "train.csv").read_text().splitlines()) == 3  # header + 2 epochs
    reloaded, a = store.load_model(out)
    assert held_out_top1(reloaded, a["data_config"]) > 10.0
    x = datasets.sample_batch(DIGITS, a["data_config"], 8, split="eval")
    assert reloaded(x).shape == (8, 10)


def test_local_weights_file_goes_through_timms_pretrained_loading(tmp_path):
    src = tiny_vit(seed=3)
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(weights))
    cfg = {"timm_name": TIMM_NAME, "weights": str(weights), "kwargs": TINY_KWARGS}
    loaded, facts = model.create_base(cfg, DIGITS)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), src(x))
    assert facts["weights"] == str(weights)


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"timm_name": "deit_nonexistent_patch16", "weights": "train"}, "unknown timm model"),
        ({"timm_name": TIMM_NAME, "weights": "/nope/weights.safetensors", "kwargs": TINY_KWARGS}, "does not exist"),
        ({"timm_name": "resnet18", "weights": "train"}, "no timm Attention blocks"),
    ],
)
def test_bad_model_config_is_one_clear_error(cfg, message):
    with pytest.raises(PQVError, match=message):
        model.create_base(cfg, DIGITS)


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    with pytest.raises(PQVError, match="corrupt model file"):
        store.load_model(bad)


def test_architecture_header_is_plain_json(trained_tiny, tmp_path):
    m, a, _ = trained_tiny
    path = tmp_path / "m.safetensors"
    store.save_model(m, path, a)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()[store.ARCH_KEY])
    assert header["timm_name"] == TIMM_NAME
    assert [b["num_heads"] for b in header["attention"]] == [3, 3]
    assert arch.count_params(store.load_model(path)[0]) == arch.count_params(m)


def test_a_deit_b_weights_file_loads_with_a_head_for_the_data_sets_classes(tmp_path, monkeypatch):
    """config/deit_b.yaml's path: a random-weight stand-in of the hub's DeiT-B file (1,000-class
    head), given as `~/...`, loads through timm's pretrained loading with a 10-class head."""
    torch.manual_seed(0)
    hub_like = arch.create("deit_base_patch16_224", pretrained=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "deit_b").mkdir()
    save_file({k: v.contiguous() for k, v in hub_like.state_dict().items()}, str(tmp_path / "deit_b/model.safetensors"))
    cfg = {"id": "deit-b", "timm_name": "deit_base_patch16_224", "weights": "~/deit_b/model.safetensors"}
    loaded, facts = model.create_base(cfg, DIGITS)
    assert loaded.head.out_features == 10 and arch.count_params(loaded) == 85_806_346
    torch.testing.assert_close(loaded.blocks[11].mlp.fc2.weight, hub_like.blocks[11].mlp.fc2.weight)
