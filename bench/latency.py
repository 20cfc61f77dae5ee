"""Latency of PQV's mobile artifacts for a pruned DeiT-B, beside the paper's recipe and the FP32 baselines.

Every artifact is built by PQV's own quantize and export code, then timed in a fresh subprocess of
its own (fixed threads, warm-up calls, median of repeated batch-1 calls; min and max kept). The
machines we run on share their host, so the whole set is timed in several interleaved rounds and
each speed-up is the median over rounds of the ratio measured within one round (side by side).
Random-init weights are fine for timing; each artifact's cosine to its eager FP32 parent on a few
random images shows it still computes the same function.

With --trained MODEL the same recipes are applied to a trained model and compared with it on its
dataset's held-out split (top-1 agreement): the accuracy side of the speed.

    .venv/bin/python bench/latency.py                      # DeiT-B, 9.375 % pruned, 3 rounds
    .venv/bin/python bench/latency.py --trained results/demo_vit/taylor_0.25/finetuned.safetensors
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from pqv import arch, evaluate, export, io, prune, quantize, targets
from pqv.targets import NO_ENGINE

EAGER = evaluate.EAGER
PAPER = "paper recipe"


@dataclass(frozen=True)
class Recipe:
    """One row: which model, at which precision/engine, in which format, with which options."""
    model: str  # "dense" | "pruned" | "pruned_round_to"
    precision: str
    engine: str
    fmt: str  # ptl | pte | eager | onnx (ONNX Runtime, an outside reference)
    options: dict = field(default_factory=dict)
    threads: int | None = None  # None: --threads
    twins: bool = True  # pte only: False exports timm's own layers (unfused attention), the lever's baseline
    note: str = ""


RECIPES: dict[str, Recipe] = {
    "eager fp32 dense": Recipe("dense", "fp32", NO_ENGINE, EAGER, note="the issue's FP32 reference"),
    "eager fp32 pruned": Recipe("pruned", "fp32", NO_ENGINE, EAGER),
    "lite fp32 dense": Recipe("dense", "fp32", NO_ENGINE, "ptl", note="paper's baseline (mobile optimizer)"),
    PAPER: Recipe("pruned", "int8_dynamic", "x86", "ptl", note="paper: int8 dynamic, x86, Lite"),
    "lite int8_dynamic x86 no-rewrite": Recipe("pruned", "int8_dynamic", "x86", "ptl", {"xnnpack_rewrite": False}),
    "lite int8_dynamic onednn": Recipe("pruned", "int8_dynamic", "onednn", "ptl"),
    "lite int8_static x86": Recipe("pruned", "int8_static", "x86", "ptl"),
    "lite int8_static onednn": Recipe("pruned", "int8_static", "onednn", "ptl"),
    "pte fp32": Recipe("pruned", "fp32", NO_ENGINE, "pte"),
    "pte int8_dynamic": Recipe("pruned", "int8_dynamic", "xnnpack", "pte", note="PQV's fastest"),
    "pte int8_dynamic timm layers": Recipe("pruned", "int8_dynamic", "xnnpack", "pte", twins=False,
                                           note="without pqv/layers.py twins"),
    "pte int8_dynamic 1 thread": Recipe("pruned", "int8_dynamic", "xnnpack", "pte", threads=1),
    "pte int8_static": Recipe("pruned", "int8_static", "xnnpack", "pte"),
    "pte int4_weight": Recipe("pruned", "int4_weight", "xnnpack", "pte"),
    "pte int8_dynamic round_to=64": Recipe("pruned_round_to", "int8_dynamic", "xnnpack", "pte"),
    "onnxruntime int8_dynamic": Recipe("pruned", "int8_dynamic", "mlas", "onnx", note="outside reference"),
}


# ---- building artifacts with PQV's own stages ----------------------------------------------------

def artifact_path(work: Path, name: str, recipe: Recipe) -> Path:
    if recipe.fmt == EAGER:
        return work / f"{recipe.model}.safetensors"
    stem = f"{recipe.model}-{recipe.precision}-{recipe.engine}" + "".join(f"-{k}={v}" for k, v in recipe.options.items())
    stem += "" if recipe.twins else "-timm_layers"
    return work / f"{stem}.{'onnx' if recipe.fmt == 'onnx' else recipe.fmt}"


def build(recipe: Recipe, model_path: Path, out: Path, calibration: list[torch.Tensor]) -> None:
    """quantize -> export through pqv (or ONNX Runtime's quantizer for the outside reference)."""
    if out.exists() or recipe.fmt == EAGER:
        return
    model, _ = io.load_model(model_path)
    if recipe.fmt == "onnx":
        return _build_onnx(model, out, calibration[0][:1])
    ir = targets.ir_of(recipe.fmt)
    if recipe.twins:
        program = quantize.quantize(model, recipe.precision, recipe.engine, ir, calibration)
    else:  # PQV's export minus the layers.for_xnnpack rewrite: timm's layers, explicit attention
        for attn in arch.attention_blocks(model):
            attn.fused_attn = False
        program = quantize.EXPORTED[recipe.precision](model.eval(), calibration[0], calibration)
    src = out.with_suffix(f".{ir}")
    quantize.save(program, str(src), ir)
    with quantize.engine_scope(recipe.engine), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export.FORMATS[recipe.fmt].export(str(src), str(out), recipe.precision, {**recipe.options, "engine": recipe.engine})
    src.unlink()


def _build_onnx(model, out: Path, example: torch.Tensor) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for attn in arch.attention_blocks(model):
        attn.fused_attn = False  # timm's explicit attention: MatMul nodes ONNX Runtime's quantizer takes
    fp32 = out.with_suffix(".fp32.onnx")
    torch.onnx.export(model, (example,), str(fp32), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False, opset_version=17)
    quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True)
    fp32.unlink()


