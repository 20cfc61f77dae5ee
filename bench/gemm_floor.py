"""How close PQV's fastest DeiT-B artifact is to this machine's limit: its int8 Linear layers alone.

With PQV's own int8_dynamic / xnnpack recipe this builds seven ExecuTorch programs and times them
as bench/latency.py does (batch 1, fixed threads, warm-up, median; interleaved rounds; each program
in a process of its own, so that no other runtime's thread pool is alive beside it):
- the whole pruned DeiT-B (bench/latency.py's "pte int8_dynamic" row) and the same model pruned
  with `round_to` (its "pte int8_dynamic round_to=64" row);
- each one's Linear layers alone (qkv, proj, fc1, fc2 of every block, same shapes, chained as in
  the blocks): they hold >95 % of the MACs, so their time is the floor of any int8 recipe built on
  these kernels;
- each one's Linear layers with PQV's attention between them (no LayerNorm, GELU, patch embedding
  or head): the step from the Linears alone to it is what the FP32 attention costs, the step from
  it to the whole model what the norms, GELU and the rest cost;
- one large square GEMM (1024 tokens x 1024 -> 1024): the kernel's best rate on this machine;
- with the `.[bench]` extra, the same question for the peer: ONNX Runtime's whole file (the
  workflow's onnx format, bench/latency.py's row) and the same Linear layers in its int8 MatMuls,
  built by the same recipe (pqv/common/ort.py).

    .venv/bin/python bench/gemm_floor.py          # after bench/latency.py (reuses bench/work)

The whole models are bench/latency.py's rows (pqv.stages.quantize.run + pqv.stages.export.run, checked against
their parent); the probes are not models the workflow makes, so they are built with the same
quantizer and lowering (pqv.stages.quantize.quantize, pqv.stages.export's .pte writer) without that stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import warnings
from pathlib import Path

import latency  # bench/latency.py, beside this script
import pandas as pd
import torch
from torch import nn

from pqv.common import layers, ort, store
from pqv.plan import fileio
from pqv.stages import evaluate, export, quantize


class LinearsOnly(nn.Module):
    """A ViT's block Linear layers in their order, with the residual adds that chain them."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"qkv": b.attn.qkv, "proj": b.attn.proj, "fc1": b.mlp.fc1, "fc2": b.mlp.fc2}) for b in vit.blocks
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + b["proj"](b["qkv"](x)[..., : b["proj"].in_features])
            x = x + b["fc2"](b["fc1"](x))
        return x


class LinearsAndAttention(nn.Module):
    """The blocks without LayerNorm and GELU: the Linear layers and the attention between them
    (PQV's exported attention, pqv.common.layers.BmmAttention), so that its time minus the Linears-only
    time is what the FP32 attention (matmuls, softmax, slices, transposes) costs in the model."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.attn = nn.ModuleList(layers.BmmAttention(b.attn) for b in vit.blocks)
        self.mlp = nn.ModuleList(nn.Sequential(b.mlp.fc1, b.mlp.fc2) for b in vit.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, mlp in zip(self.attn, self.mlp):
            x = x + attn(x)
            x = x + mlp(x)
        return x


class SquareGemm(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.linear = nn.Linear(n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def linear_macs(module: nn.Module, tokens: int) -> int:
    return sum(tokens * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def attention_macs(vit: nn.Module, tokens: int) -> int:
    """q @ k and attention @ v of every block."""
    return sum(2 * tokens * tokens * b.attn.num_heads * b.attn.head_dim for b in vit.blocks)


def build_pte(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    if out.exists():
        return
    program = quantize.quantize(module, "int8_dynamic", "xnnpack", "pt2", [example])
    src = out.with_suffix(".pt2")
    quantize.save(program, str(src), "pt2")
    try:
        with fileio.atomic_path(out) as tmp:
            export._export_pte(str(src), tmp, "int8_dynamic", {})
    finally:
        src.unlink()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_base_patch16_224")
    p.add_argument("--ratio", type=float, default=0.09375)
    p.add_argument("--round-to", type=int, default=64, help="channel multiple of the second pruned model")
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


@dataclasses.dataclass
class Program:
    path: Path
    example: torch.Tensor
    macs: int
    floor: str  # the row this one is divided by, within each round
    widths: str = ""  # embed/head/MLP of the model it comes from
    eager: nn.Module | None = None  # a probe's eager twin, to check the program against
    fmt: str = "pte"  # pte, or onnx for ONNX Runtime's programs


def programs(args, work: Path) -> dict[str, Program]:
    """For the workflow's pruned model and its `round_to` twin (bench/latency.py's rows, built or
    reused the way the workflow builds them): the whole model, its Linear layers and attention,
    its Linear layers alone; and a square GEMM."""
    kinds = {"": "pruned", f", round_to={args.round_to}": "pruned_round_to"}
    models = latency.make_models(work, args.model, args.ratio, args.round_to, sorted(kinds.values()))
    manifest = latency.manifest_of(args.data)
    rows = {}
    for suffix, kind in kinds.items():
        pruned = models[kind]
        facts = latency.widths(pruned)
        widths = f"{facts['embed_dim']}/{facts['head_dim']}/{facts['mlp_hidden']}"
        vit, _ = store.load_model(pruned)
        vit.eval()
        tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
        whole = _whole(dataclasses.replace(latency.RECIPES["pte int8_dynamic"], model=kind), pruned, manifest, args)
        floor = f"its Linear layers only{suffix}"
        rows[f"whole model (pte int8_dynamic{suffix})"] = Program(
            whole, torch.randn(1, *facts["input_size"]), facts["macs"], floor, widths
        )
        tokens_in = torch.randn(1, tokens, vit.embed_dim)
        linears = LinearsOnly(vit).eval()
        for name, probe, file in (
            (f"its Linear layers and attention{suffix}", LinearsAndAttention(vit), "linears-attention"),
            (floor, linears, "linears"),
        ):
            macs = linear_macs(probe, tokens) + (attention_macs(vit, tokens) if file == "linears-attention" else 0)
            rows[name] = Program(pruned.parent / f"{file}-int8_dynamic.pte", tokens_in, macs, floor, widths, probe.eval())
            build_pte(probe, tokens_in, rows[name].path)
        if not suffix and latency.available(latency.RECIPES[latency.ORT]):
            _onnx_rows(rows, pruned, manifest, args, tokens_in, facts, widths, linears)
    square = SquareGemm(args.square)
    name = f"square GEMM {args.square}^3"
    rows[name] = Program(
        work / f"gemm{args.square}-int8_dynamic.pte",
        torch.randn(1, args.square, args.square),
        linear_macs(square, args.square),
        "its Linear layers only",
    )
    build_pte(square, rows[name].example, rows[name].path)
    return rows


def _whole(recipe, pruned: Path, manifest: dict, args) -> Path:
    """bench/latency.py's whole-model file of `recipe`, built (and checked) as that bench builds it."""
    whole = latency.artifact_path(pruned.parent, recipe, manifest, 0)
    meta = latency.build(recipe, pruned, whole, manifest, 0, args.check_images, 0.98)
    if meta.get("status") == latency.REJECTED:
        raise SystemExit(f"{whole} failed its export check: {meta.get('reason')}")
    return whole


