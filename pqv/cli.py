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

from .plan.errors import PQVError

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
    from .plan.config import Dataset, filled_section
    from .stages import data

    data.run(filled_section(Dataset, a.spec, "dataset"), a.out, threads=a.threads, split=a.split, train=a.train)


def _model(a):
    from .plan.config import Model, filled_section, hparams
    from .stages import model

    if a.weights:
        a.model_cfg = {**a.model_cfg, "weights": model.planned_weights(a.weights, a.model_cfg.get("weights"))}
    a.model_cfg = filled_section(Model, a.model_cfg, "models[]")
    if a.model_cfg.get("weights") == "train":  # timm names and Mixup's batch, before anything is built
        hparams(a.model_cfg.get("train") or {}, "models[].train")
    model.run(a.model_cfg, a.data, a.out, a.metrics, device=a.device, workers=a.workers, threads=a.threads)


def _prune(a):
    from .stages import prune

    prune.run(
        a.model,
        a.out,
        a.importance,
        a.ratio,
        a.data,
        a.calibration_batches,
        a.batch_size,
        round_to=a.round_to,
        scope=a.scope,
        heads=a.heads,
        head_ratio=a.head_ratio,
        bottleneck=a.bottleneck,
        seed=a.seed,
        device=a.device,
    )


def _finetune(a):
    from .common import timelimit
    from .plan.config import hparams
    from .stages import finetune

    def work():
        hparams(a.hparams, "finetune")  # timm names and Mixup's batch, before the model is loaded
        if a.keep:
            finetune.keep(a.model, a.out, a.metrics)
        elif a.data is None:
            raise PQVError("pqv finetune needs --data (the data set's manifest)", "give --data results/data/train.json, or --keep")
        else:
            finetune.run(
                a.model, a.out, a.data, a.hparams, a.metrics, teacher=a.teacher, device=a.device, workers=a.workers, threads=a.threads
            )

    timelimit.attempt(a.out, a.attempt, work)  # a retry runs again only after a time-limit stop


def _quantize(a):
    from .stages import quantize

    quantize.run(a.model, a.out, a.precision, a.engine, a.data, a.calibration_images, merge_r=a.merge_r)


def _export(a):
    from .stages import export

    export.run(
        a.src,
        a.parent,
        a.out,
        a.format,
        a.data,
        mobile_optimizer=not a.no_mobile_optimizer,
        xnnpack_rewrite=not a.no_xnnpack_rewrite,
        check_images=a.check_images,
        min_cosine=a.min_cosine,
    )


def _evaluate(a):
    from .stages import evaluate

    if a.measure == "accuracy":
        evaluate.run_accuracy(a.artifact, a.out, a.data, a.labels, a.threads, workers=a.workers, device=a.device)
    else:
        evaluate.run_latency(a.artifact, a.out, a.data, a.labels, a.threads, a.warmup, a.runs, a.batch_size)


def _summarize(a):
    from .stages import summary

    summary.run(a.metrics, a.out, a.search)


def _costs(a):
    from .stages import summary

    summary.run_costs(a.benchmarks, a.root, a.out, a.logs)


def _profile(a):
    from .stages import profile as profiling

    profiling.run(a.artifact, a.out_csv, a.out_png, a.threads, a.warmup, a.runs, manifest=a.data)


def _plot(a):
    from .stages import plot

    plot.run(a.summary, a.outdir)


def _search(a):
    from .plan import search
    from .plan.config import Prune, Search, filled_section

    if a.step == "round":
        search.run_round(
            a.out,
            a.model_sidecar,
            filled_section(Search, a.settings, "search"),
            filled_section(Prune, a.prune, "prune"),
            a.measured,
            previous=a.previous,
            references=a.reference,
        )
    else:
        from .stages import search as search_report

        search_report.report(
            a.rounds,
            a.out_csv,
            a.out_png,
            a.out_json,
            a.out_choice,
            a.measured,
            a.budget,
            searched=tuple(a.searched),
            threads=a.threads,
            warmup=a.warmup,
            runs=a.runs,
            race_rounds=a.race_rounds,
            manifest=a.data,
        )


def _choose(a):
    from .stages import choose

    choose.run(choose.summary_of(a.summary, a.configfile), a.max_accuracy_loss, a.model)


