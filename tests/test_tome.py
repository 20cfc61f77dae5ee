"""Token merging (pqv.common.tome): the static schedule, prefix tokens, the exactness that size-weighted
averaging with proportional attention guarantees, pruned models, and the mobile files of a merging
model made by the project's own quantize and export functions."""

import copy

import pytest
import timm
import torch
from torch import nn

from pqv.common import arch, ort, tome
from pqv.plan import registry
from pqv.plan.config import Export, default
from pqv.plan.errors import PQVError
from pqv.stages import export, prune, quantize

from .conftest import tiny_vit

IMAGES = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
R = 4  # tiny_vit: a class token and 16 patches, 17 -> 13 -> 9 tokens


def test_r0_returns_the_model_as_it_is():
    model = tiny_vit()
    blocks = model.blocks
    assert tome.apply(model, 0) is model and model.blocks is blocks
    assert tome.apply(model, [0, 0]) is model and model.blocks is blocks
    assert tome.merged_per_block(model) == [0, 0] and tome.tokens_per_block(model) == [17, 17, 17]


def test_merging_adds_no_parameter_and_keeps_every_state_dict_key():
    plain = tiny_vit()
    merged = tome.apply(copy.deepcopy(plain), R)
    assert isinstance(merged.blocks, tome.MergingBlocks)
    assert merged.state_dict().keys() == plain.state_dict().keys()
    first = merged.blocks[:1]  # timm's prune_intermediate_layers keeps the first blocks: they still merge
    assert isinstance(first, tome.MergingBlocks) and first[0] is merged.blocks[0] and first.tokens == [17, 13]
    assert type(merged.blocks[1:]) is nn.Sequential  # a later block cannot know the sizes of its tokens
    assert arch.count_params(merged) == arch.count_params(plain)
    other = tome.apply(tiny_vit(seed=1), R)
    other.load_state_dict(plain.state_dict(), strict=True)  # a plain checkpoint loads into a merging model
    tiny_vit(seed=2).load_state_dict(merged.state_dict(), strict=True)  # and the other way
    with torch.no_grad():
        torch.testing.assert_close(other(IMAGES), merged(IMAGES), atol=0, rtol=0)
        tome.apply(merged, 0)  # r = 0 on a merging model: the same Blocks, run by timm again
        assert type(merged.blocks) is nn.Sequential
        torch.testing.assert_close(merged(IMAGES), plain(IMAGES), atol=0, rtol=0)


@pytest.mark.parametrize(
    "r, tokens, prefix, depth, expected",
    [
        (4, 17, 1, 2, [4, 4]),
        (100, 17, 1, 3, [8, 4, 2]),  # at most half the patch tokens entering each block
        ([2, 0, 5], 18, 2, 3, [2, 0, 5]),
        ([9, 9], 19, 2, 2, [8, 4]),  # an odd count: 17 patches, 8 of them in B
        (8, 197, 1, 12, [8] * 12),  # DeiT-B at r = 8: 197 -> 101 tokens
    ],
)
def test_schedule_is_static_and_merges_at_most_half_the_patches(r, tokens, prefix, depth, expected):
    assert tome.schedule(r, tokens, prefix, depth) == expected


@pytest.mark.parametrize("r, message", [([1, 2, 3], "3 entries for a model of 2 blocks"), ([1, -1], "r must be >= 0")])
def test_a_bad_schedule_is_one_clear_error(r, message):
    with pytest.raises(PQVError, match=message):
        tome.schedule(r, 17, 1, 2)


def test_token_counts_per_block_are_the_static_schedule():
    model = tome.apply(tiny_vit(), R)
    assert tome.merged_per_block(model) == [R, R] and tome.tokens_per_block(model) == [17, 13, 9]
    entering, merged = [], []
    for block in model.blocks:
        block.norm1.register_forward_hook(lambda m, inputs, out: entering.append(inputs[0].shape[1]))
        block.norm2.register_forward_hook(lambda m, inputs, out: merged.append(inputs[0].shape[1]))
    with torch.no_grad():
        features = model.forward_features(IMAGES)
    assert entering == [17, 13] and merged == [13, 9] and features.shape[:2] == (8, 9)


def test_flops_fall_with_r():
    from torch.utils.flop_counter import FlopCounterMode

    def flops(r):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            tome.apply(tiny_vit(), r)(IMAGES[:1])
        return counter.get_total_flops()

    assert flops(0) > flops(2) > flops(4)


