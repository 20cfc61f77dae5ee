"""Latency of PQV's mobile artifacts for a pruned DeiT-B, beside the paper's recipe and the FP32 baselines.

Every row is an artifact the workflow would ship: the dense model is pruned by pqv.stages.prune.run, and
each recipe is quantized by pqv.stages.quantize.run and exported by pqv.stages.export.run, whose check loads the
file back and compares it with its eager FP32 parent on held-out images (a rejected file is
reported, not timed). Four lever rows are made outside the workflow on purpose and say so: timm's
own layers (the baseline of pqv/common/layers.py's twins), PQV's LayerNorm twin before issue 15 and
timm's LayerNorm as a portable kernel (the two alternatives to today's, bench/layernorm.py); they
get the same check. ONNX Runtime's rows (the peer) are the workflow's own onnx and ort formats
(pqv/common/ort.py), and each run's `speedup_vs_ort` is against the fastest of them (`ort_best`). The
token-merging rows (issue 42; `merge_r` column, rows named `... r8`, `... r16`) merge r tokens per block
(pqv.common.tome), applied by pqv.stages.quantize.run(merge_r=r) before quantizing, dense or with the
pruned model of the fastest `.pte` (round_to 64), in `.pte` and ONNX Runtime's plain recipe; their export
check compares each file with its parent merging the same tokens, and `macs` is empty (Torch-Pruning's
counter misses the attention of merging blocks; the sidecar lists the tokens per block). They are PQV's
files, not the peer's: `ort_best` is never one of them. Each
artifact is timed in a fresh subprocess of its own (fixed threads, warm-up
calls, median of repeated batch-1 calls; min and max kept). The machines we run on share their
host, so the whole set is timed in several interleaved rounds and each speed-up is the median over
rounds of the ratio measured within one round (side by side). Random-init weights are fine for
timing.

With --trained MODEL the same recipes are applied to a trained model and compared with it on its
dataset's held-out split (top-1 agreement): the accuracy side of the speed.

    .venv/bin/python bench/latency.py                      # DeiT-B, 9.375 % pruned, 3 rounds
    .venv/bin/python bench/latency.py --trained results/demo_vit/taylor_0.25/finetuned.safetensors
    .venv/bin/python bench/latency.py --model deit_tiny_patch16_224 --only "pte int8_dynamic" \\
        --rounds 1 --warmup 1 --runs 3 --check-images 8 --out /tmp/smoke.csv     # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from pqv.common import arch, ort, store
from pqv.plan import fileio, registry, sweep
from pqv.plan.errors import PQVError
from pqv.plan.registry import NO_ENGINE, Status
from pqv.stages import evaluate, export, prune, quantize

DIGITS = {"name": "digits"}

EAGER = evaluate.EAGER
PAPER = "paper recipe"
WITHOUT_PQV = "without PQV"


@dataclass(frozen=True)
class Recipe:
    """One row: which model, at which precision/engine, in which format, with which options."""

    model: str  # "dense" | "pruned" | "pruned_round_to"
    precision: str
    engine: str
    fmt: str  # ptl | pte | onnx | ort | eager
    options: dict = field(default_factory=dict)
    threads: int | None = None  # None: --threads
    layers: str = "pqv"  # pte only: which layers are exported (LAYERS); "pqv" is what the workflow ships
    note: str = ""
    merge_r: int = 0  # tokens merged per block (pqv.common.tome), by pqv.stages.quantize.run(merge_r=...); 0: none


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
    "pte int8_dynamic timm layers": Recipe(
        "pruned",
        "int8_dynamic",
        "xnnpack",
        "pte",
        layers="timm",
        note="lever baseline, not a workflow recipe: without pqv/common/layers.py twins",
    ),
    "pte int8_dynamic pooled-mean LayerNorm": Recipe(
        "pruned",
        "int8_dynamic",
        "xnnpack",
        "pte",
        layers="pooled-mean",
        note="lever baseline, not a workflow recipe: PQV's LayerNorm twin before issue 15",
    ),
    "pte int8_dynamic portable LayerNorm": Recipe(
        "pruned",
        "int8_dynamic",
        "xnnpack",
        "pte",
        layers="portable-layernorm",
        note="lever, not a workflow recipe: nn.LayerNorm as a portable kernel, between delegated pieces",
    ),
    "pte int8_dynamic fp16 attention": Recipe(
        "pruned",
        "int8_dynamic",
        "xnnpack",
        "pte",
        layers="fp16-attention",
        note="lever, not a workflow recipe: attention's matmuls and softmax in FP16",
    ),
    "pte int8_dynamic 1 thread": Recipe("pruned", "int8_dynamic", "xnnpack", "pte", threads=1),
    "pte int8_static": Recipe("pruned", "int8_static", "xnnpack", "pte"),
    "pte int4_weight": Recipe("pruned", "int4_weight", "xnnpack", "pte"),
    "pte int8_dynamic round_to=64": Recipe("pruned_round_to", "int8_dynamic", "xnnpack", "pte"),
    # ONNX Runtime, the runtime a user would pick instead, at its best: its files as the workflow builds
    # them (pqv/common/ort.py: transformer optimizer, per-channel weights, static batch 1), export check included
    "onnxruntime int8_dynamic": Recipe("pruned", "int8_dynamic", "mlas", "onnx", note="the peer: ONNX Runtime's ViT recipe"),
    "onnxruntime int8_dynamic .ort": Recipe(
        "pruned", "int8_dynamic", "mlas", "ort", note="the peer's file in ORT Mobile's format (what ships to a phone)"
    ),
    "onnxruntime int8_static": Recipe("pruned", "int8_static", "mlas", "onnx", note="the peer, static QDQ (uint8 activations)"),
    "onnxruntime int8_static .ort": Recipe("pruned", "int8_static", "mlas", "ort", note="the peer, static QDQ, ORT format"),
    # the other recipes of registry.ORT_RECIPES: the workflow times them all and ships the fastest
    "onnxruntime int8_dynamic plain": Recipe(
        "pruned", "int8_dynamic", "mlas_plain", "onnx", note="ORT's plain recipe (no transformer optimizer, no pre-processing)"
    ),
    "onnxruntime int8_dynamic plain .ort": Recipe("pruned", "int8_dynamic", "mlas_plain", "ort", note="the plain recipe, ORT format"),
    "onnxruntime int8_dynamic per-tensor": Recipe("pruned", "int8_dynamic", "mlas_tensor", "onnx"),
    "onnxruntime int8_dynamic plain per-tensor": Recipe("pruned", "int8_dynamic", "mlas_plain_tensor", "onnx"),
    "onnxruntime int8_static plain": Recipe("pruned", "int8_static", "mlas_plain", "onnx"),
    "onnxruntime int8_static QOperator": Recipe("pruned", "int8_static", "mlas_qop", "onnx"),
    "onnxruntime int8_dynamic plain round_to=64": Recipe("pruned_round_to", "int8_dynamic", "mlas_plain", "onnx"),
    # the bar: the file a user gets without PQV (pqv.plan.registry.WITHOUT_PQV, the workflow's evaluate.without_pqv)
    WITHOUT_PQV: Recipe(
        "dense",
        registry.WITHOUT_PQV["precision"],
        registry.WITHOUT_PQV["engine"],
        registry.WITHOUT_PQV["format"],
        note=registry.WITHOUT_PQV_HELP,
    ),
}
# token merging (issue 42): r tokens merged per block, alone (dense) and with the pruned model of the fastest
# .pte (round_to 64), in .pte (int8 dynamic, XNNPACK) and ONNX Runtime's plain int8 dynamic recipe
MERGE_RS = (8, 16)
_MERGED_MODELS = {"dense": ("dense", "dense"), "pruned": ("pruned_round_to", "9.375 % pruned, round_to=64")}
for _r in MERGE_RS:
    for _which, (_model, _said) in _MERGED_MODELS.items():
        _tome = f"merging {_r} tokens per block (pqv.common.tome), {_said}"
        RECIPES[f"pte int8 {_which} r{_r}"] = Recipe(_model, "int8_dynamic", "xnnpack", "pte", merge_r=_r, note=_tome)
        RECIPES[f"onnxruntime int8 {_which} r{_r}"] = Recipe(
            _model, "int8_dynamic", "mlas_plain", "onnx", merge_r=_r, note=f"ORT's plain recipe, {_tome}"
        )
        RECIPES[f"onnxruntime int8 {_which} r{_r} .ort"] = Recipe(
            _model, "int8_dynamic", "mlas_plain", "ort", merge_r=_r, note=f"ORT's plain recipe, ORT format, {_tome}"
        )
del _r, _which, _model, _said, _tome
ORT = "onnxruntime int8_dynamic"
# every ONNX Runtime row of the pruned model: `speedup_vs_ort` is the ratio to the fastest of them in the run
# (`ort_best`); files that merge tokens are PQV's lever, not the peer's
ORT_ROWS = tuple(name for name, r in RECIPES.items() if r.fmt in registry.ONNX_FORMATS and r.model != "dense" and not r.merge_r)
BASES = ("eager fp32 dense", PAPER, ORT, WITHOUT_PQV)  # every run times them: each speed-up is a ratio to one


# ---- building artifacts with PQV's own stages ----------------------------------------------------
# The cache (--work) is keyed by everything that makes a file: each model has a folder named after
# its timm model, importance, ratio and round_to; each artifact is named after its precision,
# engine, token merging (-tome{r}, as the workflow's paths), options and lever, plus its calibration
# data where the precision is calibrated; the
# artifacts of a --trained model sit in a folder named after that file's content hash.

REJECTED = Status.REJECTED  # pqv.stages.export's status of a file that failed its fidelity check


def model_path(work: Path, model_name: str, which: str, ratio: float, round_to: int) -> Path:
    """Where the bench keeps the dense or pruned `model_name` it times."""
    folder = {"dense": "dense", "pruned": f"l2_{ratio:g}", "pruned_round_to": f"l2_{ratio:g}_round_to{round_to}"}[which]
    return work / model_name / folder / "model.safetensors"


def trained_folder(work: Path, trained: Path) -> Path:
    """Artifacts of a trained model: one folder per content of that file, not per its name."""
    import hashlib

    digest = hashlib.sha256()
    with open(trained, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return work / "trained" / digest.hexdigest()[:16]


def data_tag(manifest: dict) -> str:
    """The data set a calibrated file was made from: its name and its manifest's fingerprint."""
    return f"{manifest['dataset']['name']}-{manifest['fingerprint'][:8]}"


