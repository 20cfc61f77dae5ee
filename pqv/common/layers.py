"""Drop-in equivalents of timm's ViT layers, written in ops that ExecuTorch's XNNPACK delegate runs.

ExecuTorch hands XNNPACK the longest runs of ops it supports; every op it does not support ends
a delegated subgraph, and the tensor crosses into a portable (single-threaded, unoptimized)
kernel and back. A timm ViT exported as is splits into ~120 subgraphs on a 9.375 %-pruned DeiT-B:
`layer_norm` has no XNNPACK node, `q @ k` decomposes into `expand_copy` + `bmm` (the expand is
portable), and `qkv.unbind` into `squeeze_copy` (portable). These modules compute the same
function (to float rounding) with matrix-vector means, rsqrt, slices and 3-D `bmm`, so the blocks become one
delegated graph (5-18 % faster at int8 on DeiT-B; with the fixed batch-1 export, 1.7x: see
docs/latency.md). They share the original parameters; nothing is copied or retrained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MeanLayerNorm(nn.Module):
    """LayerNorm over the last dim, its two means taken as FP32 matrix-vector products.

    XNNPACK's only mean is global average pooling, vectorized over channels; a row mean over a
    4-D view has one channel, and the LayerNorm built on it was 2-3x slower than this one
    (bench/layernorm.py; the whole-model effect is in docs/latency.md). The averaging row is a
    non-persistent buffer used through `F.linear`, so no checkpoint changes and no quantizer,
    which looks for `nn.Linear` modules, ever turns the statistics into int8."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps
        width, like = norm.normalized_shape[0], norm.weight if norm.weight is not None else torch.empty(0)
        self.register_buffer("row_mean", torch.full((1, width), 1.0 / width, dtype=like.dtype, device=like.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - F.linear(x, self.row_mean)
        variance = F.linear(centered * centered, self.row_mean)
        y = centered * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


class BmmAttention(nn.Module):
    """timm's `Attention` (no qk-norm, no gate) with q/k/v sliced out of qkv and 3-D batched matmuls."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.qkv, self.proj = attn.qkv, attn.proj
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("BmmAttention is for unmasked ViT self-attention")
        return self.proj(attend(self.qkv(x), self.num_heads, self.head_dim, self.scale))


def attend(qkv: torch.Tensor, heads: int, head_dim: int, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v of every head, from the qkv Linear's output (B, N, 3*H*D) to
    the heads side by side (B, N, H*D): slices and 3-D `bmm`, which XNNPACK runs."""
    B, N, _ = qkv.shape
    H, D = heads, head_dim
    q, k, v = qkv[..., : H * D], qkv[..., H * D : 2 * H * D], qkv[..., 2 * H * D :]
    q = q.reshape(B, N, H, D).permute(0, 2, 1, 3).reshape(B * H, N, D) * scale
    k = k.reshape(B, N, H, D).permute(0, 2, 3, 1).reshape(B * H, D, N)
    v = v.reshape(B, N, H, D).permute(0, 2, 1, 3).reshape(B * H, N, D)
    out = torch.bmm(torch.bmm(q, k).softmax(dim=-1), v)
    return out.reshape(B, H, N, D).permute(0, 2, 1, 3).reshape(B, N, H * D)


def _plain_attention(attn: nn.Module) -> bool:
    """Only the plain form BmmAttention reproduces: no qk-norm, no post-attention norm, no gate."""
    return (
        all(isinstance(getattr(attn, name, nn.Identity()), nn.Identity) for name in ("q_norm", "k_norm", "norm"))
        and getattr(attn, "gate", None) is None
    )


def for_xnnpack(model: nn.Module) -> nn.Module:
    """Swap, in place, every LayerNorm and plain timm Attention for its XNNPACK-friendly twin.
    Attention blocks of other forms keep timm's explicit (unfused) path, which XNNPACK also runs."""
    from .arch import attention_blocks

    blocks = attention_blocks(model)
    for attn in blocks:
        attn.fused_attn = False  # timm's fused SDPA would fall back to slow portable kernels
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LayerNorm) and len(child.normalized_shape) == 1:
                setattr(parent, name, MeanLayerNorm(child))
            elif any(child is a for a in blocks) and _plain_attention(child):
                setattr(parent, name, BmmAttention(child))
    return model
