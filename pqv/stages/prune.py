"""Prune stage: structural pruning of a timm ViT with Torch-Pruning's dependency graph.

Choices (each a small registry below): the importance criterion, the ranking `scope` (uniform: the
same ratio in every layer; global: one ranking across layers), and what goes in attention (`heads`:
`dims` removes dimensions inside every head, `whole` removes whole heads).

After `pruner.step()` every attention block gets its bookkeeping (num_heads, head_dim, attn_dim,
scale) set from the new projection widths, and the softmax temperature is kept: timm's fused path
uses 1/sqrt(head_dim), so when head_dim shrinks the query projection is rescaled by
sqrt(new/old). That folds the correction into the weights instead of patching timm's classes.
Whole-head pruning leaves head_dim, and so the temperature, unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..common import arch as archmod
from ..common import datasets
from ..common.progress import progress
from ..plan import registry
from ..plan.config import Prune, default
from ..plan.errors import PQVError
from ..plan.search import groups as pruned_groups
from ..plan.search import reach as reach_of


def _tp():
    import torch_pruning as tp

    return tp


def __getattr__(name: str):
    """`HessianImportance`, defined on first use so that importing this module does not import
    Torch-Pruning (the registry names it as "pqv.stages.prune:HessianImportance")."""
    if name != "HessianImportance":
        raise AttributeError(name)

    class HessianImportance(_tp().importance.GroupHessianImportance):
        """Torch-Pruning 1.6.1's `GroupHessianImportance.accumulate_grad` looks parameters up by name in
        a dict keyed by parameter, so every call overwrites: only the last sample would count. This
        keeps the running sum of squared per-sample gradients that OBD needs."""

        def accumulate_grad(self, model):
            for param in model.parameters():
                if param.grad is not None:
                    g2 = param.grad.detach().pow(2)
                    if param in self._accu_grad:
                        self._accu_grad[param] += g2
                        self._counter[param] += 1
                    else:
                        self._accu_grad[param] = g2.clone()
                        self._counter[param] = 1

    globals()[name] = HessianImportance
    return HessianImportance


def make_importance(name: str):
    """A Torch-Pruning importance, built as pqv.plan.registry.IMPORTANCES says."""
    import importlib

    where, kwargs = registry.IMPORTANCES[name]["make"]
    if ":" in where:
        module, attr = where.split(":")
        return getattr(importlib.import_module(module), attr)(**kwargs)
    return getattr(_tp().importance, where)(**kwargs)


def _check_ratio(name: str, ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise PQVError(f"{name} {ratio} is outside [0, 1)", "use a ratio such as 0.09375, 0.25 or 0.5")


def check_args(importance: str, ratio: float, scope: str = "uniform", heads: str = "dims", head_ratio: float | None = None) -> None:
    """Reject bad options before anything is loaded or written."""
    if scope not in registry.SCOPES:
        raise PQVError(f"unknown pruning scope '{scope}'", f"use one of {', '.join(registry.SCOPES)}")
    if heads not in registry.HEAD_MODES:
        raise PQVError(f"unknown head pruning mode '{heads}'", f"use one of {', '.join(registry.HEAD_MODES)}")
    if head_ratio is not None:
        if heads != "whole":
            raise PQVError("head_ratio applies to whole-head pruning only", "set heads to whole or drop head_ratio")
        _check_ratio("head ratio", head_ratio)
    if importance == registry.DENSE and ratio == 0.0:
        return
    if importance not in registry.IMPORTANCES:
        raise PQVError(f"unknown importance '{importance}'", f"use one of {', '.join(registry.IMPORTANCES)}")
    _check_ratio("pruning ratio", ratio)


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
    scope: str = "uniform",
    heads: str = "dims",
    head_ratio: float | None = None,
    bottleneck: bool = False,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Prune `model` in place and return it.

    `ratio` is Torch-Pruning's channel ratio: the fraction of the embedding channels, MLP hidden units
    and (heads="dims") every head's dims removed. With heads="whole", `head_ratio` (default `ratio`)
    is the fraction of heads removed per block, rounded up. `bottleneck` keeps the embedding width.
    Ratio 0 returns the model untouched (the dense branch). Gradients (taylor, hessian) are taken on
    `device` (pqv.common.device.resolve); the pruned model is returned on the CPU.
    """
    check_args(importance, ratio, scope, heads, head_ratio)
    blocks = archmod.attention_blocks(model)
    if not blocks:
        raise PQVError("this model has no timm Attention blocks to prune", "use a timm ViT (deit_*, vit_*, deit3_*)")
    if any(not isinstance(a.q_norm, nn.Identity) for a in blocks):
        raise PQVError(
            "attention with qk_norm cannot be pruned (Torch-Pruning cannot split the per-head norm)", "use a ViT without qk_norm"
        )
    if ratio == 0.0:  # the dense branch, whatever the other options say
        return model
    head_ratio = ratio if head_ratio is None else head_ratio
    needs = registry.IMPORTANCES[importance]["needs"]
    if needs != "weights" and not calibration:
        raise PQVError(f"importance '{importance}' needs calibration data", "give calibration batches (prune.calibration_batches > 0)")
    before = widths(model)
    if heads == "whole" and scope == "uniform":
        for attn in blocks:
            if math.ceil(head_ratio * attn.num_heads) >= attn.num_heads:
                raise PQVError(f"head ratio {head_ratio} removes all {attn.num_heads} heads of a block", "use a smaller head_ratio")

    device = torch.device(device)
    model.to(device)
    old_head_dims = {a: a.head_dim for a in blocks}
    with torch.random.fork_rng(devices=[]):  # seed the pruner's randomness without touching the caller's
        torch.manual_seed(seed)
        imp = make_importance(importance)
        pruner = _pruner(model, imp, example.to(device), ratio, head_ratio, scope, heads, round_to, bottleneck)
        if needs == "gradients":
            _accumulate_gradients(model, calibration, device)
        elif needs == "hessian":
            _accumulate_hessian(model, imp, calibration, device)
        pruner.step()
    model.zero_grad(set_to_none=True)
    model.cpu()
    _set_geometry(model, pruner, old_head_dims)
    check_widths(
        before, widths(model), ratio, scope=scope, heads=heads, head_ratio=head_ratio, round_to=round_to, bottleneck=bottleneck
    )
    return model.eval()