def load(recipe_fmt: str, engine: str, path: str):
    """A callable tensor -> tensor for any row's artifact."""
    if recipe_fmt == EAGER:
        return io.load_model(path)[0].eval()
    if recipe_fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    return export.load(path, recipe_fmt, engine)


# ---- timing, one artifact per process ------------------------------------------------------------

def time_one(args) -> None:
    """Subprocess entry: load one artifact, check it against the reference outputs, time it."""
    torch.set_num_threads(args.threads)
    fn = load(args.format, args.engine, args.path)
    ref = torch.load(args.reference, weights_only=True)
    with torch.no_grad():
        outs = torch.cat([fn(x[None]) for x in ref["images"]])  # batch 1, as timed
    fidelity = export.compare(outs, ref["logits"])
    timing = evaluate.latency(fn, ref["images"][:1], args.warmup, args.runs)
    print(json.dumps({**timing, "cosine_min": fidelity["cosine_min"]}))


def time_in_subprocess(recipe: Recipe, path: Path, reference: Path, threads: int, warmup: int, runs: int) -> dict:
    cmd = [sys.executable, __file__, "_time", "--format", recipe.fmt, "--engine", recipe.engine, "--path", str(path),
           "--reference", str(reference), "--threads", str(threads), "--warmup", str(warmup), "--runs", str(runs)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"timing {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- fidelity on a trained model -----------------------------------------------------------------

def agreement(recipes: dict[str, Recipe], trained: Path, spec: dict, work: Path) -> dict[str, dict]:
    """Per recipe, top-1 agreement and cosine of its artifact with the trained FP32 parent over the
    whole held-out split."""
    from pqv import data

    model, a = io.load_model(trained)
    dc = a["data_config"]
    calibration = list(data.sample_batch(spec, dc, 128, split="train").split(32))

    def logits(fn) -> torch.Tensor:  # batch by batch: a held-out split may not fit in memory at once
        with torch.no_grad():
            return torch.cat([fn(images) for images, _ in data.loader(spec, "eval", dc, evaluate.EVAL_BATCH)])

    reference = logits(model)
    fidelity = {}
    for name, recipe in recipes.items():
        out = work / f"trained-{artifact_path(work, name, recipe).name}"
        build(recipe, trained, out, calibration)
        fidelity[name] = export.compare(logits(load(recipe.fmt, recipe.engine, str(out))), reference)
    return fidelity


# ---- the table ----------------------------------------------------------------------------------

def make_models(work: Path, model_name: str, ratio: float, round_to: int) -> tuple[dict, dict]:
    """Dense, pruned, and pruned-with-round_to models saved as PQV artifacts (made once, then
    reused from `work`); their widths."""
    torch.manual_seed(0)
    dense = arch.create(model_name, pretrained=False).eval()
    size = dense.patch_embed.img_size[0]
    example = torch.zeros(1, 3, size, size)
    dc = {"input_size": [3, size, size]}
    pruning = {"dense": None, "pruned": {}, "pruned_round_to": {"round_to": round_to}}
    facts = {}
    for name, options in pruning.items():
        path = work / f"{name}.safetensors"
        if path.exists():
            m = io.load_model(path)[0]
        else:
            m = dense if options is None else prune.prune(copy.deepcopy(dense), "l2", ratio, example, **options)
            io.save_model(m, path, arch.describe(m, model_name, {}, dc))
        macs, params = prune.count_ops(m, example)
        facts[name] = {"params": params, "macs": macs, "embed_dim": m.embed_dim,
                       "head_dim": m.blocks[0].attn.head_dim, "mlp_hidden": m.blocks[0].mlp.fc1.out_features}
    return facts, {"size": size}


def available(recipe: Recipe) -> bool:
    import importlib.util

    if recipe.fmt == "onnx":
        return importlib.util.find_spec("onnxruntime") is not None
    return recipe.engine == NO_ENGINE or recipe.engine in quantize.available_engines()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_base_patch16_224")
    p.add_argument("--ratio", type=float, default=0.09375)
    p.add_argument("--round-to", type=int, default=64, help="channel multiple of the round_to lever row")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all rows")
    p.add_argument("--only", nargs="*", help="rows to run (names as in the table); default all")
    p.add_argument("--work", default="bench/work", help="artifact cache (reused between runs)")
    p.add_argument("--out", default="bench/results/latency.csv")
    p.add_argument("--trained", help="a trained PQV model: also report each recipe's top-1 agreement with it")
    p.add_argument("--data", default="digits", help="dataset name of --trained (digits, or imagefolder:ROOT)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    rows = {n: r for n, r in RECIPES.items() if (not args.only or n in args.only) and available(r)}
    for needed in ("eager fp32 dense", PAPER):
        rows.setdefault(needed, RECIPES[needed])  # the two ratios need them
    facts, shape = make_models(work, args.model, args.ratio, args.round_to)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, shape["size"], shape["size"], generator=g)
    calibration = [torch.randn(16, 3, shape["size"], shape["size"], generator=g) for _ in range(2)]
    references = {}
    for name in facts:
        references[name] = work / f"{name}.reference.pt"
        with torch.no_grad():
            torch.save({"images": images, "logits": io.load_model(work / f"{name}.safetensors")[0](images)},
                       references[name])

    for name, recipe in rows.items():
        print(f"building {name} ...", flush=True)
        build(recipe, work / f"{recipe.model}.safetensors", artifact_path(work, name, recipe), calibration)

    machine = {**evaluate.machine(), **io.versions()}
    print(f"machine: {machine}")
    timings: dict[str, list[dict]] = {n: [] for n in rows}
    for r in range(args.rounds):
        for name, recipe in rows.items():
            t = time_in_subprocess(recipe, artifact_path(work, name, recipe), references[recipe.model],
                                   recipe.threads or args.threads, args.warmup, args.runs)
            timings[name].append(t)
            print(f"  round {r + 1}: {name:<34} {t['latency_ms_median']:8.1f} ms", flush=True)

    fidelity = {}
    if args.trained:
        spec = {"name": "digits"} if args.data == "digits" else {"name": "imagefolder", "root": args.data.split(":", 1)[1]}
        fidelity = agreement({n: r for n, r in rows.items() if r.fmt != EAGER}, Path(args.trained), spec, work)

    def ratio(base: str, name: str) -> float:
        per_round = [b["latency_ms_median"] / t["latency_ms_median"] for b, t in zip(timings[base], timings[name])]
        return statistics.median(per_round)

    table = []
    for name, recipe in rows.items():
        ts = timings[name]
        path = artifact_path(work, name, recipe)
        row = {
            "row": name, "model": args.model, "pruned": recipe.model, "ratio": 0.0 if recipe.model == "dense" else args.ratio,
            "precision": recipe.precision, "engine": recipe.engine, "format": recipe.fmt,
            "options": json.dumps(recipe.options) if recipe.options else "", "threads": recipe.threads or args.threads,
            "latency_ms_median": statistics.median(t["latency_ms_median"] for t in ts),
            "latency_ms_min": min(t["latency_ms_min"] for t in ts),
            "latency_ms_max": max(t["latency_ms_max"] for t in ts),
            "round_medians_ms": " ".join(f"{t['latency_ms_median']:.1f}" for t in ts),
            # how many times faster than the base, from the ratio within each round
            "speedup_vs_paper": ratio(PAPER, name),
            "speedup_vs_eager_dense": ratio("eager fp32 dense", name),
            "size_mb": path.stat().st_size / 2**20,
            "cosine_min_vs_parent": ts[0]["cosine_min"],
            "trained_top1_agreement": fidelity.get(name, {}).get("top1_agreement"),
            "trained_cosine_min": fidelity.get(name, {}).get("cosine_min"),
            "macs": facts[recipe.model]["macs"], "params": facts[recipe.model]["params"],
            "widths": "{embed_dim}/{head_dim}/{mlp_hidden}".format(**facts[recipe.model]),
            "warmup": args.warmup, "runs": args.runs, "rounds": args.rounds, "note": recipe.note,
            **machine,
        }
        table.append(row)

    print()
    print(f"{args.model}, {args.ratio:g} pruned (l2, uniform); batch 1; {args.threads} threads unless noted; "
          f"warm-up {args.warmup}, median of {args.runs} per round, {args.rounds} interleaved rounds")
    header = (f"{'row':<34} {'median':>7} {'min':>7} {'max':>7} {'MB':>6} {'x paper':>7} {'x eager':>7}"
              f" {'cos':>6} {'agree':>6}")
    print(header)
    print("-" * len(header))
    for row in table:
        agree = row["trained_top1_agreement"]
        print(f"{row['row']:<34} {row['latency_ms_median']:>7.1f} {row['latency_ms_min']:>7.1f} {row['latency_ms_max']:>7.1f}"
              f" {row['size_mb']:>6.1f} {row['speedup_vs_paper']:>7.2f} {row['speedup_vs_eager_dense']:>7.2f}"
              f" {row['cosine_min_vs_parent']:>6.3f}"
              f" {agree if agree is not None else float('nan'):>6.3f}")
    out = Path(args.out)
    with io.atomic_path(out) as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    print(f"wrote {out}")


def _time_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    for flag in ("--format", "--engine", "--path", "--reference"):
        p.add_argument(flag, required=True)
    for flag in ("--threads", "--warmup", "--runs"):
        p.add_argument(flag, type=int, required=True)
    warnings.filterwarnings("ignore")
    time_one(p.parse_args(argv))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_time"]:
        _time_main(sys.argv[2:])
    else:
        main()