def _onnx_rows(
    rows: dict, pruned: Path, manifest: dict, args, tokens_in: torch.Tensor, facts: dict, widths: str, linears: nn.Module
) -> None:
    """The peer's side of the same question: ONNX Runtime's whole file (bench/latency.py's row) and
    the same Linear layers in ONNX Runtime's int8 dynamic MatMuls. If both runtimes' GEMMs take
    the same time, no file built on these GEMMs can be faster than the other by more than what
    the other spends outside them."""
    whole = _whole(latency.RECIPES[latency.ORT], pruned, manifest, args)
    floor = "ONNX Runtime: its Linear layers only"
    rows["ONNX Runtime: whole model (int8_dynamic)"] = Program(
        whole, torch.randn(1, *facts["input_size"]), facts["macs"], floor, widths, fmt="onnx"
    )
    path = pruned.parent / f"linears-int8_dynamic-{ort.version().replace(' ', '-')}.onnx"
    if not path.exists():  # the same recipe as the workflow's (pqv/common/ort.py), on the Linear layers alone
        import onnx

        with fileio.atomic_path(path) as tmp:
            onnx.save_model(ort.build(linears, "int8_dynamic", tokens_in, None), tmp)
    rows[floor] = Program(path, tokens_in, linear_macs(linears, tokens_in.shape[1]), floor, widths, linears, fmt="onnx")


def main() -> None:
    args = parser().parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    rows = programs(args, Path(args.work))
    engine = {"pte": "xnnpack", "onnx": "mlas"}
    with torch.no_grad():  # each probe's program computes what its eager twin does
        check = {
            name: export.compare(latency.load(row.fmt, engine[row.fmt], str(row.path))(row.example), row.eager(row.example))[
                "cosine_min"
            ]
            for name, row in rows.items()
            if row.eager is not None
        }
    # each program timed in a process of its own: one runtime's thread pool never spins beside another's
    timings = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, row in rows.items():
            recipe = latency.Recipe("", "int8_dynamic", engine[row.fmt], row.fmt)
            timings[name].append(
                latency.time_in_subprocess(recipe, row.path, list(row.example.shape[1:]), args.threads, args.warmup, args.runs)
            )
    machine = {**evaluate.machine(), **store.versions()}
    whole = statistics.median(t["latency_ms_median"] for t in timings["whole model (pte int8_dynamic)"])
    table = []
    for name, row in rows.items():
        ms = statistics.median(t["latency_ms_median"] for t in timings[name])
        table.append(
            {
                "row": name,
                "widths": row.widths,
                "latency_ms_median": ms,
                "latency_ms_min": min(t["latency_ms_min"] for t in timings[name]),
                "latency_ms_max": max(t["latency_ms_max"] for t in timings[name]),
                "gmac": row.macs / 1e9,
                "gop_per_s": 2 * row.macs / ms / 1e6,
                "share_of_whole_model": ms / whole,
                # how far from the floor: the ratio to its Linear layers alone, within each round
                "x_linears_only": statistics.median(
                    t["latency_ms_median"] / f["latency_ms_median"] for t, f in zip(timings[name], timings[row.floor])
                ),
                "cosine_to_eager": check.get(name),
                "threads": args.threads,
                "warmup": args.warmup,
                "runs": args.runs,
                "rounds": args.rounds,
                **machine,
            }
        )
    print(f"machine: {machine}")
    print(
        f"{args.model} {args.ratio:g} pruned, int8_dynamic xnnpack .pte, batch 1, {args.threads} threads, "
        f"warm-up {args.warmup}, median of {args.runs}, {args.rounds} rounds; the probes' least cosine to "
        f"their eager twins {min(check.values()):.4f}"
    )
    df = pd.DataFrame(table)
    print(
        df[
            [
                "row",
                "widths",
                "latency_ms_median",
                "latency_ms_min",
                "latency_ms_max",
                "gmac",
                "gop_per_s",
                "share_of_whole_model",
                "x_linears_only",
            ]
        ].to_string(index=False, float_format=lambda v: f"{v:.2f}")
    )
    out = Path(args.out or latency.default_out("gemm_floor", machine))
    with fileio.atomic_path(out) as tmp:
        df.to_csv(tmp, index=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