def _setting(section, key: str, **extra) -> dict:
    """An option's type, default and help, from the config's description (pqv.plan.config)."""
    import typing

    field = section.model_fields[key]
    kinds = [a for a in typing.get_args(field.annotation) if a is not type(None)] or [field.annotation]
    if kinds[0] is bool:
        return {"action": "store_true", "help": field.description or "", **extra}
    out = {"default": field.get_default(call_default_factory=True), "help": field.description or ""}
    if kinds[0] in (int, float):
        out["type"] = _ratio if kinds[0] is float else int
    return {**out, **extra}


def _common():
    """Options several stages share."""
    from .plan.registry import DEVICES

    return {
        "data": {
            "required": True,
            "help": "a split's manifest, made by `pqv data` (the workflow's: results/data/train.json, eval.json)",
        },
        "workers": {"type": int, "default": 0, "help": "DataLoader worker processes for full passes over a split"},
        "threads": {
            "type": int,
            "default": None,
            "help": "cores the job holds: each process takes its share for torch (DataLoader workers decode beside)",
        },
        "device": {
            "default": "auto",
            "choices": DEVICES,
            "help": "where gradients and accuracy passes run: auto = cuda when available (latency is always CPU)",
        },
    }


def _add_data(sub, c):
    s = sub.add_parser("data", help="list and decode the data set once; write its manifest")
    s.add_argument("--spec", type=_json, required=True, help="dataset section of the config, as JSON")
    s.add_argument("--out", required=True, help="the manifest (JSON)")
    s.add_argument("--split", choices=("train", "eval"), default=None, help="one split only (default: both)")
    s.add_argument("--train", default=None, help="with --split eval: the training split's manifest (its class index)")
    s.add_argument("--threads", type=int, default=None, help="decoding threads (default: every core)")
    s.set_defaults(fn=_data)


def _add_model(sub, c):
    s = sub.add_parser("model", help="create or train the starting model")
    s.add_argument("--model-cfg", type=_json, required=True, help="one entry of `models`, as JSON")
    s.add_argument(
        "--weights",
        default=None,
        help="a local weights file, whose sha256 the entry's `weights` may "
        "give (as the workflow does: it reruns on the file's content, not its path)",
    )
    s.add_argument("--data", **c["data"])
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True, help="per-epoch CSV")
    for name in ("threads", "workers", "device"):
        s.add_argument(f"--{name}", **c[name])
    s.set_defaults(fn=_model)


def _add_prune(sub, c):
    from .plan import registry
    from .plan.config import Prune

    s = sub.add_parser("prune", help="structurally prune a model")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--importance", required=True, help=_one_of(registry.IMPORTANCES))
    s.add_argument("--ratio", type=_ratio, required=True)
    s.add_argument("--data", default=None, help="the data set's manifest, for taylor/hessian calibration")
    for key in ("calibration_batches", "batch_size", "round_to", "head_ratio", "bottleneck", "seed"):
        s.add_argument("--" + key.replace("_", "-"), **_setting(Prune, key))
    # choices are checked by pqv.stages.prune, not argparse, so a typo is the usual one-line error with a fix
    s.add_argument("--scope", **_setting(Prune, "scope", help=_one_of(registry.SCOPES)))
    s.add_argument("--heads", **_setting(Prune, "heads", help=_one_of(registry.HEAD_MODES)))
    s.add_argument("--device", **c["device"])
    s.set_defaults(fn=_prune)


def _add_finetune(sub, c):
    s = sub.add_parser(
        "finetune",
        help="recover accuracy of a pruned model",
        description="Finetune a pruned model; resumes from <out>.ckpt/ if a run was interrupted. "
        "Several processes/GPUs: torchrun --nproc_per_node=N -m pqv finetune ... "
        "(hparams.batch_size is per process).",
    )
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--data", default=None, help="the data set's manifest (not needed with --keep)")
    s.add_argument("--hparams", type=_json, default={}, help="finetune section of the config, as JSON (docs/config.md)")
    s.add_argument("--metrics", required=True)
    s.add_argument("--teacher", default=None, help="unpruned parent model, for distill.enabled")
    s.add_argument(
        "--keep", action="store_true", help="pass the model through unchanged (the dense branch when finetune.dense is false)"
    )
    s.add_argument(
        "--attempt",
        type=int,
        default=None,
        help="this job's attempt (default: Snakemake's, on a cluster node): a retry after a failure that "
        "was not a time-limit stop fails at once with that failure's line (<out>.failed)",
    )
    for name in ("threads", "workers", "device"):
        s.add_argument(f"--{name}", **c[name])
    s.set_defaults(fn=_finetune)


