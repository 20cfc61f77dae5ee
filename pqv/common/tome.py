"""Token merging (ToMe: Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) for any timm
ViT, with every token count fixed when the model is wrapped, so TorchScript Lite, ExecuTorch and ONNX
files keep static shapes. Written from the paper's description.

In each block, between attention and the MLP, `r` patch tokens are merged away by bipartite soft
matching: the patch tokens are split alternately into sets A and B; the metric is the block's
attention keys averaged over heads; each A token finds its most cosine-similar B token, and the `r`
A tokens with the most similar partners are averaged into them, weighted by the number of patches
each token already holds (its size s). Attention then adds log(s) of every key to the logits
(proportional attention), so a merged token counts as the tokens it holds. The model's prefix
tokens (class, distillation, register: `model.num_prefix_tokens`) take no part in the matching and
stay first, in their order, so timm's heads read them unchanged.

How it is laid out for the mobile runtimes:
- the merge is a matrix product: every input token has one destination row, a one-hot
  (N_out x N_in) matrix is built by comparing the destinations with an arange, and
  `bmm(M, s*x) / bmm(M, s)` is the size-weighted average (no scatter, which XNNPACK lacks);
- the attention is computed like `pqv.common.layers.attend` (slices, reshapes, 3-D `bmm`), with
  log(s) added over a (B, H*N, N) view, and the metric uses slices, adds and a 4-D mean that
  XNNPACK runs;
- outside XNNPACK in a `.pte` are only the matching's index work on a few thousand numbers per
  merging block: max with indices, the pairwise comparisons and sum that rank the pairs (ExecuTorch's
  portable kernels have no sort), where, arange, cat, eq and the cast of the one-hot matrix (and, at
  the first merge, the sum that gives the first sizes). Each merging block therefore splits the
  delegated graph once (tests/test_tome.py counts it in the file).

`apply(model, r)` swaps `model.blocks` (timm's nn.Sequential of Blocks, which VisionTransformer's
forward_features calls as `self.blocks(x)`) for `MergingBlocks`, an nn.Sequential holding the very
same Block modules under the same names: state-dict keys (`blocks.0.attn.qkv.weight`, ...) and
parameters are unchanged, a checkpoint loads into either, and nothing is monkey-patched. Dropouts
of attention (attn_drop, proj_drop) are not applied: merging is for inference and export.
timm's `forward_intermediates` runs the blocks one by one with the tokens alone, which cannot merge:
for a merging model call `forward_intermediates(model, x, ...)` here, which un-merges each
intermediate to the patch grid.
"""

from collections.abc import Sequence

import torch
from torch import nn

from ..plan.errors import PQVError
from .layers import _plain_attention

# what MergingBlocks reads of a block's attention: timm's Attention and pqv's BmmAttention have them
ATTENTION_ATTRIBUTES = ("qkv", "proj", "num_heads", "head_dim", "scale")