def artifact_path(folder: Path, recipe: Recipe, manifest: dict, calibration_images: int) -> Path:
    """The row's artifact inside its model's folder (`folder`)."""
    stem = f"{recipe.precision}-{recipe.engine}{sweep.merge_name(recipe.merge_r)}" + "".join(
        f"-{k}={v}" for k, v in recipe.options.items()
    )
    if recipe.fmt == "pte":  # a program's file depends on the code of the layers it was exported with
        stem += f"-layers={recipe.layers}-{layers_fingerprint()}"
    if quantize.calibrated(recipe.precision):
        stem += f"-cal{calibration_images}-{data_tag(manifest)}"
    return folder / f"{stem}.{recipe.fmt}"


def layers_fingerprint() -> str:
    """Content hash of pqv/common/layers.py and bench/layernorm.py: a changed twin makes new files."""
    import hashlib

    from pqv.common import layers

    digest = hashlib.sha256(Path(layers.__file__).read_bytes())
    digest.update((Path(__file__).parent / "layernorm.py").read_bytes())
    return digest.hexdigest()[:8]


def build(
    recipe: Recipe, source: Path, out: Path, manifest: dict, calibration_images: int, check_images: int, min_cosine: float
) -> dict:
    """The row's artifact made as the workflow makes it, unless cached: pqv.stages.quantize.run, then
    pqv.stages.export.run, which loads it back and checks it against `source` on `check_images` held-out
    images (`source` merging the same tokens, for a recipe with merge_r). Its export sidecar (status, fidelity)."""
    if not out.exists():
        program = out.with_name(f"{out.stem}.program.{registry.ir_of(recipe.fmt)}")  # .onnx: not the artifact's name
        if recipe.layers == "pqv":
            quantize.run(
                str(source), str(program), recipe.precision, recipe.engine, manifest, calibration_images, merge_r=recipe.merge_r
            )
        else:
            assert not recipe.merge_r, "lever layers are exported without token merging"
            _quantize_lever_layers(source, program, recipe.precision, manifest, recipe.layers)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export.run(
                    str(program),
                    str(source),
                    str(out),
                    recipe.fmt,
                    manifest,
                    check_images=check_images,
                    min_cosine=min_cosine,
                    **recipe.options,
                )
        finally:
            program.unlink(missing_ok=True)
            fileio.sidecar_path(program).unlink(missing_ok=True)
    return fileio.read_sidecar(out)