def _pruner(
    model: nn.Module,
    imp,
    example: torch.Tensor,
    ratio: float,
    head_ratio: float,
    scope: str,
    heads: str,
    round_to: int | None,
    bottleneck: bool,
):
    """Torch-Pruning's pruner over the model's dependency graph, every classifier head kept whole."""
    blocks = archmod.attention_blocks(model)
    prune_head_dims, prune_num_heads = registry.HEAD_MODES[heads]
    return _tp().pruner.BasePruner(
        model,
        example,
        importance=imp,
        global_pruning=registry.SCOPES[scope],
        pruning_ratio=ratio,
        ignored_layers=classifiers(model) + (_residual_writers(model) if bottleneck else []),
        round_to=round_to,
        num_heads={a.qkv: a.num_heads for a in blocks},
        prune_head_dims=prune_head_dims,
        prune_num_heads=prune_num_heads,
        head_pruning_ratio=head_ratio if prune_num_heads else 0.0,
        # Torch-Pruning's defaults for these two are shared dicts that it mutates: pass fresh ones.
        in_channel_groups={},
        out_channel_groups={},
        unwrapped_parameters=_unwrapped_parameters(model),
    )


def _set_geometry(model: nn.Module, pruner, old_head_dims: dict) -> None:
    """Every attention block's bookkeeping and softmax temperature from its new widths."""
    blocks = archmod.attention_blocks(model)
    # Global ranking can empty a layer (all of a block's heads or MLP units score lowest).
    emptied = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and 0 in m.weight.shape]
    emptied += [f"attention block {i}" for i, a in enumerate(blocks) if pruner.num_heads[a.qkv] < 1]
    if emptied:
        raise PQVError(f"pruning removed every channel of {emptied[0]}", "use a smaller ratio/head_ratio or scope uniform")
    for attn in blocks:
        num_heads = pruner.num_heads[attn.qkv]
        head_dim = attn.qkv.out_features // (3 * num_heads)
        _keep_softmax_temperature(attn, old_head_dims[attn], head_dim)
        archmod.set_attention_geometry(attn, num_heads, head_dim)
    archmod.sync_widths(model)