def _reference_merge(x, metric, r, prefix):
    """The paper's bipartite soft matching written plainly (loops, a sort) for one image of sizes 1."""
    a_idx, b_idx = list(range(0, metric.shape[0], 2)), list(range(1, metric.shape[0], 2))
    unit = torch.nn.functional.normalize(metric, dim=-1)
    best, partner = (unit[a_idx] @ unit[b_idx].T).max(dim=-1)
    order = sorted(range(len(a_idx)), key=lambda i: (-best[i].item(), i))
    merged, kept = order[:r], order[r:]
    patches = x[prefix:]
    groups = [[b] for b in b_idx]
    for i in merged:
        groups[partner[i]].append(a_idx[i])
    rows = [x[:prefix]] + [patches[a_idx[i]][None] for i in kept] + [patches[g].mean(0, keepdim=True) for g in groups]
    sizes = [1.0] * (prefix + len(kept)) + [float(len(g)) for g in groups]
    return torch.cat(rows), torch.tensor(sizes)[:, None]


@pytest.mark.parametrize("tokens, prefix, r", [(11, 1, 3), (12, 1, 5), (12, 2, 5), (9, 0, 2)])
def test_merge_is_bipartite_soft_matching_with_size_weighted_averages(tokens, prefix, r):
    g = torch.Generator().manual_seed(tokens + r)
    x, metric = torch.randn(2, tokens, 6, generator=g), torch.randn(2, tokens - prefix, 4, generator=g)
    metric = torch.nn.functional.normalize(metric, dim=-1)  # what key_metric hands merge: keys of one length
    out, size = tome.merge(x, None, metric, r, prefix, tokens)
    assert out.shape == (2, tokens - r, 6) and size.shape == (2, tokens - r, 1)
    for image in range(2):
        expected, expected_size = _reference_merge(x[image], metric[image], r, prefix)
        torch.testing.assert_close(out[image], expected)
        torch.testing.assert_close(size[image], expected_size)
    assert torch.equal(out[:, :prefix], x[:, :prefix])  # prefix tokens: first, in their order, untouched
    # a second merge carries the sizes: the sizes still sum to the patches, the size-weighted sum is kept
    again, size_again = tome.merge(out, size, metric[:, : tokens - r - prefix], 1, prefix, tokens - r)
    assert torch.equal(size_again.sum(dim=1), torch.full((2, 1), float(tokens)))
    torch.testing.assert_close((again * size_again).sum(dim=1), x.sum(dim=1))


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224"])
def test_class_and_distillation_tokens_stay_first_and_are_never_merged(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10).eval()
    prefix = model.num_prefix_tokens
    assert prefix == (2 if "distilled" in name else 1)
    tome.apply(model, R)
    assert tome.tokens_per_block(model) == [prefix + 16, prefix + 12, prefix + 8]
    seen = {}
    for i, block in enumerate(model.blocks):
        block.norm1.register_forward_hook(lambda m, inputs, out, i=i: seen.__setitem__(("in", i), inputs[0]))
        block.attn.proj.register_forward_hook(lambda m, inputs, out, i=i: seen.__setitem__(("attn", i), out))
        block.norm2.register_forward_hook(lambda m, inputs, out, i=i: seen.__setitem__(("merged", i), inputs[0]))
    with torch.no_grad():
        logits = model(torch.randn(3, 3, 32, 32))
    assert logits.shape == (3, 10)  # timm's heads read x[:, 0] (and the distilled x[:, 1]) unchanged
    for i in range(2):
        after_attention = seen["in", i] + seen["attn", i]  # no layer scale, no drop path here
        torch.testing.assert_close(seen["merged", i][:, :prefix], after_attention[:, :prefix], atol=1e-6, rtol=0)


