"""`pqv <stage> ...`: one subcommand per workflow stage; each rule in workflow/rules calls one.

Problems a user can fix are printed as one line `pqv <stage>: error: ...` with exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from .errors import PQVError


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


def _model(a):
    from . import model

    model.run(a.model_cfg, a.data, a.out, a.metrics)


def _prune(a):
    from . import prune

    prune.run(a.model, a.out, a.importance, a.ratio, a.data, a.calibration_batches, a.batch_size,
              a.round_to, a.global_pruning, a.seed)


def _finetune(a):
    from . import finetune

    finetune.run(a.model, a.out, a.data, a.hparams, a.metrics)


def _quantize(a):
    from . import quantize

    quantize.run(a.model, a.out, a.precision, a.engine)


def _export(a):
    from . import export

    export.run(a.src, a.parent, a.out, a.format, a.data, mobile_optimizer=not a.no_mobile_optimizer,
               check_images=a.check_images, min_cosine=a.min_cosine)


def _evaluate(a):
    from . import evaluate

    evaluate.run(a.artifact, a.out, a.data, a.labels, a.threads, a.warmup, a.runs, a.batch_size)


def _summarize(a):
    from . import summary

    summary.run(a.metrics, a.out)


def _profile(a):
    from . import profile

    profile.run(a.artifact, a.out_csv, a.out_png, a.threads, a.warmup, a.runs)


def _plot(a):
    from . import plot

    plot.run(a.summary, a.outdir)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pqv", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="stage", required=True)
    data = {"type": _json, "required": True, "help": "dataset section of the config, as JSON"}

    s = sub.add_parser("model", help="create or train the starting model")
    s.add_argument("--model-cfg", type=_json, required=True, help="one entry of `models`, as JSON")
    s.add_argument("--data", **data)
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True, help="per-epoch CSV")
    s.set_defaults(fn=_model)

    s = sub.add_parser("prune", help="structurally prune a model")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--importance", required=True)
    s.add_argument("--ratio", type=_ratio, required=True)
    s.add_argument("--data", **data)
    s.add_argument("--calibration-batches", type=int, default=4)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--round-to", type=int, default=None)
    s.add_argument("--global-pruning", action="store_true")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_prune)

    s = sub.add_parser("finetune", help="recover accuracy of a pruned model")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--data", **data)
    s.add_argument("--hparams", type=_json, default={})
    s.add_argument("--metrics", required=True)
    s.set_defaults(fn=_finetune)

    s = sub.add_parser("quantize", help="convert to a precision for an engine (TorchScript)")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--precision", required=True)
    s.add_argument("--engine", required=True)
    s.set_defaults(fn=_quantize)

    s = sub.add_parser("export", help="write a mobile artifact and verify it against its parent")
    s.add_argument("--src", required=True, help="quantized TorchScript module")
    s.add_argument("--parent", required=True, help="eager FP32 model it was made from")
    s.add_argument("--out", required=True)
    s.add_argument("--format", required=True)
    s.add_argument("--data", **data)
    s.add_argument("--no-mobile-optimizer", action="store_true")
    s.add_argument("--check-images", type=int, default=64)
    s.add_argument("--min-cosine", type=float, default=0.98)
    s.set_defaults(fn=_export)

    s = sub.add_parser("evaluate", help="accuracy, latency, size, memory of an artifact")
    s.add_argument("--artifact", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--data", **data)
    s.add_argument("--labels", type=_json, default={}, help="identity columns for the summary, as JSON")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--runs", type=int, default=20)
    s.add_argument("--batch-size", type=int, default=1)
    s.set_defaults(fn=_evaluate)

    s = sub.add_parser("summarize", help="gather evaluate results into one CSV")
    s.add_argument("metrics", nargs="+")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_summarize)

    s = sub.add_parser("profile", help="per-operator time table of an artifact")
    s.add_argument("--artifact", required=True)
    s.add_argument("--out-csv", required=True)
    s.add_argument("--out-png", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--runs", type=int, default=10)
    s.set_defaults(fn=_profile)

    s = sub.add_parser("plot", help="draw the trade-off figures from the summary")
    s.add_argument("--summary", required=True)
    s.add_argument("--outdir", required=True)
    s.set_defaults(fn=_plot)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