def schedule(r: int | Sequence[int], tokens: int, prefix_tokens: int, depth: int) -> list[int]:
    """The static number of tokens each block merges away, given `r` (one int for every block,
    the paper's constant schedule, or one int per block) and the `tokens` entering the first block,
    `prefix_tokens` of them class/distillation/register tokens. A block merges at most half the
    patch tokens entering it (every A token into B), so a larger r is clipped there: the list
    returned is what the model will do, and every later token count follows from it statically."""
    per_block = [int(r)] * depth if isinstance(r, int) else [int(v) for v in r]
    if len(per_block) != depth:
        raise PQVError(
            f"token merging schedule has {len(per_block)} entries for a model of {depth} blocks",
            f"give one r per block ({depth}) or a single int",
        )
    if any(v < 0 for v in per_block):
        raise PQVError(f"token merging r must be >= 0, got {list(per_block)}", "use r = 0 (no merging) or more")
    patches, out = tokens - prefix_tokens, []
    for want in per_block:
        merged = min(want, patches // 2)
        out.append(merged)
        patches -= merged
    return out


def apply(model: nn.Module, r: int | Sequence[int]) -> nn.Module:
    """Make `model` (a timm VisionTransformer, pruned or not, timm's layers or PQV's XNNPACK twins)
    merge tokens, in place, and return it. `r`: tokens merged per block, or one int per block (see
    `schedule`). With r = 0 everywhere the model is returned as is (a merging one goes back to plain
    blocks). No parameter is added; every later token count is static."""
    blocks = getattr(model, "blocks", None)
    if isinstance(r, int) and r == 0 or not isinstance(r, int) and not any(r):
        if isinstance(blocks, MergingBlocks):
            model.blocks = nn.Sequential(*blocks)
        return model
    if isinstance(blocks, MergingBlocks):  # a new r for a merging model: from its plain blocks
        blocks = nn.Sequential(*blocks)
    name = _name(model)
    if not isinstance(blocks, nn.Sequential) or not hasattr(model, "patch_embed"):
        raise PQVError(
            f"token merging needs a timm VisionTransformer (model.blocks, model.patch_embed); {name} has none",
            "use a timm ViT (vit_*, deit_*, deit3_*), or r = 0",
        )
    if getattr(model, "dynamic_img_size", False):
        raise PQVError(
            f"token merging fixes every token count, but {name} takes any image size (dynamic_img_size)",
            "create the model with dynamic_img_size=False, or use r = 0",
        )
    from timm.models.vision_transformer import Block

    for i, block in enumerate(blocks):
        if type(block) is not Block:
            raise PQVError(
                f"token merging supports timm's pre-norm Block; {name} block {i} is {type(block).__name__}",
                "use a ViT of plain Blocks, or r = 0",
            )
        if not _plain_attention(block.attn) or not all(hasattr(block.attn, a) for a in ATTENTION_ATTRIBUTES):
            raise PQVError(
                f"token merging supports plain attention only; {name} block {i} has q/k norm, a post-attention norm or a gate",
                "use a model without qk_norm/scale_attn_norm/gated attention, or r = 0",
            )
    prefix = int(model.num_prefix_tokens)
    tokens = prefix + int(model.patch_embed.num_patches)
    per_block = schedule(r, tokens, prefix, len(blocks))
    if any(per_block):
        model.blocks = MergingBlocks(blocks, per_block, prefix, tokens)
    return model


def tokens_per_block(model: nn.Module) -> list[int]:
    """How many tokens (prefix tokens included) enter each block, and, last, how many leave the
    last one: what `apply` fixed, for tests and reports."""
    blocks = model.blocks
    if isinstance(blocks, MergingBlocks):
        return list(blocks.tokens)
    n = int(model.num_prefix_tokens) + int(model.patch_embed.num_patches)
    return [n] * (len(blocks) + 1)


def merged_per_block(model: nn.Module) -> list[int]:
    """The static r of each block (all zeros for a model that does not merge): a sidecar's record."""
    blocks = model.blocks
    return list(blocks.r) if isinstance(blocks, MergingBlocks) else [0] * len(blocks)


def forward_intermediates(
    model: nn.Module,
    x: torch.Tensor,
    indices: int | list[int] | None = None,
    *,
    norm: bool = False,
    stop_early: bool = False,
    output_fmt: str = "NCHW",
    intermediates_only: bool = False,
    return_prefix_tokens: bool = False,
) -> list | tuple[torch.Tensor, list]:
    """timm's `VisionTransformer.forward_intermediates` for a model that merges tokens: the same
    arguments and return values. timm's method runs `model.blocks` one Block at a time with only the
    tokens, so on a merging model it would run the plain blocks; and its patch-grid reshape needs every
    patch. Here each intermediate is un-merged through the tokens' sources (as the paper's
    visualizations do): every patch carries the features of the token that holds it, so an NCHW
    intermediate has timm's (B, C, H, W) shape and NLC one token per patch. The final features
    (without `intermediates_only`) are the merged tokens, as `forward_features` returns them. A model
    that does not merge runs timm's own method."""
    blocks = model.blocks
    if not isinstance(blocks, MergingBlocks):
        return model.forward_intermediates(
            x,
            indices,
            norm=norm,
            stop_early=stop_early,
            output_fmt=output_fmt,
            intermediates_only=intermediates_only,
            return_prefix_tokens=return_prefix_tokens,
        )
    if output_fmt not in ("NCHW", "NLC"):
        raise PQVError(f"output_fmt {output_fmt!r} is not one of timm's", "use output_fmt='NCHW' or 'NLC'")
    from timm.models._features import feature_take_indices

    take, last = feature_take_indices(len(blocks), indices)
    B, _, height, width = x.shape
    # forward_features' steps before the blocks (timm has no public method for the position embedding)
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    size: torch.Tensor | None = None
    source: torch.Tensor | None = None  # (B, tokens now, tokens entering the first block): which token holds which
    intermediates = []
    for i, block in enumerate(blocks):
        if stop_early and i > last:
            break
        attn = block.attn
        bias = None if size is None else torch.log(size).reshape(B, 1, blocks.tokens[i])
        qkv = attn.qkv(block.norm1(x))
        x = x + block.drop_path1(block.ls1(attn.proj(attend(qkv, attn.num_heads, attn.head_dim, attn.scale, bias))))
        if blocks.r[i] > 0:
            metric = key_metric(qkv, attn.num_heads, attn.head_dim, blocks.prefix_tokens)
            onehot = matching(metric, blocks.r[i], blocks.prefix_tokens, blocks.tokens[i], x)
            x, size = combine(onehot, x, size)
            source = onehot if source is None else torch.bmm(onehot, source)
        x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        if i in take:
            y = model.norm(x) if norm else x
            intermediates.append(y if source is None else torch.bmm(source.transpose(1, 2), y))
    prefix = blocks.prefix_tokens
    prefix_tokens = [y[:, :prefix] for y in intermediates]
    intermediates = [y[:, prefix:] for y in intermediates]
    if output_fmt == "NCHW":
        H, W = model.patch_embed.dynamic_feat_size((height, width))
        intermediates = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
    if return_prefix_tokens and prefix:
        intermediates = list(zip(intermediates, prefix_tokens))
    if intermediates_only:
        return intermediates
    return model.norm(x), intermediates


def _name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


class MergingBlocks(nn.Sequential):
    """timm's blocks, run with token merging: per block norm1 -> attention with the size bias ->
    ls1/drop_path1 residual -> merge r tokens -> norm2 -> MLP residual, carrying the tokens and
    their sizes. An nn.Sequential of the same Block modules under the same names, so the state
    dict, a checkpoint and iteration over `model.blocks` are those of the plain model; scriptable."""

    def __init__(self, blocks: nn.Sequential, r: list[int], prefix_tokens: int, tokens: int):
        super().__init__(*blocks)
        self.r: list[int] = [int(v) for v in r]
        self.prefix_tokens = int(prefix_tokens)
        counts = [int(tokens)]
        for v in self.r:
            counts.append(counts[-1] - v)
        self.tokens: list[int] = counts  # entering each block, then leaving the last

    def __getitem__(self, index):
        """The first blocks (`blocks[:n]`, as timm's prune_intermediate_layers keeps them) merge as
        they did; any other slice is a plain nn.Sequential of its blocks, since the sizes of the tokens
        entering a later block are made by the blocks before it."""
        if not isinstance(index, slice):
            return super().__getitem__(index)
        picked = list(self._modules.values())[index]
        if index.start in (None, 0) and index.step in (None, 1) and any(self.r[: len(picked)]):
            return MergingBlocks(nn.Sequential(*picked), self.r[: len(picked)], self.prefix_tokens, self.tokens[0])
        return nn.Sequential(*picked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size: torch.Tensor | None = None
        bias: torch.Tensor | None = None
        for i, block in enumerate(self):
            r = self.r[i]
            attn = block.attn
            heads, head_dim = attn.num_heads, attn.head_dim
            qkv = attn.qkv(block.norm1(x))
            x = x + block.drop_path1(block.ls1(attn.proj(attend(qkv, heads, head_dim, attn.scale, bias))))
            if r > 0:
                metric = key_metric(qkv, heads, head_dim, self.prefix_tokens)
                x, size = merge(x, size, metric, r, self.prefix_tokens, self.tokens[i])
                bias = torch.log(size).reshape(size.shape[0], 1, self.tokens[i + 1])
            x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return x


def attend(qkv: torch.Tensor, heads: int, head_dim: int, scale: float, bias: torch.Tensor | None) -> torch.Tensor:
    """`pqv.common.layers.attend` with proportional attention: softmax(q k^T * scale + log s) v,
    `bias` being log s of the keys as (B, 1, N) (None while every size is 1). The bias is added
    over a (B, H*N, N) view of the logits, a broadcast XNNPACK runs, instead of expanding it per head."""
    B, N, _ = qkv.shape
    H, D = heads, head_dim
    q, k, v = qkv[..., : H * D], qkv[..., H * D : 2 * H * D], qkv[..., 2 * H * D :]
    q = q.reshape(B, N, H, D).permute(0, 2, 1, 3).reshape(B * H, N, D) * scale
    k = k.reshape(B, N, H, D).permute(0, 2, 3, 1).reshape(B * H, D, N)
    v = v.reshape(B, N, H, D).permute(0, 2, 1, 3).reshape(B * H, N, D)
    logits = torch.bmm(q, k)
    if bias is not None:
        logits = (logits.reshape(B, H * N, N) + bias).reshape(B * H, N, N)
    out = torch.bmm(logits.softmax(dim=-1), v)
    return out.reshape(B, H, N, D).permute(0, 2, 1, 3).reshape(B, N, H * D)


def key_metric(qkv: torch.Tensor, heads: int, head_dim: int, prefix_tokens: int) -> torch.Tensor:
    """The patch tokens' keys averaged over heads and scaled to a common length (sqrt(head_dim)
    instead of 1: a constant factor, which changes no ranking): (B, patches, head_dim). Summed from
    per-head slices and normalized with a 4-D mean, ops XNNPACK runs."""
    H, D = heads, head_dim
    keys = qkv[:, prefix_tokens:, H * D : H * D + D]
    for h in range(1, H):
        keys = keys + qkv[:, prefix_tokens:, (H + h) * D : (H + h + 1) * D]
    B, T, _ = keys.shape
    square = (keys * keys).reshape(B, T, 1, D).mean(dim=[2, 3], keepdim=True).reshape(B, T, 1)
    return keys * torch.rsqrt(square + 1e-6)  # finite for an all-zero key, and representable in FP16


def merge(
    x: torch.Tensor, size: torch.Tensor | None, metric: torch.Tensor, r: int, prefix_tokens: int, tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bipartite soft matching of the `tokens` - `prefix_tokens` patch tokens of x (B, tokens, C),
    given their `metric` (`matching`), then the size-weighted average of every merged pair (`combine`).
    Returns the tokens (B, tokens - r, C) in the order [prefix tokens, A tokens kept (most similar
    first), B tokens] and their sizes (B, tokens - r, 1)."""
    return combine(matching(metric, r, prefix_tokens, tokens, x), x, size)


def matching(metric: torch.Tensor, r: int, prefix_tokens: int, tokens: int, like: torch.Tensor) -> torch.Tensor:
    """Where each of `tokens` tokens goes when r of them merge: a one-hot matrix (B, tokens - r, tokens)
    of `like`'s dtype. The patch tokens' `metric` are vectors of one length (B, patches, c)
    (`key_metric`), whose dot products are then cosine similarities: A = the even patches, B = the odd
    ones; the r A tokens whose best match in B is closest go to their match's row. Built from each
    input token's destination row, compared with an arange (no scatter)."""
    P, T = prefix_tokens, tokens - prefix_tokens
    n_a, n_b = (T + 1) // 2, T // 2
    kept = n_a - r
    a, b = _alternate(metric, T)
    scores = torch.bmm(a, b.transpose(1, 2))  # (B, n_a, n_b) cosine similarities
    best, partner = scores.max(dim=-1, keepdim=True)  # (B, n_a, 1): each A token's match in B
    partner = partner.squeeze(-1)
    # The same maxima as a row, from the transposed scores: a float view of `best` would be an op
    # XNNPACK takes, a delegated island of its own between the portable ops.
    best_row = scores.transpose(1, 2).max(dim=1, keepdim=True)[0]
    rank = _rank(best, best_row)  # 0 = the most similar pair
    # Each input token's destination row: a merged A token goes to its partner's row, a kept one to
    # its place by rank. int64 throughout, which XNNPACK declines: the index work stays one portable
    # run between two delegated graphs. The offsets are tensors, not Python ints: PT2E's prepare
    # turns a scalar operand of add into an FP32 constant, which would make these tensors float.
    first_b, first_kept = _index(P + kept, like), _index(P - r, like)
    dest_a = torch.where(rank < r, partner + first_b, rank + first_kept)
    dest_b = (torch.arange(n_b, device=like.device) + first_b).unsqueeze(0).expand_as(dest_a[:, :n_b])
    pairs = torch.stack([dest_a[:, :n_b], dest_b], dim=2).reshape(dest_a.shape[0], 2 * n_b)
    dest = [torch.arange(P, device=like.device).unsqueeze(0).expand(dest_a.shape[0], P), pairs]
    if T % 2 == 1:
        dest.append(dest_a[:, n_b:])  # an odd count: the last patch is an A token without a B twin
    rows = torch.arange(tokens - r, device=like.device).reshape(1, tokens - r, 1)
    return (torch.cat(dest, dim=1).unsqueeze(1) == rows).to(like.dtype)


def combine(onehot: torch.Tensor, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens x (B, N, C) of sizes `size` (B, N, 1; None: all 1) averaged by size into the rows
    of `onehot` (B, M, N), and the sizes of the rows: two matrix products."""
    if size is None:
        size = onehot.sum(dim=-1, keepdim=True)
        return torch.bmm(onehot, x) / size, size
    size_out = torch.bmm(onehot, size)
    return torch.bmm(onehot, x * size) / size_out, size_out


def _index(value: int, like: torch.Tensor) -> torch.Tensor:
    """An int64 constant as a one-element tensor (see `merge` for why not a Python int)."""
    return torch.full([1], value, dtype=torch.int64, device=like.device)


def _rank(column: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """Each value's place in descending order, ties by index (a permutation of 0..n-1), from the
    same n values as a column (B, n, 1) and as a row (B, 1, n): how many values come before it.
    Pairwise comparisons and a sum, not a sort, which ExecuTorch's portable kernels lack; n is at
    most half the patches, so n^2 stays small."""
    n = row.shape[-1]
    index = torch.arange(n, device=row.device)
    earlier = index.unsqueeze(0) < index.unsqueeze(1)  # [i, j]: j < i
    ahead = (row > column) | ((row == column) & earlier)  # [b, i, j]: j comes before i
    return ahead.to(torch.int64).sum(dim=-1)


def _alternate(metric: torch.Tensor, patches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sets A (even patches) and B (odd patches) of (B, patches, C), by a reshape and unit-stride
    slices (XNNPACK slices only with stride 1)."""
    B, _, C = metric.shape
    n_b = patches // 2
    if patches % 2 == 0:  # no slice that keeps everything: its alias_copy would split the delegated graph
        pairs = metric.reshape(B, n_b, 2 * C)
        return pairs[..., :C], pairs[..., C:]
    pairs = metric[:, : 2 * n_b].reshape(B, n_b, 2 * C)
    return torch.cat([pairs[..., :C], metric[:, 2 * n_b :]], dim=1), pairs[..., C:]