def _generic(model, seed=0):
    """Random weights of a size that makes every logit depend on every token (timm's init keeps them tiny)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


PAIRS = (0, 3, 5)  # A_i and B_i (patches 2i and 2i+1) made identical
TOLERANCE = 1e-5


def _identical_pairs(model, pairs=PAIRS):
    """Images (and position embeddings) whose patch tokens 2i and 2i+1 enter the first block equal,
    for each i in pairs: the pairs lie side by side in one row of tiny_vit's 4 x 4 patch grid."""
    rows, cols = model.patch_embed.grid_size
    ph, pw = model.patch_embed.patch_size
    first = 0 if model.no_embed_class else model.num_prefix_tokens
    images = torch.randn(2, 1, rows * ph, cols * pw, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for i in pairs:
            model.pos_embed[:, first + 2 * i + 1] = model.pos_embed[:, first + 2 * i]
            row, col = divmod(2 * i, cols)
            patch = images[..., row * ph : (row + 1) * ph, col * pw : (col + 1) * pw]
            images[..., row * ph : (row + 1) * ph, (col + 1) * pw : (col + 2) * pw] = patch
    return images


def _pruned():
    model = tiny_vit()
    prune.prune(model, "l1", 0.25, torch.zeros(1, 1, 8, 8), scope="global")
    return model


@pytest.mark.parametrize("make", [tiny_vit, _pruned], ids=["dense", "pruned"])
def test_merging_identical_tokens_leaves_the_logits_unchanged(make, monkeypatch):
    """Two equal tokens merged into one of size 2 attend and are attended to exactly as the two did:
    that is what the size-weighted average and the log(size) attention bias guarantee. The pruned
    model (its blocks of different head widths) checks that each block's own geometry is used."""
    plain = _generic(make())
    images = _identical_pairs(plain)
    with torch.no_grad():
        reference = plain(images)
        merged = tome.apply(copy.deepcopy(plain), [len(PAIRS), 0])
        assert reference.abs().max() > 0.1
        torch.testing.assert_close(merged(images), reference, atol=TOLERANCE, rtol=0)
        # the check can fail: one more merge joins two different tokens ...
        assert (tome.apply(copy.deepcopy(plain), [len(PAIRS) + 1, 0])(images) - reference).abs().max() > 10 * TOLERANCE
        # ... and attention without the size bias counts a merged token once
        attend = tome.attend
        monkeypatch.setattr(tome, "attend", lambda qkv, heads, dim, scale, bias: attend(qkv, heads, dim, scale, None))
        assert (merged(images) - reference).abs().max() > 10 * TOLERANCE


def test_a_pruned_model_merges_runs_and_scripts():
    model = _pruned()
    geometry = [(a.num_heads, a.head_dim) for a in arch.attention_blocks(model)]
    assert len(set(geometry)) > 1  # the blocks differ: each block's own heads are read
    tome.apply(model, R)
    assert tome.tokens_per_block(model) == [17, 13, 9]
    with torch.no_grad():
        out = model(IMAGES)
        assert out.shape == (8, 10) and torch.isfinite(out).all()
        torch.testing.assert_close(torch.jit.script(model)(IMAGES), out, atol=1e-5, rtol=0)


def test_attention_other_than_plain_is_one_clear_error():
    model = tiny_vit(qk_norm=True)
    with pytest.raises(PQVError) as error:
        tome.apply(model, R)
    assert "\n" not in str(error.value)
    assert "vit_tiny_patch16_224 block 0" in str(error.value) and "plain attention" in str(error.value)
    assert type(model.blocks) is nn.Sequential  # left as it was


# ---- the mobile files of a merging model -------------------------------------------------------------

# FP32 where the program is TorchScript (scripting is the strict path), int8 in every runtime; an
# FP32 .pte or .onnx lowers the same graph as its int8 twin (CI time: each .pte lowering is ~20 s)
FILES = [
    ("fp32", "none", "ptl"),
    ("int8_dynamic", "x86", "ptl"),
    ("int8_dynamic", "xnnpack", "pte"),
    ("int8_dynamic", "mlas_plain", "onnx"),
    ("int8_dynamic", "mlas_plain", "ort"),  # ONNX Runtime Mobile's format, converted by ORT's own tool
]


@pytest.fixture(scope="module")
def merged_files(tmp_path_factory):
    """Each file made once from one merging tiny model, as the quantize and export stages make them."""
    model = tome.apply(tiny_vit(), R)
    folder = tmp_path_factory.mktemp("tome")
    made = {}

    def make(precision, engine, fmt):
        if (precision, engine, fmt) not in made:
            if fmt in registry.ONNX_FORMATS and not ort.available():
                pytest.skip("ONNX Runtime is not installed")
            ir = registry.ir_of(fmt)
            program = quantize.quantize(model, precision, engine, ir, None)
            src, out = folder / f"{precision}-{engine}-{fmt}.{ir}", folder / f"{precision}-{engine}.{fmt}"
            quantize.save(program, str(src), ir)
            with quantize.engine_scope(engine):
                export.FORMATS[fmt].export(str(src), str(out), precision, {"engine": engine})
            made[precision, engine, fmt] = out
        return made[precision, engine, fmt]

    return model, make


@pytest.mark.parametrize("precision, engine, fmt", FILES)
def test_every_format_of_a_merging_model_agrees_with_it(merged_files, precision, engine, fmt):
    """The export stage's own check: FP32 within 1e-4 of the eager merging model, int8 by cosine."""
    model, make = merged_files
    with torch.no_grad():
        reference = model(IMAGES)
    got = export.load(str(make(precision, engine, fmt)), fmt, engine)(IMAGES)
    fidelity = export.compare(got, reference)
    assert export.verdict(precision, fidelity, default(Export, "min_cosine")) is None, fidelity
    if precision == "fp32":  # the file merges as the eager model does, not like the unmerged one
        with torch.no_grad():
            unmerged = tome.apply(copy.deepcopy(model), 0)(IMAGES)
        assert (got - unmerged).abs().max() > 10 * registry.PRECISIONS["fp32"]["atol"]


def test_the_pte_keeps_the_merge_matmuls_delegated_and_splits_once_per_merging_block(merged_files):
    """Read from the .pte itself: XNNPACK runs the blocks, the merge's matrix products included; outside
    it run the class token's broadcast and selection, and per merging block one short run of index
    work on a few hundred numbers (the matching's max with indices, the rank comparisons, where,
    arange, cat, eq and the one-hot cast), which ends a delegated graph: 2 graphs + 1 per merging block."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    model, make = merged_files
    pte = deserialize_pte_binary(make("int8_dynamic", "xnnpack", "pte").read_bytes())
    plan = pte.program.execution_plan[0]
    portable = {op.name for op in plan.operators}
    merging = sum(r > 0 for r in tome.merged_per_block(model))
    assert merging == 2 and len(plan.delegates) == 2 + merging
    assert not portable & {"aten::bmm", "aten::mm", "aten::linear", "aten::addmm", "aten::_softmax", "aten::sort"}, portable
    assert portable <= {
        "aten::add",
        "aten::alias_copy",
        "aten::arange",
        "aten::bitwise_and",
        "aten::bitwise_or",
        "aten::cat",
        "aten::eq",
        "aten::expand_copy",
        "aten::full",
        "aten::gt",
        "aten::lt",
        "aten::max",
        "aten::select_copy",
        "aten::squeeze_copy",
        "aten::sum",
        "aten::unsqueeze_copy",
        "aten::where",
        "dim_order_ops::_to_dim_order_copy",
        "aten::view_copy",
    }, portable


def test_forward_intermediates_unmerge_to_the_plain_models_features():
    """Merging identical tokens changes nothing (above), so the intermediates un-merged to the patch
    grid are the plain model's, in timm's shapes; the final features are forward_features' merged tokens."""
    plain = _generic(tiny_vit())
    images = _identical_pairs(plain)
    merged = tome.apply(copy.deepcopy(plain), [len(PAIRS), 0])
    with torch.no_grad():
        expected_final, expected = plain.forward_intermediates(images, norm=True)
        final, got = tome.forward_intermediates(merged, images, norm=True)
        torch.testing.assert_close(final, merged.forward_features(images), atol=0, rtol=0)
        assert final.shape[1] == 17 - len(PAIRS) and expected_final.shape[1] == 17
        assert [y.shape for y in got] == [y.shape for y in expected] == [(2, 48, 4, 4)] * 2
        for y, reference in zip(got, expected, strict=True):
            torch.testing.assert_close(y, reference, atol=TOLERANCE, rtol=0)
        # the check can fail: one more merge joins two different tokens, and its patches share features
        one_more = tome.apply(copy.deepcopy(plain), [len(PAIRS) + 1, 0])
        assert (tome.forward_intermediates(one_more, images, norm=True)[1][0] - expected[0]).abs().max() > 10 * TOLERANCE
        # a plain model runs timm's own method
        plain_final, plain_maps = tome.forward_intermediates(plain, images, norm=True)
        torch.testing.assert_close(plain_final, expected_final, atol=0, rtol=0)


def test_every_patch_carries_the_features_of_the_token_that_holds_it():
    model = tome.apply(tiny_vit(), R)  # 17 -> 13 -> 9 tokens
    with torch.no_grad():
        final, maps = tome.forward_intermediates(model, IMAGES, output_fmt="NLC", return_prefix_tokens=True, norm=True)
        first_only = tome.forward_intermediates(model, IMAGES, indices=[0], stop_early=True, intermediates_only=True)
    assert [(y.shape, prefix.shape) for y, prefix in maps] == [((8, 16, 48), (8, 1, 48))] * 2
    last, prefix = maps[-1]
    assert torch.equal(prefix, final[:, :1])  # the class token is never merged
    for image in range(8):  # each of the 8 patch tokens left is copied to the patches it holds, and nothing else is
        rows = torch.unique(last[image], dim=0)
        assert torch.equal(rows, torch.unique(final[image, 1:], dim=0)) and rows.shape[0] == 8
        assert torch.unique(first_only[0][image].flatten(1).T, dim=0).shape[0] == 12
    assert len(first_only) == 1 and first_only[0].shape == (8, 48, 4, 4)


def test_prune_intermediate_layers_keeps_merging():
    model = tome.apply(tiny_vit(), R)
    assert model.prune_intermediate_layers([0]) == [0]
    assert tome.tokens_per_block(model) == [17, 13]
    with torch.no_grad():
        assert model.forward_features(IMAGES).shape == (8, 13, 48)
