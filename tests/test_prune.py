import json
import subprocess
import sys

import pytest
import torch

from pqv.common import arch, store
from pqv.plan import fileio, registry
from pqv.plan.errors import PQVError
from pqv.stages import prune

from .conftest import TIMM_NAME, TINY_KWARGS, job_environment, manifest_file, tiny_arch, tiny_vit

pytestmark = pytest.mark.usefixtures("warm_jobs")  # their jobs fork from a warm-start server (tests/conftest.py)

EXAMPLE = torch.zeros(1, 1, 8, 8)
IMPORTANCES = list(registry.IMPORTANCES)  # every entry: a new importance is tested here with no edit
MODES = [("uniform", "dims"), ("uniform", "whole"), ("global", "dims"), ("global", "whole")]


def _calibration(n=2, shape=(1, 8, 8)):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, *shape, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def _assert_geometry(m):
    for attn in arch.attention_blocks(m):
        assert attn.attn_dim == attn.num_heads * attn.head_dim == attn.qkv.out_features // 3
        assert attn.proj.in_features == attn.attn_dim
        assert attn.scale == pytest.approx(attn.head_dim**-0.5)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("scope, heads", MODES)
@pytest.mark.parametrize("importance", IMPORTANCES)
def test_pruned_model_runs_with_fewer_params_and_scripts(importance, scope, heads):
    m = tiny_vit()
    before = arch.count_params(m)
    prune.prune(m, importance, 0.5, EXAMPLE, calibration=_calibration(), scope=scope, heads=heads)
    assert arch.count_params(m) < before
    x = torch.randn(4, 1, 8, 8)
    out = m(x)
    assert out.shape == (4, 10)
    _assert_geometry(m)
    blocks = arch.attention_blocks(m)
    if heads == "whole":
        assert all(a.head_dim == 16 for a in blocks)  # head size untouched
        assert sum(a.num_heads for a in blocks) < 3 * len(blocks)
    else:
        assert all(a.num_heads == 3 for a in blocks)
    assert m.embed_dim == m.patch_embed.proj.out_channels == m.norm.weight.shape[0]
    torch.testing.assert_close(torch.jit.script(m)(x), out)


