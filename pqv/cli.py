"""`pqv <stage> ...`: one subcommand per workflow stage; each rule in workflow/rules calls one.

Problems a user can fix are printed as one line `pqv <stage>: error: ...` with exit status 2; so
are mistakes on the command line itself. Progress goes through `logging`, with timestamps.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

from .errors import PQVError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Parser(argparse.ArgumentParser):
    """argparse, but a command-line mistake is the same one line as any other user error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (fix: see `{self.prog} --help`)\n")


def _one_of(names) -> str:
    return "one of: " + ", ".join(names)


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def _ratio(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None


def _data(a):
    from . import data

    data.run(a.spec, a.out, threads=a.threads)


def _model(a):
    from . import model
    from .config import check_training

    if a.model_cfg.get("weights") == "train":  # timm names and Mixup's batch, before anything is built
        check_training("models[].train", a.model_cfg.get("train") or {})
    model.run(a.model_cfg, a.data, a.out, a.metrics, device=a.device, workers=a.workers, threads=a.threads)


def _prune(a):
    from . import prune

    prune.run(a.model, a.out, a.importance, a.ratio, a.data, a.calibration_batches, a.batch_size,
              round_to=a.round_to, scope=a.scope, heads=a.heads, head_ratio=a.head_ratio,
              bottleneck=a.bottleneck, seed=a.seed, device=a.device)


def _finetune(a):
    from . import finetune
    from .config import check_training

    check_training("finetune", a.hparams)  # timm names and Mixup's batch, before the model is loaded

    if a.keep:
        finetune.keep(a.model, a.out, a.metrics)
    elif a.data is None:
        raise PQVError("pqv finetune needs --data (the data set's manifest)", "give --data results/data/manifest.json, or --keep")
    else:
        finetune.run(a.model, a.out, a.data, a.hparams, a.metrics, teacher=a.teacher, device=a.device, workers=a.workers,
                     threads=a.threads)


def _quantize(a):
    from . import quantize

    quantize.run(a.model, a.out, a.precision, a.engine, a.data, a.calibration_images)


def _export(a):
    from . import export

    export.run(a.src, a.parent, a.out, a.format, a.data, mobile_optimizer=not a.no_mobile_optimizer,
               xnnpack_rewrite=not a.no_xnnpack_rewrite, check_images=a.check_images, min_cosine=a.min_cosine)


def _evaluate(a):
    from . import evaluate

    if a.measure == "accuracy":
        evaluate.run_accuracy(a.artifact, a.out, a.data, a.labels, a.threads, workers=a.workers, device=a.device)
    else:
        evaluate.run_latency(a.artifact, a.out, a.data, a.labels, a.threads, a.warmup, a.runs, a.batch_size)


def _summarize(a):
    from . import summary

    summary.run(a.metrics, a.out)


def _costs(a):
    from . import summary

    summary.run_costs(a.benchmarks, a.root, a.out)


def _profile(a):
    from . import profile

    profile.run(a.artifact, a.out_csv, a.out_png, a.threads, a.warmup, a.runs, manifest=a.data)


def _plot(a):
    from . import plot

    plot.run(a.summary, a.outdir)


def _choose(a):
    from . import choose

    choose.run(a.summary, a.max_accuracy_loss, a.model)


def parser() -> argparse.ArgumentParser:
    from . import targets
    from .prune import HEAD_MODES, IMPORTANCES, SCOPES

    p = _Parser(prog="pqv", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="stage", required=True)
    data = {"required": True, "help": "the data set's manifest (results/data/manifest.json, made by `pqv data`)"}
    workers = {"type": int, "default": 0, "help": "DataLoader worker processes for full passes over a split"}
    threads = {"type": int, "default": None,
               "help": "cores the job holds: each process takes its share, less its DataLoader workers (default: torch's)"}
    from .device import CHOICES as DEVICES

    device = {"default": "auto", "choices": DEVICES,
              "help": "where gradients and accuracy passes run: auto = cuda when available (latency is always CPU)"}

    s = sub.add_parser("data", help="list and decode the data set once; write its manifest")
    s.add_argument("--spec", type=_json, required=True, help="dataset section of the config, as JSON")
    s.add_argument("--out", required=True, help="the manifest (JSON)")
    s.add_argument("--threads", type=int, default=None, help="decoding threads (default: every core)")
    s.set_defaults(fn=_data)

    s = sub.add_parser("model", help="create or train the starting model")
    s.add_argument("--model-cfg", type=_json, required=True, help="one entry of `models`, as JSON")
    s.add_argument("--data", **data)
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True, help="per-epoch CSV")
    s.add_argument("--threads", **threads)
    s.add_argument("--workers", **workers)
    s.add_argument("--device", **device)
    s.set_defaults(fn=_model)

    s = sub.add_parser("prune", help="structurally prune a model")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--importance", required=True, help=_one_of(IMPORTANCES))
    s.add_argument("--ratio", type=_ratio, required=True)
    s.add_argument("--data", default=None, help="the data set's manifest, for taylor/hessian calibration")
    s.add_argument("--calibration-batches", type=int, default=4)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--round-to", type=int, default=None, help="keep channel counts multiples of this")
    # choices are checked by pqv.prune, not argparse, so a typo is the usual one-line error with a fix
    s.add_argument("--scope", default="uniform", help=f"{_one_of(SCOPES)} (uniform: same ratio per layer)")
    s.add_argument("--heads", default="dims", help=f"{_one_of(HEAD_MODES)} (dims: head dims; whole: whole heads)")
    s.add_argument("--head-ratio", type=_ratio, default=None, help="fraction of heads removed (heads whole)")
    s.add_argument("--bottleneck", action="store_true", help="keep the embedding width")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", **device)
    s.set_defaults(fn=_prune)

    s = sub.add_parser("finetune", help="recover accuracy of a pruned model",
                       description="Finetune a pruned model; resumes from <out>.ckpt/ if a run was interrupted. "
                       "Several processes/GPUs: torchrun --nproc_per_node=N -m pqv finetune ... "
                       "(hparams.batch_size is per process).")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--data", default=None, help="the data set's manifest (not needed with --keep)")
    s.add_argument("--hparams", type=_json, default={}, help="finetune section of the config, as JSON")
    s.add_argument("--metrics", required=True)
    s.add_argument("--teacher", default=None, help="unpruned parent model, for distill.enabled")
    s.add_argument("--keep", action="store_true",
                   help="pass the model through unchanged (the dense branch when finetune.dense is false)")
    s.add_argument("--threads", **threads)
    s.add_argument("--workers", **workers)
    s.add_argument("--device", **device)
    s.set_defaults(fn=_finetune)

    s = sub.add_parser("quantize", help="convert to a precision for an engine (.ts for ptl, .pt2 for pte)")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True, help="ends in .ts (TorchScript, for ptl) or .pt2 (torch.export, for pte)")
    s.add_argument("--precision", required=True, help=_one_of(targets.PRECISIONS))
    s.add_argument("--engine", required=True,
                   help=f"{_one_of((targets.NO_ENGINE, *targets.ENGINES))} ({targets.NO_ENGINE} for float precisions)")
    s.add_argument("--data", default=None, help="the data set's manifest, for calibration images (int8_static)")
    s.add_argument("--calibration-images", type=int, default=128)
    s.set_defaults(fn=_quantize)

    s = sub.add_parser("export", help="write a mobile artifact and verify it against its parent")
    s.add_argument("--src", required=True, help="quantized program (.ts or .pt2)")
    s.add_argument("--parent", required=True, help="eager FP32 model it was made from")
    s.add_argument("--out", required=True)
    s.add_argument("--format", required=True, help=_one_of(targets.FORMATS))
    s.add_argument("--data", **data)
    s.add_argument("--no-mobile-optimizer", action="store_true", help="ptl: save a frozen module, unoptimized")
    s.add_argument("--no-xnnpack-rewrite", action="store_true",
                   help="ptl: keep optimize_for_mobile's other passes but not its XNNPACK prepacked ops")
    s.add_argument("--check-images", type=int, default=64)
    s.add_argument("--min-cosine", type=float, default=0.98)
    s.set_defaults(fn=_export)

    s = sub.add_parser("evaluate", help="accuracy, or latency, size and memory, of an artifact (or the eager baseline)")
    measures = s.add_subparsers(dest="measure", required=True, parser_class=_Parser)
    for measure, text in (("accuracy", "top-1/top-5 over the held-out split, on every core the job holds"),
                          ("latency", "latency per image on the CPU, file size, and memory in a process of its own")):
        m = measures.add_parser(measure, help=text)
        m.add_argument("--artifact", required=True, help="an exported .ptl/.pte, or a .safetensors model (eager baseline)")
        m.add_argument("--out", required=True)
        m.add_argument("--data", **data)
        m.add_argument("--labels", type=_json, default={}, help="identity columns for the summary, as JSON")
        if measure == "accuracy":
            m.add_argument("--threads", type=int, default=1, help="cores the job holds (DataLoader workers included)")
            m.add_argument("--workers", **workers)
            m.add_argument("--device", **device)
        else:
            m.add_argument("--threads", type=int, default=1, help="torch (and XNNPACK) threads while timing")
            m.add_argument("--warmup", type=int, default=5)
            m.add_argument("--runs", type=int, default=20)
            m.add_argument("--batch-size", type=int, default=1)
        m.set_defaults(fn=_evaluate)

    s = sub.add_parser("summarize", help="gather evaluate results into one CSV")
    s.add_argument("metrics", nargs="+")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_summarize)

    s = sub.add_parser("costs", help="sum Snakemake's per-job benchmark files per stage (wall time, CPU, peak memory)")
    s.add_argument("benchmarks", nargs="+")
    s.add_argument("--root", required=True, help="the benchmarks folder: its first sub-folder names the stage")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_costs)

    s = sub.add_parser("profile", help="per-operator time table of an artifact")
    s.add_argument("--artifact", required=True)
    s.add_argument("--out-csv", required=True)
    s.add_argument("--out-png", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--runs", type=int, default=10)
    s.add_argument("--data", default=None, help="the data set's manifest: profile on a held-out image (default: zeros)")
    s.set_defaults(fn=_profile)

    s = sub.add_parser("choose", help="print the fastest and the smallest artifact within an accuracy budget")
    s.add_argument("--summary", default="results/summary.csv")
    s.add_argument("--max-accuracy-loss", type=float, required=True, help="top-1 points below the dense FP32 model")
    s.add_argument("--model", default=None, help="only this model id")
    s.set_defaults(fn=_choose)

    s = sub.add_parser("plot", help="draw the trade-off figures from the summary")
    s.add_argument("--summary", required=True)
    s.add_argument("--outdir", required=True)
    s.set_defaults(fn=_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)  # job logs get timestamped lines
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        args.fn(args)
    except PQVError as e:
        print(f"pqv {args.stage}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
