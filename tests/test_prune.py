import subprocess
import sys

import pytest
import torch

from pqv import arch, io, prune
from pqv.errors import PQVError

from .conftest import tiny_arch, tiny_vit

EXAMPLE = torch.zeros(1, 1, 8, 8)


def _calibration(n=2):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


@pytest.mark.parametrize("importance", ["l1", "l2", "lamp", "random", "taylor", "hessian"])
def test_pruned_model_runs_with_fewer_params_and_scripts(importance):
    m = tiny_vit()
    before = arch.count_params(m)
    prune.prune(m, importance, 0.5, EXAMPLE, calibration=_calibration())
    assert arch.count_params(m) < before
    x = torch.randn(4, 1, 8, 8)
    out = m(x)
    assert out.shape == (4, 10)
    for attn in arch.attention_blocks(m):
        assert attn.attn_dim == attn.num_heads * attn.head_dim == attn.qkv.out_features // 3
        assert attn.scale == pytest.approx(attn.head_dim**-0.5)
    torch.testing.assert_close(torch.jit.script(m)(x), out)


def test_ratio_zero_returns_an_equal_model():
    m, ref = tiny_vit(), tiny_vit()
    prune.prune(m, "l2", 0.0, EXAMPLE)
    for (k, v), (_, w) in zip(m.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(v, w), k


def _zero_half_of_inner_channels(m):
    """Zero the upper half of every head's q/k/v dims and of every MLP hidden unit, in both the
    producing and the consuming layer, so these channels carry nothing and score lowest."""
    for block in m.blocks:
        attn, mlp = block.attn, block.mlp
        hd, keep = attn.head_dim, attn.head_dim // 2
        hidden = mlp.fc1.out_features
        with torch.no_grad():
            attn.qkv.weight.view(3, attn.num_heads, hd, -1)[:, :, keep:] = 0
            attn.qkv.bias.view(3, attn.num_heads, hd)[:, :, keep:] = 0
            attn.proj.weight.view(-1, attn.num_heads, hd)[:, :, keep:] = 0
            mlp.fc1.weight[hidden // 2:] = 0
            mlp.fc1.bias[hidden // 2:] = 0
            mlp.fc2.weight[:, hidden // 2:] = 0


@pytest.mark.parametrize("fused", [True, False])
def test_removing_zero_channels_preserves_the_function(fused):
    """Channels that carry zero weight are removed without changing outputs, softmax scale included."""
    m = tiny_vit()  # head_dim 16
    _zero_half_of_inner_channels(m)
    for attn in arch.attention_blocks(m):
        attn.fused_attn = fused
    x = torch.randn(4, 1, 8, 8)
    ref = m(x)
    # The embedding width is kept (bottleneck): LayerNorm statistics over it are not removable.
    pruned = prune.prune(m, "l1", 0.5, EXAMPLE, bottleneck=True)
    assert all(a.head_dim == 8 for a in arch.attention_blocks(pruned))
    assert all(b.mlp.fc1.out_features == 96 for b in pruned.blocks)
    torch.testing.assert_close(pruned(x), ref, atol=1e-5, rtol=1e-5)


def test_pruning_is_deterministic():
    a, b = tiny_vit(), tiny_vit()
    prune.prune(a, "taylor", 0.25, EXAMPLE, calibration=_calibration())
    prune.prune(b, "taylor", 0.25, EXAMPLE, calibration=_calibration())
    for (k, v), (_, w) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(v, w), k


def test_pruned_model_reloads_identically_in_a_fresh_process(tmp_path):
    m = tiny_vit()
    prune.prune(m, "l2", 0.5, EXAMPLE)
    path = tmp_path / "pruned.safetensors"
    a = tiny_arch(m)
    io.save_model(m, path, a)
    x = torch.randn(3, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    torch.save(m(x).detach(), tmp_path / "ref.pt")
    code = (
        "import torch, sys; from pqv import io;"
        f"m, _ = io.load_model(r'{path}');"
        f"x = torch.load(r'{tmp_path / 'x.pt'}', weights_only=True);"
        f"ref = torch.load(r'{tmp_path / 'ref.pt'}', weights_only=True);"
        "sys.exit(0 if torch.equal(m(x), ref) else 1)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize(
    "importance, ratio, calibration, message",
    [
        ("tayler", 0.5, None, "unknown importance"),
        ("l2", 1.0, None, "outside"),
        ("l2", -0.1, None, "outside"),
        ("taylor", 0.5, None, "needs calibration data"),
        ("hessian", 0.5, [], "needs calibration data"),
    ],
)
def test_bad_prune_input_is_one_clear_error(importance, ratio, calibration, message):
    with pytest.raises(PQVError, match=message):
        prune.prune(tiny_vit(), importance, ratio, EXAMPLE, calibration=calibration)


def test_model_without_attention_is_rejected():
    with pytest.raises(PQVError, match="no timm Attention"):
        prune.prune(torch.nn.Sequential(torch.nn.Linear(4, 4)), "l2", 0.5, torch.zeros(1, 4))