@pytest.mark.parametrize("heads", ["dims", "whole"])
@pytest.mark.parametrize(
    "timm_name", ["deit_tiny_patch16_224", "deit_base_patch16_224", "deit3_medium_patch16_224", "vit_small_patch16_224"]
)
def test_timm_vits_prune_script_and_reload(timm_name, heads, tmp_path):
    """Real timm ViTs at full width (depth cut to 2, 32x32 input to stay fast): every width shrinks,
    the result scripts, and it reloads from the pickle-free file with identical outputs."""
    kwargs = {"img_size": 32, "depth": 2, "num_classes": 10}
    torch.manual_seed(0)
    m = arch.create(timm_name, pretrained=False, **kwargs).eval()
    width, num_heads = m.embed_dim, m.blocks[0].attn.num_heads
    example = torch.zeros(1, 3, 32, 32)
    macs, params = prune.count_ops(m, example)
    prune.prune(m, "l2", 0.25, example, round_to=8, heads=heads)
    macs_after, params_after = prune.count_ops(m, example)
    assert macs_after < macs and params_after < params
    assert m.embed_dim == width * 3 // 4 and m.embed_dim % 8 == 0
    for attn in arch.attention_blocks(m):
        if heads == "whole":
            assert attn.head_dim == 64 and attn.num_heads == num_heads - -(-num_heads // 4)
        else:
            assert attn.head_dim == 48 and attn.num_heads == num_heads
    _assert_geometry(m)
    x = torch.randn(2, 3, 32, 32)
    ref = m(x)
    torch.testing.assert_close(torch.jit.script(m)(x), ref)
    path = tmp_path / "pruned.safetensors"
    store.save_model(m, path, arch.describe(m, timm_name, kwargs, {"input_size": [3, 32, 32]}))
    reloaded, _ = store.load_model(path)
    assert torch.equal(reloaded(x), ref)
    assert reloaded.embed_dim == m.embed_dim


def test_layerscale_and_tokens_keep_the_surviving_embedding_channels():
    """DeiT3's LayerScale gammas, cls_token, pos_embed and norms are sliced with the embedding."""
    kwargs = {"img_size": 32, "depth": 2, "num_classes": 10}
    torch.manual_seed(0)
    m = arch.create("deit3_medium_patch16_224", pretrained=False, **kwargs).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.normal_()  # distinct values, so a wrong slice shows
    before = {k: v.clone() for k, v in m.state_dict().items()}
    prune.prune(m, "l1", 0.25, torch.zeros(1, 3, 32, 32))
    # Which embedding channels survived: match the patch-embedding filters (random, so unique).
    w0, w1 = before["patch_embed.proj.weight"].flatten(1), m.patch_embed.proj.weight.flatten(1)
    kept = torch.cdist(w1, w0).argmin(dim=1)
    assert torch.equal(w0[kept], w1) and len(kept.unique()) == m.embed_dim == 384
    state = m.state_dict()
    for key in ["blocks.0.ls1.gamma", "blocks.1.ls2.gamma", "blocks.0.norm1.weight", "norm.bias"]:
        assert torch.equal(state[key], before[key][kept]), key
    for key in ["cls_token", "pos_embed"]:
        assert torch.equal(state[key], before[key][..., kept]), key


@pytest.mark.parametrize("scope, heads", MODES)
def test_ratio_zero_returns_an_equal_model(scope, heads):
    m, ref = tiny_vit(), tiny_vit()
    prune.prune(m, "l2", 0.0, EXAMPLE, scope=scope, heads=heads)
    _assert_same_state(m, ref)


def _zero_half_of_mlp(m):
    for block in m.blocks:
        mlp, hidden = block.mlp, block.mlp.fc1.out_features
        with torch.no_grad():
            mlp.fc1.weight[hidden // 2 :] = 0
            mlp.fc1.bias[hidden // 2 :] = 0
            mlp.fc2.weight[:, hidden // 2 :] = 0


def _zero_half_of_head_dims(m):
    """Zero the upper half of every head's q/k/v dims and of every MLP hidden unit, in both the
    producing and the consuming layer, so these channels carry nothing and score lowest."""
    for block in m.blocks:
        attn = block.attn
        hd, keep = attn.head_dim, attn.head_dim // 2
        with torch.no_grad():
            attn.qkv.weight.view(3, attn.num_heads, hd, -1)[:, :, keep:] = 0
            attn.qkv.bias.view(3, attn.num_heads, hd)[:, :, keep:] = 0
            attn.proj.weight.view(-1, attn.num_heads, hd)[:, :, keep:] = 0
    _zero_half_of_mlp(m)


def _zero_middle_head(m):
    """Zero head 1 of 3 (q, k, v and its proj columns): it contributes nothing to the output."""
    for block in m.blocks:
        attn = block.attn
        hd = attn.head_dim
        with torch.no_grad():
            attn.qkv.weight.view(3, attn.num_heads, hd, -1)[:, 1] = 0
            attn.qkv.bias.view(3, attn.num_heads, hd)[:, 1] = 0
            attn.proj.weight.view(-1, attn.num_heads, hd)[:, 1] = 0
    _zero_half_of_mlp(m)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("heads", ["dims", "whole"])
def test_removing_zero_channels_preserves_the_function(heads, fused):
    """Channels that carry zero weight are removed without changing outputs, softmax scale included."""
    m = tiny_vit()  # 3 heads of 16 dims
    (_zero_half_of_head_dims if heads == "dims" else _zero_middle_head)(m)
    for attn in arch.attention_blocks(m):
        attn.fused_attn = fused
    x = torch.randn(4, 1, 8, 8)
    ref = m(x)
    # The embedding width is kept (bottleneck): LayerNorm statistics over it are not removable.
    pruned = prune.prune(m, "l1", 0.5, EXAMPLE, heads=heads, head_ratio=0.3 if heads == "whole" else None, bottleneck=True)
    expected = (3, 8) if heads == "dims" else (2, 16)
    assert all((a.num_heads, a.head_dim) == expected for a in arch.attention_blocks(pruned))
    assert all(b.mlp.fc1.out_features == 96 for b in pruned.blocks)
    assert pruned.embed_dim == 48
    torch.testing.assert_close(pruned(x), ref, atol=1e-5, rtol=1e-5)


def test_global_scope_ranks_across_layers():
    uniform, glob = tiny_vit(depth=4), tiny_vit(depth=4)
    prune.prune(uniform, "l1", 0.25, EXAMPLE)
    prune.prune(glob, "l1", 0.25, EXAMPLE, scope="global")
    assert len({b.mlp.fc1.out_features for b in uniform.blocks}) == 1
    assert len({b.mlp.fc1.out_features for b in glob.blocks}) > 1  # widths follow the global ranking
    assert arch.count_params(glob) < arch.count_params(tiny_vit(depth=4))


@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_bottleneck_keeps_the_embedding_width(scope):
    m = tiny_vit()
    prune.prune(m, "l2", 0.5, EXAMPLE, scope=scope, bottleneck=True)
    assert m.embed_dim == m.patch_embed.proj.out_channels == 48
    assert all(b.attn.proj.out_features == b.mlp.fc2.out_features == 48 for b in m.blocks)
    assert sum(b.mlp.fc1.out_features for b in m.blocks) < 2 * 192


def test_round_to_keeps_channel_counts_multiples():
    plain, rounded = tiny_vit(), tiny_vit()
    prune.prune(plain, "l2", 0.3, EXAMPLE)
    prune.prune(rounded, "l2", 0.3, EXAMPLE, round_to=4)
    assert plain.embed_dim % 4 != 0  # 48 * 0.7 = 33.6 -> 34 channels
    for width in [rounded.embed_dim, rounded.blocks[0].mlp.fc1.out_features, rounded.blocks[0].attn.head_dim]:
        assert width % 4 == 0


def test_hessian_accumulates_the_mean_of_squared_per_sample_gradients():
    """Torch-Pruning 1.6.1's own accumulate_grad keeps only the last sample; ours keeps them all."""
    imp = prune.make_importance("hessian")
    layer = torch.nn.Linear(2, 1, bias=False)
    for g in (1.0, 2.0):
        layer.weight.grad = torch.full_like(layer.weight, g)
        imp.accumulate_grad(layer)
    assert imp._accu_grad[layer.weight].div(imp._counter[layer.weight]).tolist() == [[2.5, 2.5]]


def test_hessian_per_image_passes_match_per_sample_backward_of_a_batch():
    """Our one-image-at-a-time accumulation equals Torch-Pruning's recipe (backward of each
    per-sample loss of a batched forward), at a fraction of the cost."""
    m, cal = tiny_vit(), _calibration(1)
    ours = prune.make_importance("hessian")
    prune._accumulate_hessian(m, ours, cal)
    recipe = prune.make_importance("hessian")
    images, labels = cal[0]
    for loss in torch.nn.functional.cross_entropy(m(images), labels, reduction="none"):
        m.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        recipe.accumulate_grad(m)
    assert ours._accu_grad.keys() == recipe._accu_grad.keys()
    for p, total in ours._accu_grad.items():
        assert ours._counter[p] == recipe._counter[p] == 8
        torch.testing.assert_close(total, recipe._accu_grad[p], rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize(
    "importance, scope, heads",
    [
        ("taylor", "uniform", "dims"),
        ("hessian", "uniform", "whole"),
        ("taylor", "global", "whole"),
        ("random", "uniform", "whole"),
        ("random", "global", "dims"),
    ],
)
def test_pruning_is_deterministic(importance, scope, heads):
    a, b = tiny_vit(), tiny_vit()
    torch.manual_seed(1)  # the caller's RNG state must not matter
    prune.prune(a, importance, 0.25, EXAMPLE, calibration=_calibration(1), scope=scope, heads=heads)
    torch.manual_seed(2)
    prune.prune(b, importance, 0.25, EXAMPLE, calibration=_calibration(1), scope=scope, heads=heads)
    _assert_same_state(a, b)


def test_random_importance_follows_the_seed():
    a, b = tiny_vit(), tiny_vit()
    prune.prune(a, "random", 0.5, EXAMPLE, seed=0)
    prune.prune(b, "random", 0.5, EXAMPLE, seed=1)
    assert not torch.equal(a.blocks[0].mlp.fc1.weight, b.blocks[0].mlp.fc1.weight)


def test_pruned_models_reload_identically_in_a_fresh_process(tmp_path):
    """Head-dim and whole-head pruned models (with LayerScale) rebuilt in a new interpreter."""
    kwargs = {"num_classes": 10, **TINY_KWARGS, "init_values": 0.5}
    x = torch.randn(3, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    for heads in ["dims", "whole"]:
        m = tiny_vit(init_values=0.5)
        prune.prune(m, "l2", 0.5, EXAMPLE, heads=heads)
        a = arch.describe(m, TIMM_NAME, kwargs, tiny_arch(m)["data_config"])
        store.save_model(m, tmp_path / f"{heads}.safetensors", a)
        torch.save(m(x).detach(), tmp_path / f"{heads}.pt")
    code = (  # same thread count: GEMM results can differ in the last bit across thread splits
        f"import sys, torch; from pqv.common import store; torch.set_num_threads({torch.get_num_threads()})\n"
        f"x = torch.load(r'{tmp_path / 'x.pt'}', weights_only=True)\n"
        "for heads in ['dims', 'whole']:\n"
        f"    m, _ = store.load_model(r'{tmp_path}/' + heads + '.safetensors')\n"
        f"    ref = torch.load(r'{tmp_path}/' + heads + '.pt', weights_only=True)\n"
        "    assert torch.equal(m(x), ref), heads\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "importance, ratio, calibration, options, message",
    [
        ("tayler", 0.5, None, {}, "unknown importance"),
        ("l2", 1.0, None, {}, "outside"),
        ("l2", -0.1, None, {}, "outside"),
        ("taylor", 0.5, None, {}, "needs calibration data"),
        ("hessian", 0.5, [], {}, "needs calibration data"),
        ("l2", 0.5, None, {"scope": "local"}, "unknown pruning scope"),
        ("l2", 0.5, None, {"heads": "all"}, "unknown head pruning mode"),
        ("l2", 0.5, None, {"head_ratio": 0.5}, "whole-head pruning only"),
        ("l2", 0.5, None, {"heads": "whole", "head_ratio": 1.0}, "outside"),
        ("l2", 0.5, None, {"heads": "whole", "head_ratio": 0.9}, "removes all 3 heads"),
    ],
)
def test_bad_prune_input_is_one_clear_error(importance, ratio, calibration, options, message):
    m = tiny_vit()
    ref = tiny_vit()
    with pytest.raises(PQVError, match=message):
        prune.prune(m, importance, ratio, EXAMPLE, calibration=calibration, **options)
    _assert_same_state(m, ref)  # nothing was touched


def test_model_without_attention_is_rejected():
    with pytest.raises(PQVError, match="no timm Attention"):
        prune.prune(torch.nn.Sequential(torch.nn.Linear(4, 4)), "l2", 0.5, torch.zeros(1, 4))


def test_qk_norm_attention_is_rejected():
    with pytest.raises(PQVError, match="qk_norm"):
        prune.prune(tiny_vit(qk_norm=True), "l2", 0.5, EXAMPLE)


# ---- the CLI: options wired through, and user errors as one line, exit 2, no file ----


def _pqv(*args):
    return subprocess.run([sys.executable, "-m", "pqv", *args], capture_output=True, text=True, env=job_environment())


@pytest.fixture
def tiny_file(tmp_path):
    m = tiny_vit()
    path = tmp_path / "model.safetensors"
    store.save_model(m, path, tiny_arch(m))
    return path


def test_cli_prune_passes_every_option(tiny_file, tmp_path):
    out = tmp_path / "out" / "pruned.safetensors"
    result = _pqv(
        "prune",
        "--model",
        str(tiny_file),
        "--out",
        str(out),
        "--importance",
        "taylor",
        "--ratio",
        "0.5",
        "--data",
        manifest_file(),
        "--calibration-batches",
        "1",
        "--batch-size",
        "8",
        "--scope",
        "global",
        "--heads",
        "whole",
        "--head-ratio",
        "0.3",
        "--bottleneck",
        "--round-to",
        "2",
    )
    assert result.returncode == 0, result.stderr
    side = fileio.read_sidecar(out)
    assert (side["scope"], side["heads"], side["head_ratio"], side["bottleneck"], side["round_to"]) == (
        "global",
        "whole",
        0.3,
        True,
        2,
    )
    assert side["params"] < side["params_before"] and side["macs"] < side["macs_before"]
    m, a = store.load_model(out)
    assert m.embed_dim == 48 and [g["head_dim"] for g in a["attention"]] == [16, 16]
    assert sum(g["num_heads"] for g in a["attention"]) < 6


@pytest.mark.parametrize(
    "args, message",
    [
        (["--importance", "l2", "--scope", "sideways"], "unknown pruning scope 'sideways'"),
        (["--importance", "taylor", "--calibration-batches", "0"], "needs calibration data"),
        (["--importance", "l2", "--model", "{resnet}"], "no timm Attention"),
    ],
)
def test_cli_user_errors_are_one_line_and_leave_no_file(tiny_file, tmp_path, args, message):
    resnet = tmp_path / "resnet.safetensors"
    if "{resnet}" in args:
        r = arch.create("test_resnet", pretrained=False, num_classes=10)
        store.save_model(r, resnet, arch.describe(r, "test_resnet", {"num_classes": 10}, {"input_size": [3, 32, 32]}))
    out = tmp_path / "out" / "pruned.safetensors"
    base = {"--model": str(tiny_file), "--out": str(out), "--ratio": "0.5", "--data": json.dumps({"name": "digits"})}
    given = dict(zip(args[::2], [a.format(resnet=resnet) for a in args[1::2]]))
    result = _pqv("prune", *[t for kv in {**base, **given}.items() for t in kv])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "(fix: " in lines[0]
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


@pytest.mark.parametrize("ratio, options", [(0.999, {}), (0.99, {}), (0.97, {}), (0.9, {"round_to": 8}), (0.9, {"scope": "global"})])
def test_a_ratio_out_of_torch_prunings_reach_is_an_error_not_a_dense_model(ratio, options):
    """Near 1, Torch-Pruning leaves groups whole (0.999 gave the dense shapes): the label would lie."""
    with pytest.raises(PQVError, match=f"pruning ratio {ratio:g} is out of Torch-Pruning's reach.*use a ratio of at most"):
        prune.prune(tiny_vit(), "l2", ratio, torch.zeros(1, 1, 8, 8), **options)


@pytest.mark.parametrize("options", [{}, {"round_to": 8}, {"scope": "global"}, {"heads": "whole"}, {"bottleneck": True}])
def test_a_pruned_model_is_as_narrow_as_its_ratio(options):
    m = tiny_vit()
    before = prune.widths(m)
    prune.prune(m, "l2", 0.5, torch.zeros(1, 1, 8, 8), **options)
    after = prune.widths(m)
    prune.check_widths(before, after, 0.5, **options)  # passes
    assert after["blocks.0.mlp"] <= before["blocks.0.mlp"] // 2 + 5
    assert arch.count_params(m) < arch.count_params(tiny_vit()) * 0.6


def test_the_prune_stage_refuses_an_unreachable_ratio_in_one_line_and_writes_nothing(tiny_file, tmp_path):
    out = tmp_path / "out" / "pruned.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "pqv", "prune", "--model", str(tiny_file), "--out", str(out), "--importance", "l2", "--ratio", "0.999"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("pqv prune: error: pruning ratio 0.999 is out of")
    assert not out.exists()