def _add_quantize(sub, c):
    from .plan import registry
    from .plan.config import Quantize

    s = sub.add_parser("quantize", help="convert to a precision for an engine (.ts for ptl, .pt2 for pte)")
    s.add_argument("--model", required=True)
    s.add_argument("--out", required=True, help="ends in .ts (TorchScript, for ptl) or .pt2 (torch.export, for pte)")
    s.add_argument("--precision", required=True, help=_one_of(registry.PRECISIONS))
    s.add_argument(
        "--engine",
        required=True,
        help=f"{_one_of((registry.NO_ENGINE, *registry.ENGINES))} ({registry.NO_ENGINE} for float precisions)",
    )
    s.add_argument("--data", default=None, help="the data set's manifest, for calibration images (int8_static)")
    s.add_argument("--calibration-images", **_setting(Quantize, "calibration_images"))
    s.add_argument("--merge-r", type=int, default=0, help="tokens merged in each block (token merging, merge.r); 0: none")
    s.set_defaults(fn=_quantize)


def _add_export(sub, c):
    from .plan import registry
    from .plan.config import Export

    s = sub.add_parser("export", help="write a mobile artifact and verify it against its parent")
    s.add_argument("--src", required=True, help="quantized program (.ts or .pt2)")
    s.add_argument("--parent", required=True, help="eager FP32 model it was made from")
    s.add_argument("--out", required=True)
    s.add_argument("--format", required=True, help=_one_of(registry.FORMATS))
    s.add_argument("--data", **c["data"])
    s.add_argument("--no-mobile-optimizer", action="store_true", help="ptl: save a frozen module, unoptimized")
    s.add_argument(
        "--no-xnnpack-rewrite",
        action="store_true",
        help="ptl: keep optimize_for_mobile's other passes but not its XNNPACK prepacked ops",
    )
    s.add_argument("--check-images", **_setting(Export, "check_images"))
    s.add_argument("--min-cosine", **_setting(Export, "min_cosine"))
    s.set_defaults(fn=_export)


def _add_evaluate(sub, c):
    from .plan.config import Evaluate

    s = sub.add_parser("evaluate", help="accuracy, or latency, size and memory, of an artifact (or the eager baseline)")
    measures = s.add_subparsers(dest="measure", required=True, parser_class=_Parser)
    for measure, text in (
        ("accuracy", "top-1/top-5 over the held-out split, on every core the job holds"),
        ("latency", "latency per image on the CPU, file size, and the artifact's memory"),
    ):
        m = measures.add_parser(measure, help=text)
        m.add_argument("--artifact", required=True, help="an exported .ptl/.pte, or a .safetensors model (eager baseline)")
        m.add_argument("--out", required=True)
        m.add_argument("--data", **c["data"])
        m.add_argument("--labels", type=_json, default={}, help="identity columns for the summary, as JSON")
        if measure == "accuracy":
            m.add_argument("--threads", type=int, default=1, help="cores the job holds (DataLoader workers included)")
            m.add_argument("--workers", **c["workers"])
            m.add_argument("--device", **c["device"])
        else:
            for key in ("threads", "warmup", "runs", "batch_size"):
                m.add_argument("--" + key.replace("_", "-"), **_setting(Evaluate, key))
        m.set_defaults(fn=_evaluate)


def _add_profile(sub, c):
    from .plan.config import Evaluate, Profile

    s = sub.add_parser("profile", help="per-operator time table of an artifact")
    s.add_argument("--artifact", required=True)
    s.add_argument("--out-csv", required=True)
    s.add_argument("--out-png", required=True)
    s.add_argument("--threads", **_setting(Evaluate, "threads"))
    for key in ("warmup", "runs"):
        s.add_argument(f"--{key}", **_setting(Profile, key))
    s.add_argument("--data", default=None, help="the data set's manifest: profile on a held-out image (default: zeros)")
    s.set_defaults(fn=_profile)