def widths(model: nn.Module) -> dict[str, int]:
    """The widths pruning changes, as Torch-Pruning counts them: the embedding, each block's MLP
    hidden units, and each attention block's head dims (one group per block, shared by its heads)
    and heads."""
    out = {"embed": model.patch_embed.proj.out_channels}
    for i, block in enumerate(model.blocks):
        out[f"blocks.{i}.mlp"] = block.mlp.fc1.out_features
        out[f"blocks.{i}.head_dim"] = block.attn.head_dim
        out[f"blocks.{i}.heads"] = block.attn.num_heads
    return out


def check_widths(
    before: dict[str, int],
    after: dict[str, int],
    ratio: float,
    scope: str = "uniform",
    heads: str = "dims",
    head_ratio: float | None = None,
    round_to: int | None = None,
    bottleneck: bool = False,
) -> None:
    """A pruned model must be as narrow as its ratio says. Torch-Pruning leaves a group whole when
    the ratio would keep fewer than one channel (or fewer than `round_to`) of it, so near 1 a "99.9 %
    pruned" model can have every dense width: that is an error, never a result."""
    step = round_to or 1
    groups = pruned_groups(before, heads, bottleneck)

    def target(group: str) -> float:
        if group.endswith(".heads"):
            return before[group] - math.ceil((ratio if head_ratio is None else head_ratio) * before[group])
        return before[group] * (1 - ratio)

    if scope == "uniform":
        wide = [g for g in groups if after[g] > target(g) + step]
    else:  # one ranking across layers: widths differ per layer, their sum follows the ratio
        wide = groups if sum(after[g] for g in groups) > sum(target(g) for g in groups) + step * len(groups) else []
    if not wide:
        return
    g = wide[0]
    reach, narrowest = reach_of(before, round_to, heads, bottleneck)
    raise PQVError(
        f"pruning ratio {ratio:g} is out of Torch-Pruning's reach for this model: {g} kept {after[g]} of "
        f"{before[g]} where the ratio asks for about {max(target(g), 0):.0f}"
        f"{f' in multiples of {step}' if round_to else ''} "
        f"(it leaves a group whole when it would keep less than {'one channel' if step == 1 else f'{step} channels'})",
        f"use a ratio of at most {math.floor(reach * 1000) / 1000:g}, as the narrowest group, {narrowest}, has "
        f"{before[narrowest]} channels{', or a smaller prune.round_to' if round_to else ''}",
    )


