"""Top-1 against token merging (ToMe, pqv/common/tome.py) where we can measure it on a CPU: issue 42.

For one config's data set and model, the base model is built and trained by the model stage's own
pieces (pqv.stages.model.create_base, data_config_of, and pqv.stages.finetune.train with the model's
`train` settings, as `pqv model` does for `weights: train`), on the data stage's manifest
(pqv.stages.data.scan). Then, for each r (tokens merged per block, pqv.common.tome.apply):

  off_the_shelf    the trained model, merged at inference only (what merge.r ships today);
  finetuned_merged a copy of the trained model, merged, then trained by the finetune stage's loop
                   (pqv.stages.finetune.train) with the config's `finetune` hyper-parameters (epochs
                   overridable with --finetune-epochs), merged the whole time, and scored merged.
                   Its r = 0 row is the same finetune without merging: the control.

Top-1 is counted by the evaluate stage's `counts` on the evaluation split, with its standard error
sqrt(p(1-p)/n) in points. One process; torch threads = --threads (default 1); DataLoader workers 0.

    python bench/tome_accuracy.py --config config/config.yaml --r 0 1 2 4 8 --finetune-epochs 1 \
        --csv docs/data/tome_accuracy.csv
    python bench/tome_accuracy.py --config config/cifar10.yaml --r 0 4 8 16 32 --max-eval 10000 \
        --threads 2 --csv docs/data/tome_accuracy.csv
    python bench/tome_table.py docs/data/tome_accuracy.csv

(the runs behind docs/merging.md, 2026-12-07: ~4 min, and ~45 min beside another job on a 2-vCPU VM.)

--max-train / --max-eval / --epochs override the config's dataset.max_train/max_eval and the model's
train.epochs (the full CIFAR-10 training is ~18 min on a 2-core VM). Rows are appended to --csv
(header written when the file is new) and printed as a table.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pqv.common import datasets, tome  # noqa: E402
from pqv.plan import config as configs  # noqa: E402
from pqv.stages import data, evaluate  # noqa: E402
from pqv.stages import model as model_stage  # noqa: E402
from pqv.stages.finetune import train  # noqa: E402

FIELDS = [
    "date",
    "dataset",
    "model",
    "img_size",
    "patch_size",
    "depth",
    "tokens",
    "train_images",
    "train_epochs",
    "eval_images",
    "mode",
    "r",
    "tokens_per_block",
    "token_fraction",
    "finetune_epochs",
    "finetune_lr",
    "top1",
    "top1_se",
    "delta_vs_r0_off_the_shelf",
    "seconds",
    "cpu",
    "torch",
    "threads",
    "command",
]


def score(model: torch.nn.Module, manifest: dict, dc: dict) -> tuple[float, float, int]:
    """(top-1 %, its standard error in points, images) of an eager model on the evaluation split."""
    loader = datasets.loader(manifest, "eval", dc, evaluate.EVAL_BATCH, workers=0)
    model.eval()
    with torch.no_grad():
        hits, _, n = evaluate.counts(model, loader)
    p = hits / n
    return 100.0 * p, 100.0 * math.sqrt(p * (1 - p) / n), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="a config file, merged over config/config.yaml as the workflow does")
    ap.add_argument("--r", type=int, nargs="+", required=True, help="tokens merged per block (0 = none)")
    ap.add_argument("--max-train", type=int, default=None, help="override dataset.max_train")
    ap.add_argument("--max-eval", type=int, default=None, help="override dataset.max_eval")
    ap.add_argument("--epochs", type=int, default=None, help="override the model's train.epochs")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="override finetune.epochs for the merged finetune")
    ap.add_argument("--no-finetune", action="store_true", help="off-the-shelf rows only")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a shared 2-core VM, 2 threads spin-waited ~30x slower)"
    )
    ap.add_argument("--csv", required=True)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    cfg = configs.check_files([args.config])
    spec = dict(cfg["dataset"])
    if args.max_train is not None:
        spec["max_train"] = args.max_train
    if args.max_eval is not None:
        spec["max_eval"] = args.max_eval
    if spec.get("root"):
        spec["root"] = os.path.expanduser(spec["root"])
    manifest = data.scan(spec, threads=args.threads)
    model_cfg = copy.deepcopy(cfg["models"][0])
    if args.epochs is not None:
        model_cfg.setdefault("train", {})["epochs"] = args.epochs
    ft = dict(cfg["finetune"])
    if args.finetune_epochs is not None:
        ft["epochs"] = args.finetune_epochs

    started = time.perf_counter()
    base, facts = model_stage.create_base(model_cfg, manifest)
    dc = model_stage.data_config_of(base, model_cfg.get("data_config"))
    if facts["weights"] == "train":
        train(base, manifest, dc, model_cfg.get("train", {}), desc="train base model", device="cpu", threads=args.threads)
    base_seconds = time.perf_counter() - started
    kw = facts["kwargs"]
    prefix, patches = int(base.num_prefix_tokens), int(base.patch_embed.num_patches)
    machine = evaluate.machine()
    common = {
        "date": datetime.date.today().isoformat(),
        "dataset": spec["name"],
        "model": model_cfg["id"],
        "img_size": kw.get("img_size"),
        "patch_size": kw.get("patch_size"),
        "depth": len(base.blocks),
        "tokens": prefix + patches,
        "train_images": manifest["splits"]["train"]["images"],
        "train_epochs": model_cfg.get("train", {}).get("epochs"),
        "cpu": machine["cpu"],
        "torch": torch.__version__,
        "threads": args.threads,
        "command": command,
    }
    print(
        f"base model: {model_cfg['id']} {prefix + patches} tokens ({prefix} prefix + {patches} patches), "
        f"{len(base.blocks)} blocks, trained in {base_seconds:.0f} s",
        flush=True,
    )

    rows, r0_top1 = [], None
    modes = ["off_the_shelf"] + ([] if args.no_finetune else ["finetuned_merged"])
    for mode in modes:
        for r in args.r:
            t0 = time.perf_counter()
            m = tome.apply(copy.deepcopy(base), r)
            if mode == "finetuned_merged":
                train(m, manifest, dc, ft, desc=f"finetune tome{r}", device="cpu", threads=args.threads)
            top1, se, n = score(m, manifest, dc)
            tokens = tome.tokens_per_block(m)
            fraction = sum(tokens[:-1]) / (len(tokens[:-1]) * tokens[0])  # tokens through the blocks vs r = 0
            if mode == "off_the_shelf" and r == 0:
                r0_top1 = top1
            row = {
                **common,
                "eval_images": n,
                "mode": mode,
                "r": r,
                "tokens_per_block": "/".join(map(str, tokens)),
                "token_fraction": round(fraction, 3),
                "finetune_epochs": ft["epochs"] if mode == "finetuned_merged" else 0,
                "finetune_lr": ft["lr"] if mode == "finetuned_merged" else "",
                "top1": round(top1, 2),
                "top1_se": round(se, 2),
                "delta_vs_r0_off_the_shelf": round(top1 - r0_top1, 2) if r0_top1 is not None else "",
                "seconds": round(time.perf_counter() - t0, 1),
            }
            rows.append(row)
            print(
                f"{mode:17s} r={r:3d} tokens {row['tokens_per_block']:28s} token fraction {row['token_fraction']:.3f} "
                f"top-1 {top1:6.2f} ± {se:4.2f}  ({row['seconds']} s)",
                flush=True,
            )

    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"\n{'mode':17s} {'r':>3s} {'tokens per block':28s} {'tok.':>6s} {'top-1':>7s} {'±SE':>5s} {'Δ':>6s}")
    for row in rows:
        print(
            f"{row['mode']:17s} {row['r']:3d} {row['tokens_per_block']:28s} {row['token_fraction']:6.3f} "
            f"{row['top1']:7.2f} {row['top1_se']:5.2f} {row['delta_vs_r0_off_the_shelf']!s:>6s}"
        )
    print(f"appended {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
