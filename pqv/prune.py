"""Prune stage: structural pruning of a timm ViT with Torch-Pruning's dependency graph.

After `pruner.step()` every attention block gets its bookkeeping (num_heads, head_dim, attn_dim,
scale) set from the new projection widths, and the softmax temperature is kept: timm's fused path
uses 1/sqrt(head_dim), so when head_dim shrinks the query projection is rescaled by
sqrt(new/old). That folds the correction into the weights instead of patching timm's classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from . import arch as archmod
from . import data
from .errors import PQVError


@dataclass(frozen=True)
class Importance:
    """How to build a Torch-Pruning importance, and what it needs to see before scoring."""

    make: Callable[[], object]
    needs: str = "weights"  # "weights" | "gradients" | "hessian"


def _tp():
    import torch_pruning as tp

    return tp


IMPORTANCES: dict[str, Importance] = {
    "l1": Importance(lambda: _tp().importance.GroupMagnitudeImportance(p=1)),
    "l2": Importance(lambda: _tp().importance.GroupMagnitudeImportance(p=2)),
    "lamp": Importance(lambda: _tp().importance.LAMPImportance(p=2)),
    "random": Importance(lambda: _tp().importance.RandomImportance()),
    "taylor": Importance(lambda: _tp().importance.GroupTaylorImportance(), needs="gradients"),
    "hessian": Importance(lambda: _tp().importance.GroupHessianImportance(), needs="hessian"),
}


NO_PRUNING = "none"  # the importance name of the dense branch (ratio 0)


def check_args(importance: str, ratio: float) -> None:
    if importance == NO_PRUNING and ratio == 0.0:
        return
    if importance not in IMPORTANCES:
        raise PQVError(f"unknown importance '{importance}'", f"use one of {', '.join(IMPORTANCES)}")
    if not 0.0 <= ratio < 1.0:
        raise PQVError(f"pruning ratio {ratio} is outside [0, 1)", "use a ratio such as 0.09375, 0.25 or 0.5")


def count_ops(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, params) of one forward pass on `example` (batch 1)."""
    macs, params = _tp().utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def prune(
    model: nn.Module,
    importance: str,
    ratio: float,
    example: torch.Tensor,
    calibration: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    round_to: int | None = None,
    global_pruning: bool = False,
    bottleneck: bool = False,
    seed: int = 0,
) -> nn.Module:
    """Prune `model` in place, removing `ratio` of the channels of each prunable group, and return it.

    `bottleneck` keeps the embedding width and prunes only the MLP hidden units and head dims.
    """
    check_args(importance, ratio)
    blocks = archmod.attention_blocks(model)
    if not blocks:
        raise PQVError("this model has no timm Attention blocks to prune", "use a timm ViT (deit_*, vit_*, deit3_*)")
    if ratio == 0.0:
        return model
    imp_spec = IMPORTANCES[importance]
    if imp_spec.needs != "weights" and not calibration:
        raise PQVError(f"importance '{importance}' needs calibration data", "give calibration batches (prune.calibration_batches > 0)")

    tp = _tp()
    torch.manual_seed(seed)
    imp = imp_spec.make()
    old_head_dims = {a: a.head_dim for a in blocks}
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=imp,
        global_pruning=global_pruning,
        pruning_ratio=ratio,
        ignored_layers=[model.get_classifier()] + (_residual_writers(model) if bottleneck else []),
        num_heads={a.qkv: a.num_heads for a in blocks},
        prune_head_dims=True,
        prune_num_heads=False,
        round_to=round_to,
        # cls_token / pos_embed sit directly on the model: their last dim is the embedding width.
        unwrapped_parameters=[(p, p.dim() - 1) for p in model.parameters(recurse=False)],
    )
    if imp_spec.needs == "gradients":
        _accumulate_gradients(model, calibration)
    elif imp_spec.needs == "hessian":
        _accumulate_hessian(model, imp, calibration)
    pruner.step()
    model.zero_grad(set_to_none=True)

    for attn in blocks:
        num_heads = pruner.num_heads[attn.qkv]
        head_dim = attn.qkv.out_features // (3 * num_heads)
        _keep_softmax_temperature(attn, old_head_dims[attn], head_dim)
        archmod.set_attention_geometry(attn, num_heads, head_dim)
    return model.eval()


def _residual_writers(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs are the embedding (residual stream): ignoring them keeps its width."""
    writers = [model.patch_embed.proj]
    for block in model.blocks:
        writers += [block.attn.proj, block.mlp.fc2]
    return writers


def _keep_softmax_temperature(attn: nn.Module, old_head_dim: int, new_head_dim: int) -> None:
    if old_head_dim == new_head_dim:
        return
    factor = math.sqrt(new_head_dim / old_head_dim)
    q_width = attn.qkv.out_features // 3
    with torch.no_grad():
        if isinstance(attn.q_norm, nn.Identity):
            attn.qkv.weight[:q_width] *= factor
            if attn.qkv.bias is not None:
                attn.qkv.bias[:q_width] *= factor
        else:  # the norm's affine output is what meets the keys
            attn.q_norm.weight *= factor
            if getattr(attn.q_norm, "bias", None) is not None:
                attn.q_norm.bias *= factor


def _accumulate_gradients(model: nn.Module, calibration) -> None:
    model.zero_grad(set_to_none=True)
    model.eval()
    for images, labels in calibration:
        nn.functional.cross_entropy(model(images), labels).backward()


def _accumulate_hessian(model: nn.Module, imp, calibration) -> None:
    imp.zero_grad()
    model.eval()
    for images, labels in calibration:
        losses = nn.functional.cross_entropy(model(images), labels, reduction="none")
        for i, loss in enumerate(losses):
            model.zero_grad(set_to_none=True)
            loss.backward(retain_graph=i < len(losses) - 1)
            imp.accumulate_grad(model)


def run(model_path: str, out: str, importance: str, ratio: float, spec: dict, calibration_batches: int,
        batch_size: int, round_to: int | None, global_pruning: bool, seed: int, bottleneck: bool = False) -> dict:
    """CLI entry: load, prune, count, save (pickle-free)."""
    from . import io

    check_args(importance, ratio)
    model, arch = io.load_model(model_path)
    dc = arch["data_config"]
    example = torch.zeros(1, *dc["input_size"])
    macs_before, params_before = count_ops(model, example)
    calibration = None
    if ratio > 0 and IMPORTANCES[importance].needs != "weights":
        if calibration_batches <= 0:
            raise PQVError(f"importance '{importance}' needs calibration data", "set prune.calibration_batches > 0")
        loader = data.loader(spec, "train", dc, batch_size, training=False, seed=seed)
        calibration = [batch for _, batch in zip(range(calibration_batches), loader)]
    prune(model, importance, ratio, example, calibration, round_to=round_to, global_pruning=global_pruning,
          bottleneck=bottleneck, seed=seed)
    macs_after, params_after = count_ops(model, example)
    arch = archmod.describe(model, arch["timm_name"], arch["kwargs"], dc)
    io.save_model(model, out, arch)
    report = {
        "importance": importance, "ratio": ratio, "round_to": round_to, "global": global_pruning,
        "bottleneck": bottleneck,
        "params_before": params_before, "params": params_after, "macs_before": macs_before, "macs": macs_after,
        "attention": arch["attention"],
    }
    io.write_sidecar(out, "prune", parent=str(model_path), data_config=dc, **report)
    return report
