"""Params and MACs of DeiT-B before/after pruning, per importance and ratio (and a few option variants).

Counts only: the model is randomly initialised (pretrained=False) and Taylor/Hessian see a few batches
of random images with random labels, which is enough to rank channels but says nothing about accuracy.
Widths do not depend on the weights under uniform scope; under global scope they do.

    .venv/bin/python bench/prune_table.py [--model deit_base_patch16_224] [--out bench/results/prune_table.csv]
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

from pqv.common import arch, store
from pqv.plan import fileio
from pqv.stages import prune

RATIOS = [0.09375, 0.25, 0.5]
IMPORTANCES = ["l1", "l2", "taylor", "hessian", "random", "lamp"]
# (label, prune() options) compared with L2 at every ratio
VARIANTS = [
    ("round_to=2", {"round_to": 2}),
    ("round_to=16", {"round_to": 16}),
    ("heads=whole", {"heads": "whole"}),
    ("scope=global", {"scope": "global"}),
    ("bottleneck", {"bottleneck": True}),
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def widths(model) -> dict:
    """Embedding, heads x head_dim and MLP hidden width; 'a-b' where blocks differ (global scope)."""

    def span(values):
        lo, hi = min(values), max(values)
        return str(lo) if lo == hi else f"{lo}-{hi}"

    blocks = arch.attention_blocks(model)
    return {
        "embed_dim": model.embed_dim,
        "num_heads": span([a.num_heads for a in blocks]),
        "head_dim": span([a.head_dim for a in blocks]),
        "mlp_hidden": span([b.mlp.fc1.out_features for b in model.blocks]),
    }


def calibration(batches: int, batch_size: int, num_classes: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch_size, 3, size, size, generator=g), torch.randint(0, num_classes, (batch_size,), generator=g))
        for _ in range(batches)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_base_patch16_224")
    p.add_argument("--out", default="bench/results/prune_table.csv")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calibration-batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--no-variants", action="store_true", help="only the importance x ratio table")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    dense = arch.create(args.model, pretrained=False).eval()
    size = dense.patch_embed.img_size[0]
    example = torch.zeros(1, 3, size, size)
    cal = calibration(args.calibration_batches, args.batch_size, dense.num_classes, size)
    macs0, params0 = prune.count_ops(dense, example)
    machine = {"cpu": cpu_name(), "threads": args.threads, **store.versions()}
    print(f"{args.model}: {params0 / 1e6:.2f}M params, {macs0 / 1e9:.2f} GMACs (batch 1, {size}x{size})")
    print(f"machine: {machine}")

    jobs = [(imp, r, "", {}) for r in RATIOS for imp in IMPORTANCES]
    if not args.no_variants:
        jobs += [("l2", r, label, opts) for r in RATIOS for label, opts in VARIANTS]

    rows = []
    header = (
        f"{'importance':<10} {'variant':<13} {'ratio':>7} {'params M':>9} {'-%':>6} {'GMACs':>7} {'-%':>6}"
        f" {'embed':>5} {'heads':>5} {'hdim':>5} {'mlp':>9} {'s':>5}"
    )
    print(header)
    print("-" * len(header))
    for importance, ratio, label, opts in jobs:
        model = copy.deepcopy(dense)
        t = time.perf_counter()
        prune.prune(model, importance, ratio, example, calibration=cal, **opts)
        seconds = time.perf_counter() - t
        macs, params = prune.count_ops(model, example)
        row = {
            "model": args.model,
            "importance": importance,
            "ratio": ratio,
            "variant": label or "default",
            "scope": opts.get("scope", "uniform"),
            "heads": opts.get("heads", "dims"),
            "round_to": opts.get("round_to", ""),
            "bottleneck": opts.get("bottleneck", False),
            "params_before": params0,
            "params_after": params,
            "params_reduction_pct": round(100 * (1 - params / params0), 2),
            "macs_before": macs0,
            "macs_after": macs,
            "macs_reduction_pct": round(100 * (1 - macs / macs0), 2),
            **widths(model),
            "prune_s": round(seconds, 2),
            **machine,
        }
        rows.append(row)
        print(
            f"{importance:<10} {row['variant']:<13} {ratio:>7g} {params / 1e6:>9.2f} {row['params_reduction_pct']:>6.1f}"
            f" {macs / 1e9:>7.2f} {row['macs_reduction_pct']:>6.1f} {row['embed_dim']:>5} {row['num_heads']:>5}"
            f" {row['head_dim']:>5} {row['mlp_hidden']:>9} {seconds:>5.1f}",
            flush=True,
        )

    out = Path(args.out)
    with fileio.atomic_path(out) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