def _timm_layers(model):
    for attn in arch.attention_blocks(model):
        attn.fused_attn = False  # timm's explicit attention, which XNNPACK runs (SDPA would not)
    return model


def _with_layernorm(model, make):
    """PQV's twins, each LayerNorm twin replaced by `make(twin)` (same weight, bias and eps)."""
    from pqv.common import layers

    return _swap(layers.for_xnnpack(model), layers.MeanLayerNorm, make)


def _swap(model, kind: type, make):
    """Each submodule of type `kind` replaced, in place, by `make(it)`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, make(child))
    return model


def _pooled_mean_layernorm(model):
    """The LayerNorm twin PQV exported before issue 15 (bench/layernorm.py)."""
    from layernorm import PooledMeanLayerNorm  # bench/layernorm.py, beside this script

    return _with_layernorm(model, PooledMeanLayerNorm)


def _portable_layernorm(model):
    """timm's nn.LayerNorm, which runs as ExecuTorch's portable kernel, with PQV's attention twin."""

    def layer_norm(twin):
        norm = nn.LayerNorm(twin.weight.shape[0], eps=twin.eps)
        norm.weight, norm.bias = twin.weight, twin.bias
        return norm

    return _with_layernorm(model, layer_norm)


class Fp16Attention(nn.Module):
    """PQV's attention twin with its matmuls and softmax in FP16: q, k and v converted after the
    qkv Linear, the result converted back before proj. The lever for CPUs with native FP16
    arithmetic (AVX-512 FP16, Arm's FP16); XNNPACK takes FP16 bmm and softmax, but ExecuTorch
    1.3.1's partitioner does not delegate dtype conversions, so they run as portable kernels."""

    def __init__(self, twin):
        super().__init__()
        self.twin = twin

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        from pqv.common import layers

        if attn_mask is not None or is_causal:
            raise ValueError("Fp16Attention is for unmasked ViT self-attention")
        t = self.twin
        return t.proj(layers.attend(t.qkv(x).to(torch.float16), t.num_heads, t.head_dim, t.scale).to(x.dtype))


