"""Architecture descriptions: rebuild a (possibly pruned) timm ViT without pickle.

A description is plain JSON: the timm model name, the `create_model` keyword arguments, the
per-block attention geometry and the input preprocessing. Pruned widths are not listed: they are
read from the tensor shapes in the safetensors file, and modules are resized to match before the
weights are loaded with `strict=True`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..plan.errors import PQVError


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """Every timm `Attention` module, in module order."""
    from timm.layers import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


def describe(model: nn.Module, timm_name: str, kwargs: dict, data_config: dict) -> dict:
    return {
        "timm_name": timm_name,
        "kwargs": dict(kwargs),
        "attention": [{"num_heads": a.num_heads, "head_dim": a.head_dim} for a in attention_blocks(model)],
        "data_config": dict(data_config),
    }


def create(timm_name: str, **kwargs) -> nn.Module:
    """`timm.create_model` with an unknown name turned into a one-line error."""
    import timm

    if not timm.is_model(timm_name):
        from ..plan.config import unknown_timm_model

        raise unknown_timm_model(timm_name, timm.list_models())
    return timm.create_model(timm_name, **kwargs)


def build(arch: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    model = create(arch["timm_name"], pretrained=False, **arch["kwargs"])
    resize_to_state(model, state)
    blocks = attention_blocks(model)
    if len(blocks) != len(arch["attention"]):
        raise PQVError(
            f"architecture header lists {len(arch['attention'])} attention blocks, model has {len(blocks)}",
            "the file was made by another model or PQV version; rerun the stage that made it",
        )
    for attn, geo in zip(blocks, arch["attention"]):
        set_attention_geometry(attn, geo["num_heads"], geo["head_dim"])
    model.load_state_dict(state, strict=True)
    return model.eval()


def set_attention_geometry(attn: nn.Module, num_heads: int, head_dim: int) -> None:
    """Keep timm's bookkeeping attributes consistent with the (pruned) projection widths."""
    attn.num_heads = int(num_heads)
    attn.head_dim = int(head_dim)
    attn.attn_dim = int(num_heads * head_dim)
    attn.scale = head_dim**-0.5


# Attributes that mirror a weight's shape, per module type: (attribute, weight name, dim).
_SHAPE_ATTRS = {
    nn.Linear: [("out_features", "weight", 0), ("in_features", "weight", 1)],
    nn.Conv2d: [("out_channels", "weight", 0), ("in_channels", "weight", 1)],
}


def resize_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every parameter/buffer the shape it has in `state` (pruned models are narrower)."""
    modules = dict(model.named_modules())
    for key, tensor in state.items():
        mod_name, _, leaf = key.rpartition(".")
        mod = modules.get(mod_name)
        if mod is None:
            raise PQVError(f"weight '{key}' has no module in this architecture", "the file belongs to another model")
        current = getattr(mod, leaf, None)
        if current is None or current.shape == tensor.shape:
            continue
        fresh = torch.empty(tensor.shape, dtype=current.dtype)
        if leaf in mod._parameters:
            mod._parameters[leaf] = nn.Parameter(fresh, requires_grad=current.requires_grad)
        else:
            mod._buffers[leaf] = fresh
    for mod in model.modules():
        for attr, wname, dim in _SHAPE_ATTRS.get(type(mod), []):
            setattr(mod, attr, getattr(mod, wname).shape[dim])
        if isinstance(mod, nn.LayerNorm) and mod.weight is not None:
            mod.normalized_shape = tuple(mod.weight.shape)
    sync_widths(model)


def sync_widths(model: nn.Module) -> None:
    """Set the model's width attributes (embed_dim, num_features, ...) from its patch embedding."""
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(proj, (nn.Conv2d, nn.Linear)):
        return
    width = proj.weight.shape[0]
    for attr in ("embed_dim", "num_features", "head_hidden_size"):
        if hasattr(model, attr):
            setattr(model, attr, width)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
