"""How close PQV's fastest DeiT-B artifact is to this machine's limit: its int8 Linear layers alone.

With PQV's own int8_dynamic / xnnpack recipe this builds four ExecuTorch programs and times them
as bench/latency.py does (batch 1, fixed threads, warm-up, median; interleaved rounds):
- the whole pruned DeiT-B (bench/latency.py's "pte int8_dynamic" row), and the same with the
  LayerNorm twin PQV exported before issue 15 (its "pooled-mean LayerNorm" row);
- only its Linear layers (qkv, proj, fc1, fc2 of every block, same shapes, chained as in the
  blocks): they hold >95 % of the MACs, so their time is the floor of any int8 recipe built on
  these kernels; the rest of the model's time is attention, softmax, norms, GELU and copies;
- one large square GEMM (1024 tokens x 1024 -> 1024): the kernel's best rate on this machine.

    .venv/bin/python bench/gemm_floor.py          # after bench/latency.py (reuses bench/work)

The whole model is bench/latency.py's row (pqv.quantize.run + pqv.export.run, checked against its
parent); the two probes are not models the workflow makes, so they are built with the same
quantizer and lowering (pqv.quantize.quantize, pqv.export's .pte writer) without that stage.
"""
from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import latency  # bench/latency.py, beside this script
from pqv import evaluate, export, store, quantize


class LinearsOnly(nn.Module):
    """A ViT's block Linear layers in their order, with the residual adds that chain them."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"qkv": b.attn.qkv, "proj": b.attn.proj, "fc1": b.mlp.fc1, "fc2": b.mlp.fc2})
            for b in vit.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b["proj"](b["qkv"](x)[..., :b["proj"].in_features])
            x = x + b["fc2"](b["fc1"](x))
        return x


class SquareGemm(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.linear = nn.Linear(n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def linear_macs(module: nn.Module, tokens: int) -> int:
    return sum(tokens * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def build_pte(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    if out.exists():
        return
    program = quantize.quantize(module, "int8_dynamic", "xnnpack", "pt2", [example])
    src = out.with_suffix(".pt2")
    quantize.save(program, str(src), "pt2")
    try:
        with store.atomic_path(out) as tmp:
            export._export_pte(str(src), tmp, "int8_dynamic", {})
    finally:
        src.unlink()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_base_patch16_224")
    p.add_argument("--ratio", type=float, default=0.09375)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--square", type=int, default=1024)
    p.add_argument("--work", default="bench/work")
    p.add_argument("--data", default="digits", help="images of the whole model's export check")
    p.add_argument("--check-images", type=int, default=64)
    p.add_argument("--out", default=None, help="default bench/results/gemm_floor-<date>-<cpu>.csv")
    return p


def programs(args, work: Path) -> tuple[dict, dict, torch.nn.Module]:
    """{row: (.pte path, example input, MACs)}: the whole model (bench/latency.py's row, built or
    reused the way the workflow builds it), before issue 15's LayerNorm, its Linear layers alone,
    and a square GEMM; the model's widths; the Linears-only module."""
    pruned = latency.make_models(work, args.model, args.ratio, 64, ["pruned"])["pruned"]
    facts = latency.widths(pruned)
    vit, _ = store.load_model(pruned)
    vit.eval()
    tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
    manifest = latency.manifest_of(args.data)
    whole = {}
    for name in ("pte int8_dynamic", "pte int8_dynamic pooled-mean LayerNorm"):
        recipe = latency.RECIPES[name]
        whole[name] = latency.artifact_path(pruned.parent, recipe, manifest, 0)
        meta = latency.build(recipe, pruned, whole[name], manifest, 0, args.check_images, 0.98)
        if meta.get("status") == latency.REJECTED:
            raise SystemExit(f"{whole[name]} failed its export check: {meta.get('reason')}")
    linears = LinearsOnly(vit)
    square = SquareGemm(args.square)
    rows = {
        "whole model (pte int8_dynamic)": (whole["pte int8_dynamic"], torch.randn(1, *facts["input_size"]), facts["macs"]),
        "whole model, LayerNorm before issue 15": (whole["pte int8_dynamic pooled-mean LayerNorm"],
                                                   torch.randn(1, *facts["input_size"]), facts["macs"]),
        "its Linear layers only": (pruned.parent / "linears-int8_dynamic.pte", torch.randn(1, tokens, vit.embed_dim),
                                   linear_macs(linears, tokens)),
        f"square GEMM {args.square}^3": (work / f"gemm{args.square}-int8_dynamic.pte",
                                         torch.randn(1, args.square, args.square), linear_macs(square, args.square)),
    }
    build_pte(linears, rows["its Linear layers only"][1], rows["its Linear layers only"][0])
    build_pte(square, rows[f"square GEMM {args.square}^3"][1], rows[f"square GEMM {args.square}^3"][0])
    return rows, facts, linears


def main() -> None:
    args = parser().parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    rows, facts, linears = programs(args, Path(args.work))
    fns = {name: latency.load("pte", "xnnpack", str(path)) for name, (path, _, _) in rows.items()}
    with torch.no_grad():  # the Linears-only program computes what its eager twin does
        check = export.compare(fns["its Linear layers only"](rows["its Linear layers only"][1]),
                               linears(rows["its Linear layers only"][1]))
    timings = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, (_, example, _) in rows.items():
            timings[name].append(evaluate.latency(fns[name], example, args.warmup, args.runs))
    machine = {**evaluate.machine(), **store.versions()}
    whole = statistics.median(t["latency_ms_median"] for t in timings["whole model (pte int8_dynamic)"])
    floor = timings["its Linear layers only"]
    table = []
    for name, (path, _, macs) in rows.items():
        ms = statistics.median(t["latency_ms_median"] for t in timings[name])
        table.append({"row": name, "latency_ms_median": ms,
                      "latency_ms_min": min(t["latency_ms_min"] for t in timings[name]),
                      "latency_ms_max": max(t["latency_ms_max"] for t in timings[name]),
                      "gmac": macs / 1e9, "gop_per_s": 2 * macs / ms / 1e6, "share_of_whole_model": ms / whole,
                      # how far from the floor: the ratio to the Linear layers alone, within each round
                      "x_linears_only": statistics.median(t["latency_ms_median"] / f["latency_ms_median"]
                                                          for t, f in zip(timings[name], floor)),
                      "threads": args.threads, "warmup": args.warmup, "runs": args.runs, "rounds": args.rounds,
                      **machine})
    print(f"machine: {machine}")
    print(f"{args.model} {args.ratio:g} pruned, int8_dynamic xnnpack .pte, batch 1, {args.threads} threads, "
          f"warm-up {args.warmup}, median of {args.runs}, {args.rounds} rounds; Linears-only cosine to eager "
          f"{check['cosine_min']:.4f}")
    df = pd.DataFrame(table)
    print(df[["row", "latency_ms_median", "latency_ms_min", "latency_ms_max", "gmac", "gop_per_s", "share_of_whole_model", "x_linears_only"]]
          .to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    out = Path(args.out or latency.default_out("gemm_floor", machine))
    with store.atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