def _fp16_attention(model):
    from pqv.common import layers

    return _swap(layers.for_xnnpack(model), layers.BmmAttention, Fp16Attention)


# lever baselines: how the model is rewritten instead of pqv.common.layers.for_xnnpack
LAYERS = {
    "timm": _timm_layers,
    "pooled-mean": _pooled_mean_layernorm,
    "portable-layernorm": _portable_layernorm,
    "fp16-attention": _fp16_attention,
}


def _quantize_lever_layers(source: Path, program: Path, precision: str, manifest: dict, kind: str) -> None:
    """pqv.stages.quantize.run's .pt2 path with the model's layers rewritten by LAYERS[kind] instead of
    layers.for_xnnpack: a lever's baseline (not a recipe the workflow makes)."""
    from pqv.common import datasets

    model, a = store.load_model(source)
    model = LAYERS[kind](model.eval())
    calibration = list(datasets.sample_batch(manifest, a["data_config"], 2, split="train").split(32))
    exported = quantize.EXPORTED[precision](model.eval(), calibration[0], calibration)
    with fileio.atomic_path(program) as tmp:
        quantize.save(exported, tmp, "pt2")
    parent = fileio.read_sidecar(source)
    store.write_sidecar(
        program,
        "quantize",
        parent=str(source),
        precision=precision,
        engine="xnnpack",
        ir="pt2",
        params=parent.get("params"),
        macs=parent.get("macs"),
        data_config=a["data_config"],
        eager_top1=parent.get("top1"),
        calibration_images=0,
        lever=kind,
    )