def classifiers(model: nn.Module) -> list[nn.Module]:
    """Every classifier head: timm's distilled DeiTs return (head, head_dist) from get_classifier(),
    and Torch-Pruning silently ignores non-module entries of ignored_layers."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    return [h for h in heads if isinstance(h, nn.Module)]


def _unwrapped_parameters(model: nn.Module) -> list[tuple[nn.Parameter, int]]:
    """Parameters outside Linear/Conv/LayerNorm that carry the embedding in their last dim:
    cls/dist/reg tokens and pos_embed on the model, LayerScale gammas (DeiT3's ls1/ls2)."""
    from timm.layers import LayerScale

    params = list(model.parameters(recurse=False))
    params += [m.gamma for m in model.modules() if isinstance(m, LayerScale)]
    return [(p, p.dim() - 1) for p in params]


def _residual_writers(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs are the embedding (residual stream): ignoring them keeps its width."""
    writers = [model.patch_embed.proj]
    for block in model.blocks:
        writers += [block.attn.proj, block.mlp.fc2]
    return writers


def _keep_softmax_temperature(attn: nn.Module, old_head_dim: int, new_head_dim: int) -> None:
    """Scale q by sqrt(new/old) so that q.k / sqrt(new_head_dim) equals the old q.k / sqrt(old_head_dim)."""
    if old_head_dim == new_head_dim:
        return
    factor = math.sqrt(new_head_dim / old_head_dim)
    q_width = attn.qkv.out_features // 3
    with torch.no_grad():  # qkv's output rows are [q | k | v]; no q_norm in between (rejected above)
        attn.qkv.weight[:q_width] *= factor
        if attn.qkv.bias is not None:
            attn.qkv.bias[:q_width] *= factor


def _accumulate_gradients(model: nn.Module, calibration, device: torch.device | str = "cpu") -> None:
    """Taylor: gradients of the loss summed over all calibration batches."""
    model.zero_grad(set_to_none=True)
    model.eval()
    for images, labels in progress(calibration, desc="taylor gradients", unit="batch"):
        nn.functional.cross_entropy(model(images.to(device)), labels.to(device)).backward()


def _accumulate_hessian(model: nn.Module, imp, calibration, device: torch.device | str = "cpu") -> None:
    """Hessian (OBD): the diagonal is estimated by the mean of squared per-sample gradients.

    One forward/backward per image: backpropagating each loss of a batched forward would cost a
    whole batch's backward per sample."""
    imp.zero_grad()
    model.eval()
    for images, labels in progress(calibration, desc="hessian per-sample gradients", unit="batch"):
        images, labels = images.to(device), labels.to(device)
        for image, label in zip(images, labels):
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(image[None]), label[None]).backward()
            imp.accumulate_grad(model)


def run(
    model_path: str,
    out: str,
    importance: str,
    ratio: float,
    manifest,
    calibration_batches: int,
    batch_size: int,
    round_to: int | None = None,
    scope: str = default(Prune, "scope"),
    heads: str = default(Prune, "heads"),
    head_ratio: float | None = None,
    bottleneck: bool = False,
    seed: int = default(Prune, "seed"),
    device: str = "auto",
) -> dict:
    """CLI entry: load, prune, count, save (pickle-free)."""
    from ..common import store
    from ..common.device import resolve

    check_args(importance, ratio, scope, heads, head_ratio)
    model, arch = store.load_model(model_path)
    dc = arch["data_config"]
    example = torch.zeros(1, *dc["input_size"])
    macs_before, params_before = count_ops(model, example)
    calibration = None
    if ratio > 0 and importance in registry.GRADIENT_IMPORTANCES:
        if calibration_batches <= 0:
            raise PQVError(f"importance '{importance}' needs calibration data", "set prune.calibration_batches > 0")
        if manifest is None:
            raise PQVError(
                f"importance '{importance}' needs the data set for its gradients",
                "give --data results/data/train.json (made by `pqv data`)",
            )
        calibration = datasets.calibration_batches(manifest, dc, calibration_batches, batch_size, seed=seed)
    prune(
        model,
        importance,
        ratio,
        example,
        calibration,
        round_to=round_to,
        scope=scope,
        heads=heads,
        head_ratio=head_ratio,
        bottleneck=bottleneck,
        seed=seed,
        device=resolve(device),
    )
    macs_after, params_after = count_ops(model, example)
    arch = archmod.describe(model, arch["timm_name"], arch["kwargs"], dc)
    store.save_model(model, out, arch)
    report = {
        "importance": importance,
        "ratio": ratio,
        "round_to": round_to,
        "scope": scope,
        "heads": heads,
        "head_ratio": ratio if heads == "whole" and head_ratio is None else head_ratio,
        "bottleneck": bottleneck,
        "params_before": params_before,
        "params": params_after,
        "macs_before": macs_before,
        "macs": macs_after,
        "attention": arch["attention"],
        "widths": widths(model),
    }
    store.write_sidecar(out, "prune", parent=str(model_path), data_config=dc, **report)
    return report