def _add_tables(sub, c):
    """The aggregates: the summary, the stage costs, the figures, the choice."""
    s = sub.add_parser("summarize", help="gather the accuracy and latency measurements into one CSV")
    s.add_argument("metrics", nargs="+")
    s.add_argument("--out", required=True)
    s.add_argument("--search", nargs="*", default=[], help="the searches' chosen-artifact files, to mark in the table")
    s.set_defaults(fn=_summarize)
    s = sub.add_parser("costs", help="sum Snakemake's per-job benchmark files per stage (wall time, CPU, peak memory)")
    s.add_argument("benchmarks", nargs="+")
    s.add_argument(
        "--logs",
        nargs="*",
        default=None,
        help="each job's log, in the benchmark files' order: the CPU seconds its usage line records (pqv.common.usage)",
    )
    s.add_argument("--root", required=True, help="the benchmarks folder: its first sub-folder names the stage")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_costs)
    s = sub.add_parser("choose", help="print the fastest and the smallest artifact within an accuracy budget")
    where = s.add_mutually_exclusive_group()
    where.add_argument("--summary", default=None, help="the summary a run wrote (default results/summary.csv)")
    where.add_argument(
        "--configfile",
        nargs="+",
        default=None,
        help="the config files the run used (as given to snakemake): its results folder's summary",
    )
    s.add_argument(
        "--max-accuracy-loss",
        type=float,
        default=None,
        help="top-1 points below the dense FP32 model (without it: the searches' choices only)",
    )
    s.add_argument("--model", default=None, help="only this model id")
    s.set_defaults(fn=_choose)
    s = sub.add_parser("plot", help="draw the trade-off figures from the summary")
    s.add_argument("--summary", required=True)
    s.add_argument("--outdir", required=True)
    s.set_defaults(fn=_plot)


def _add_search(sub, c):
    from .plan.config import Evaluate, Search

    s = sub.add_parser("search", help="one round of the accuracy-budget search, or its report (workflow/rules/search.smk)")
    steps = s.add_subparsers(dest="step", required=True, parser_class=_Parser)
    r = steps.add_parser("round", help="read the probes measured so far, decide the next ones")
    r.add_argument("--out", required=True)
    r.add_argument("--model-sidecar", required=True, help="the starting model's sidecar: its widths")
    r.add_argument("--settings", type=_json, default={}, help="the search section of the config, as JSON")
    r.add_argument("--prune", type=_json, default={}, help="round_to, heads, bottleneck of the prune section")
    r.add_argument("--previous", default=None, help="the previous round's file")
    r.add_argument(
        "--reference",
        nargs="*",
        default=[],
        help="the first round: accuracy files of the dense branch's FP32 files (the accuracy reference)",
    )
    r.add_argument("--measured", nargs="*", default=[], help="accuracy and latency files of the probes")
    r.set_defaults(fn=_search)
    r = steps.add_parser("report", help="every probe as CSV, the curve, and the chosen artifact")
    r.add_argument("--rounds", nargs="+", required=True)
    r.add_argument("--measured", nargs="+", required=True)
    r.add_argument("--budget", **_setting(Search, "budget"))
    r.add_argument("--searched", nargs=2, metavar=("MODEL", "IMPORTANCE"), required=True, help="the search's model and importance")
    r.add_argument("--out-csv", required=True)
    r.add_argument("--out-png", required=True)
    r.add_argument("--out-json", required=True)
    r.add_argument("--out-choice", required=True, help="the candidates at the answer, timed against each other (CSV)")
    for key in ("threads", "warmup", "runs"):
        r.add_argument(f"--{key}", **_setting(Evaluate, key))
    r.add_argument("--race-rounds", type=int, default=5, help="turns of the interleaved timing of the candidates")
    r.add_argument("--data", default=None, help="the training split's manifest: the timed input (default: zeros)")
    r.set_defaults(fn=_search)


STAGES = (
    _add_data,
    _add_model,
    _add_prune,
    _add_finetune,
    _add_quantize,
    _add_export,
    _add_evaluate,
    _add_profile,
    _add_search,
    _add_tables,
)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pqv", description=__doc__.splitlines()[0])
    p.add_argument(
        "--log-usage",
        action="store_true",
        help="end stderr with one line of the CPU and wall seconds this process used (the workflow's jobs: pqv.common.usage)",
    )
    sub = p.add_subparsers(dest="stage", required=True)
    common = _common()
    for add in STAGES:
        add(sub, common)
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
        return getattr(e, "exit_status", 2)  # 2, or finetune's time-limit stop (pqv.common.timelimit.TimeLimit)
    if args.log_usage:
        from .common import usage

        usage.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