def load(recipe_fmt: str, engine: str, path: str):
    """A callable tensor -> tensor for any row's artifact."""
    if recipe_fmt == EAGER:
        return store.load_model(path)[0].eval()
    return export.load(path, recipe_fmt, engine)


# ---- timing, one artifact per process ------------------------------------------------------------


def time_one(args) -> None:
    """Subprocess entry: load one artifact, time it at batch 1 on a fixed random image."""
    torch.set_num_threads(args.threads)
    fn = load(args.format, args.engine, args.path)
    example = torch.randn(1, *json.loads(args.input_size), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        timing = evaluate.latency(fn, example, args.warmup, args.runs)
    options = ort.session_facts(fn) if args.format in registry.ONNX_FORMATS else ""
    print(json.dumps({**timing, "runtime": evaluate.runtime_version(args.format), "session_options": options}))


def time_in_subprocess(recipe: Recipe, path: Path, input_size: list, threads: int, warmup: int, runs: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "_time",
        "--format",
        recipe.fmt,
        "--engine",
        recipe.engine,
        "--path",
        str(path),
        "--input-size",
        json.dumps(list(input_size)),
        "--threads",
        str(threads),
        "--warmup",
        str(warmup),
        "--runs",
        str(runs),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"timing {path} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- fidelity on a trained model -----------------------------------------------------------------


def agreement(
    recipes: dict[str, Recipe],
    trained: Path,
    manifest: dict,
    work: Path,
    calibration_images: int,
    check_images: int,
    min_cosine: float,
) -> dict[str, dict]:
    """Per recipe, top-1 agreement and cosine of its artifact, built from the trained model the
    same way, with the trained FP32 parent over the whole held-out split (the parent as trained, not
    merging tokens: a merged row's agreement is what merging and quantizing cost together)."""
    from pqv.common import datasets

    model, a = store.load_model(trained)
    dc = a["data_config"]

    def logits(fn) -> torch.Tensor:  # batch by batch: a held-out split may not fit in memory at once
        with torch.no_grad():
            return torch.cat([fn(images) for images, _ in datasets.loader(manifest, "eval", dc, evaluate.EVAL_BATCH)])

    reference = logits(model)
    folder = trained_folder(work, trained)
    fidelity = {}
    for name, recipe in recipes.items():
        out = artifact_path(folder, recipe, manifest, calibration_images)
        try:
            meta = build(recipe, trained, out, manifest, calibration_images, check_images, min_cosine)
        except PQVError as e:
            meta = {"status": REJECTED, "reason": str(e)}
        if meta.get("status") == REJECTED:
            print(f"  trained {name}: rejected by the export check: {meta.get('reason')}")
            continue
        fidelity[name] = export.compare(logits(load(recipe.fmt, recipe.engine, str(out))), reference)
    return fidelity


# ---- the table ----------------------------------------------------------------------------------


def make_models(work: Path, model_name: str, ratio: float, round_to: int, which: list[str]) -> dict[str, Path]:
    """The random-init dense model and its pruned copies (pqv.stages.prune.run, L2, uniform), each saved
    once under a path keyed by all that made it; {kind: path}."""
    from pqv.stages import model as pqv_model

    paths = {w: model_path(work, model_name, w, ratio, round_to) for w in ["dense", *which] if w}
    dense = paths["dense"]
    if not dense.exists():
        torch.manual_seed(0)
        m = arch.create(model_name, pretrained=False).eval()
        dc = pqv_model.data_config_of(m)
        macs, params = prune.count_ops(m, torch.zeros(1, *dc["input_size"]))
        store.save_model(m, dense, arch.describe(m, model_name, {}, dc))
        store.write_sidecar(
            dense, "model", weights="random init, seed 0", timm_name=model_name, data_config=dc, params=params, macs=macs
        )
    for kind, path in paths.items():
        if kind != "dense" and not path.exists():
            prune.run(str(dense), str(path), "l2", ratio, None, 0, 1, round_to=round_to if kind == "pruned_round_to" else None)
    return paths


def widths(path: Path) -> dict:
    m, a = store.load_model(path)
    meta = fileio.read_sidecar(path)
    return {
        "params": meta["params"],
        "macs": meta["macs"],
        "embed_dim": m.embed_dim,
        "head_dim": m.blocks[0].attn.head_dim,
        "mlp_hidden": m.blocks[0].mlp.fc1.out_features,
        "input_size": list(a["data_config"]["input_size"]),
    }


def available(recipe: Recipe) -> bool:
    return recipe.engine == NO_ENGINE or recipe.engine in quantize.available_engines()


def default_out(kind: str, machine: dict) -> str:
    """bench/results/<kind>-<date>-<cpu>[-runN].csv: one file per run and host, the CPU in its name;
    a later run the same day gets the next run number rather than overwriting an earlier one."""
    import datetime
    import itertools
    import re

    cpu = re.sub(r"[^a-z0-9]+", "-", machine["cpu"].lower()).strip("-")
    stem = f"bench/results/{kind}-{datetime.date.today().isoformat()}-{cpu}"
    names = (f"{stem}{f'-run{n}' if n > 1 else ''}.csv" for n in itertools.count(1))
    return next(name for name in names if not Path(name).exists())


def manifest_of(text: str) -> dict:
    """--data: `digits` (bundled) or `imagefolder:ROOT`, read by the data stage (pqv.stages.data.scan)."""
    from pqv.stages import data

    return data.scan(DIGITS if text == "digits" else {"name": "imagefolder", "root": text.split(":", 1)[1]})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit_base_patch16_224", help="timm model name (random-init weights)")
    p.add_argument("--ratio", type=float, default=0.09375)
    p.add_argument("--round-to", type=int, default=64, help="channel multiple of the round_to lever row")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all rows")
    p.add_argument("--only", nargs="*", help="rows to run (names as in the table); default all")
    p.add_argument("--work", default="bench/work", help="artifact cache (reused between runs, keyed by what made each file)")
    p.add_argument("--out", default=None, help="default bench/results/latency-<date>-<cpu>.csv: one file per run and host")
    p.add_argument(
        "--data",
        default="digits",
        help="images for calibration and the export check, and --trained's held-out split (digits, or imagefolder:ROOT)",
    )
    # the workflow's defaults (workflow/schemas/config.schema.yaml: quantize / export)
    p.add_argument("--calibration-images", type=int, default=128, help="int8_static calibration images")
    p.add_argument("--check-images", type=int, default=64, help="held-out images of the export check")
    p.add_argument("--min-cosine", type=float, default=0.98, help="the export check's least cosine (int8)")
    p.add_argument("--trained", help="a trained PQV model: also report each recipe's top-1 agreement with it")
    return p


def build_rows(args, rows: dict, models: dict, manifest: dict) -> tuple[dict, dict, dict]:
    """Each row's file, built through the workflow's stage functions (or reused): (paths, fidelity,
    rejected); rows that fail their export check are dropped from `rows`."""
    paths, fidelity, rejected = {}, {}, {}
    for name, recipe in rows.items():
        source = models[recipe.model]
        if recipe.fmt == EAGER:
            paths[name] = source
            continue
        print(f"building {name} ...", flush=True)
        paths[name] = artifact_path(source.parent, recipe, manifest, args.calibration_images)
        try:
            meta = build(recipe, source, paths[name], manifest, args.calibration_images, args.check_images, args.min_cosine)
        except PQVError as e:  # pqv.stages.export before it kept rejected files: nothing was written
            meta = {"status": REJECTED, "reason": str(e)}
        if meta.get("status") == REJECTED:
            rejected[name] = meta.get("reason", "")
            print(f"  rejected by the export check, not timed: {rejected[name]}")
        else:
            fidelity[name] = meta["fidelity"]
    for name in rejected:
        if name in BASES:
            raise SystemExit(f"the '{name}' row is the base of every ratio and failed its export check")
        del rows[name]
    return paths, fidelity, rejected


def time_rounds(args, rows: dict, paths: dict, facts: dict) -> dict[str, list[dict]]:
    """Every row timed once per round, rows interleaved, each in a fresh process."""
    timings: dict[str, list[dict]] = {n: [] for n in rows}
    for r in range(args.rounds):
        for name, recipe in rows.items():
            t = time_in_subprocess(
                recipe, paths[name], facts[recipe.model]["input_size"], recipe.threads or args.threads, args.warmup, args.runs
            )
            timings[name].append(t)
            print(f"  round {r + 1}: {name:<42} {t['latency_ms_median']:8.1f} ms", flush=True)
    return timings


def table_rows(args, rows, paths, facts, timings, fidelity, trained, machine) -> list[dict]:
    """One CSV row per bench row; speed-ups are medians of the per-round ratios."""

    def ratio(base: str, name: str) -> float:
        per_round = [b["latency_ms_median"] / t["latency_ms_median"] for b, t in zip(timings[base], timings[name])]
        return statistics.median(per_round)

    timed_ort = [n for n in ORT_ROWS if n in timings]
    best_ort = min(timed_ort, key=lambda n: statistics.median(t["latency_ms_median"] for t in timings[n]))

    table = []
    for name, recipe in rows.items():
        ts = timings[name]
        table.append(
            {
                "row": name,
                "model": args.model,
                "pruned": recipe.model,
                "ratio": 0.0 if recipe.model == "dense" else args.ratio,
                "merge_r": recipe.merge_r,
                "precision": recipe.precision,
                "engine": recipe.engine,
                "format": recipe.fmt,
                "options": json.dumps(recipe.options) if recipe.options else "",
                "threads": recipe.threads or args.threads,
                "latency_ms_median": statistics.median(t["latency_ms_median"] for t in ts),
                "latency_ms_min": min(t["latency_ms_min"] for t in ts),
                "latency_ms_max": max(t["latency_ms_max"] for t in ts),
                "round_medians_ms": " ".join(f"{t['latency_ms_median']:.1f}" for t in ts),
                # how many times faster than the base, from the ratio within each round
                "speedup_vs_paper": ratio(PAPER, name),
                "speedup_vs_eager_dense": ratio("eager fp32 dense", name),
                "speedup_vs_ort": ratio(best_ort, name),
                "ort_best": best_ort,
                "speedup_vs_without_pqv": ratio(WITHOUT_PQV, name),
                "size_mb": paths[name].stat().st_size / 2**20,
                # the export check's (pqv.stages.export.run): held-out images of --data against the FP32 parent
                "cosine_min_vs_parent": fidelity.get(name, {}).get("cosine_min", 1.0 if recipe.fmt == EAGER else None),
                "check_images": 0 if recipe.fmt == EAGER else args.check_images,
                "trained_top1_agreement": trained.get(name, {}).get("top1_agreement"),
                "trained_cosine_min": trained.get(name, {}).get("cosine_min"),
                # a merged file's MACs are its merged model's (pqv.stages.quantize.run counts them into its sidecar)
                "macs": fileio.read_sidecar(paths[name])["macs"] if recipe.merge_r else facts[recipe.model]["macs"],
                "params": facts[recipe.model]["params"],
                "widths": "{embed_dim}/{head_dim}/{mlp_hidden}".format(**facts[recipe.model]),
                "warmup": args.warmup,
                "runs": args.runs,
                "rounds": args.rounds,
                "note": recipe.note,
                "runtime": ts[0]["runtime"],
                "session_options": ts[0]["session_options"],
                "artifact": str(paths[name]),
                **machine,
            }
        )
    return table


def print_table(args, table: list[dict], rejected: dict) -> None:
    print()
    print(
        f"{args.model}, {args.ratio:g} pruned (l2, uniform); batch 1; {args.threads} threads unless noted; "
        f"warm-up {args.warmup}, median of {args.runs} per round, {args.rounds} interleaved rounds"
    )
    header = (
        f"{'row':<42} {'median':>7} {'min':>7} {'max':>7} {'MB':>6} {'x paper':>7} {'x eager':>7} {'x ORT':>6}"
        f" {'x w/o':>6} {'cos':>6} {'agree':>6}"
    )
    print(header)
    print("-" * len(header))
    nan = float("nan")
    for row in table:
        agree, cos = row["trained_top1_agreement"], row["cosine_min_vs_parent"]
        print(
            f"{row['row']:<42} {row['latency_ms_median']:>7.1f} {row['latency_ms_min']:>7.1f} {row['latency_ms_max']:>7.1f}"
            f" {row['size_mb']:>6.1f} {row['speedup_vs_paper']:>7.2f} {row['speedup_vs_eager_dense']:>7.2f}"
            f" {row['speedup_vs_ort']:>6.2f} {row['speedup_vs_without_pqv']:>6.2f}"
            f" {cos if cos is not None else nan:>6.3f} {agree if agree is not None else nan:>6.3f}"
        )
    for name, reason in rejected.items():
        print(f"{name:<42} rejected by the export check: {reason}")


def main() -> None:
    args = parser().parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    manifest = manifest_of(args.data)
    if not ort.available():
        raise SystemExit(
            "bench/latency.py: error: ONNX Runtime, the peer every run is measured against, is not installed "
            "(fix: .venv/bin/pip install -e '.[bench]')"
        )
    rows = {n: r for n, r in RECIPES.items() if (not args.only or n in args.only) and available(r)}
    for needed in BASES:
        rows.setdefault(needed, RECIPES[needed])  # the ratios need them
    models = make_models(work, args.model, args.ratio, args.round_to, sorted({r.model for r in rows.values()}))
    facts = {kind: widths(path) for kind, path in models.items()}
    paths, fidelity, rejected = build_rows(args, rows, models, manifest)
    machine = {**evaluate.machine(), **store.versions()}
    print(f"machine: {machine}")
    timings = time_rounds(args, rows, paths, facts)
    trained = {}
    if args.trained:
        trained = agreement(
            {n: r for n, r in rows.items() if r.fmt != EAGER},
            Path(args.trained),
            manifest,
            work,
            args.calibration_images,
            args.check_images,
            args.min_cosine,
        )
    table = table_rows(args, rows, paths, facts, timings, fidelity, trained, machine)
    print_table(args, table, rejected)
    out = Path(args.out or default_out("latency", machine))
    with fileio.atomic_path(out) as tmp:
        pd.DataFrame(table).to_csv(tmp, index=False)
    print(f"wrote {out}")


def _time_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    for flag in ("--format", "--engine", "--path", "--input-size"):
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
