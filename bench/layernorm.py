"""LayerNorm formulations under ExecuTorch's XNNPACK delegate: which one a ViT should be exported with.

XNNPACK (in ExecuTorch 1.3.1) has no LayerNorm node. timm's `nn.LayerNorm` therefore runs as a
portable kernel outside the delegate, cutting the graph at every norm; PQV's first twin (issue 8)
took the two means over a 4-D view, which XNNPACK runs as global average pooling with a single
channel; PQV's twin since issue 15 (`pqv.common.layers.MeanLayerNorm`) takes them as FP32
matrix-vector products. This script exports a stack of residual LayerNorms of a ViT's token
shape in each formulation, checks each against `torch.nn.functional.layer_norm`, and times it as
bench/latency.py times a model (batch 1, fixed threads, warm-up, median per round, interleaved
rounds). The whole-model effect is bench/latency.py's "pte int8_dynamic pooled-mean LayerNorm" row.

    .venv/bin/python bench/layernorm.py                     # 197 tokens x 696 (9.375 %-pruned DeiT-B)
    .venv/bin/python bench/layernorm.py --width 768         # dense DeiT-B
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from pqv.common import layers, store
from pqv.plan import fileio
from pqv.stages import evaluate, export


class PooledMeanLayerNorm(nn.Module):
    """PQV's LayerNorm twin before issue 15: both means as XNNPACK's mean over the two innermost
    dims of a (tokens, 1, 1, width) view, i.e. global average pooling over one channel."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4 = x.reshape(-1, 1, 1, x.shape[-1])
        centered = x4 - x4.mean(dim=(2, 3), keepdim=True)
        variance = (centered * centered).mean(dim=(2, 3), keepdim=True)
        y = (centered * torch.rsqrt(variance + self.eps)).reshape(x.shape)
        if self.weight is not None:
            y = y * self.weight
        return y + self.bias if self.bias is not None else y


# name -> how a timm nn.LayerNorm is rewritten before export
FORMULATIONS = {
    "nn.LayerNorm (portable kernel)": lambda norm: norm,
    "pooled mean (PQV before issue 15)": PooledMeanLayerNorm,
    "matrix-vector mean (pqv.common.layers)": layers.MeanLayerNorm,
}


class ResidualNorms(nn.Module):
    """`count` LayerNorms applied as x = x + norm(x): a ViT's norms without its other layers."""

    def __init__(self, width: int, count: int, rewrite):
        super().__init__()
        torch.manual_seed(0)
        norms = [nn.LayerNorm(width, eps=1e-6) for _ in range(count)]
        for norm in norms:
            nn.init.normal_(norm.weight, 1.0, 0.3)
            nn.init.normal_(norm.bias, 0.0, 0.3)
        self.norms = nn.ModuleList(rewrite(norm) for norm in norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm in self.norms:
            x = x + norm(x)
        return x


def build(rewrite, width: int, tokens: int, count: int, path: Path) -> tuple[float, int]:
    """Export and lower the stack to `path`; (max |difference| to nn.LayerNorm's, ops outside XNNPACK)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model, reference = ResidualNorms(width, count, rewrite).eval(), ResidualNorms(width, count, lambda n: n).eval()
    x = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(1))
    export._find_flatc()
    lowered = to_edge_transform_and_lower(torch.export.export(model, (x,)), partitioner=[XnnpackPartitioner()])
    outside = sum(
        1
        for n in lowered.exported_program().graph.nodes
        if n.op == "call_function" and "delegate" not in str(n.target) and "getitem" not in str(n.target)
    )
    with open(path, "wb") as f:
        lowered.to_executorch().write_to_file(f)
    with torch.no_grad():
        diff = (export.load(str(path), "pte", "none")(x) - reference(x)).abs().max().item()
    return diff, outside


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=696, help="embedding width (696: DeiT-B pruned 9.375 %%)")
    p.add_argument("--tokens", type=int, default=197)
    p.add_argument("--count", type=int, default=25, help="LayerNorms in the stack (DeiT-B has 25)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="bench/results/layernorm.csv")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    x = torch.randn(1, args.tokens, args.width)
    with tempfile.TemporaryDirectory() as tmp:
        built, programs = {}, {}
        for name, rewrite in FORMULATIONS.items():
            path = Path(tmp) / f"{len(built)}.pte"
            built[name] = build(rewrite, args.width, args.tokens, args.count, path)
            programs[name] = export.load(str(path), "pte", "none")  # binds ExecuTorch's pool to --threads
        rounds: dict[str, list[float]] = {name: [] for name in FORMULATIONS}
        for _ in range(args.rounds):
            for name, fn in programs.items():
                rounds[name].append(evaluate.latency(fn, x, args.warmup, args.runs)["latency_ms_median"])

    machine = {**evaluate.machine(), **store.versions()}
    base = "pooled mean (PQV before issue 15)"
    table = [
        {
            "formulation": name,
            "width": args.width,
            "tokens": args.tokens,
            "layernorms": args.count,
            "ms_median": statistics.median(rounds[name]),
            "ms_per_layernorm": statistics.median(rounds[name]) / args.count,
            "speedup_vs_pooled_mean": statistics.median(b / t for b, t in zip(rounds[base], rounds[name])),
            "round_medians_ms": " ".join(f"{t:.2f}" for t in rounds[name]),
            "max_abs_diff_vs_layer_norm": built[name][0],
            "ops_outside_xnnpack": built[name][1],
            "threads": args.threads,
            "warmup": args.warmup,
            "runs": args.runs,
            "rounds": args.rounds,
            **machine,
        }
        for name in FORMULATIONS
    ]
    print(
        f"{args.count} residual LayerNorms on {args.tokens} x {args.width}, batch 1, {args.threads} threads; "
        f"warm-up {args.warmup}, median of {args.runs} per round, {args.rounds} interleaved rounds; {machine.get('cpu')}"
    )
    print(
        pd.DataFrame(table)[
            [
                "formulation",
                "ms_median",
                "ms_per_layernorm",
                "speedup_vs_pooled_mean",
                "max_abs_diff_vs_layer_norm",
                "ops_outside_xnnpack",
            ]
        ].to_string(index=False)
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_path(out) as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
