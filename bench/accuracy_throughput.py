"""Images per second of the evaluate stage's accuracy pass, before and after it used every core.

Before: the accuracy pass ran on `evaluate.threads` threads in the evaluate process (a .pte image
by image on that pool). After: every core the job holds; a .ptl scores batches of 64 on all of
them, a .pte is scored by one worker process per core (pqv.evaluate.sharded_accuracy). Both are
the functions the evaluate stage calls, on artifacts the workflow made (e.g. results-deit_b).

    python bench/accuracy_throughput.py --artifacts results-deit_b/deit-b/taylor_0.09375/export/int8_dynamic-x86.ptl \
        results-deit_b/deit-b/taylor_0.09375/export/int8_dynamic-xnnpack.pte --configfile config/deit_b.yaml

Prints a table and writes bench/work/accuracy_throughput.csv. Method: DESIGN.md ("Measuring").
"""
from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from pqv import data, evaluate, export, io


def dataset_spec(configfile: str) -> dict:
    spec = yaml.safe_load(Path(configfile).read_text())["dataset"]
    return {"workers": 0, "train_dir": "train", "eval_dir": "val", **spec}


def measure(artifact: str, spec: dict, threads: int, sharded: bool) -> tuple[float, float]:
    """(images/s, top-1) of one accuracy pass over the evaluation split."""
    meta = io.read_sidecar(artifact)
    dc = meta["data_config"]
    loader = data.loader(spec, "eval", dc, evaluate.EVAL_BATCH)
    evaluate.set_threads(threads)
    start = time.perf_counter()
    if sharded:
        top1, _ = evaluate.sharded_accuracy(artifact, meta["engine"], spec, dc, threads)
    else:
        module = export.load(artifact, meta["format"], meta["engine"])
        evaluate.set_threads(threads)
        top1, _ = evaluate.accuracy(module, loader)
    return len(loader.dataset) / (time.perf_counter() - start), top1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", nargs="+", required=True)
    p.add_argument("--configfile", required=True, help="the config that made them (its dataset section is used)")
    p.add_argument("--before-threads", type=int, default=1, help="evaluate.threads of the old pass")
    p.add_argument("--cores", type=int, default=os.cpu_count(), help="cores the evaluate job holds")
    p.add_argument("--out", default="bench/work/accuracy_throughput.csv")
    a = p.parse_args()
    spec = dataset_spec(a.configfile)
    rows = []
    for artifact in a.artifacts:
        fmt = io.read_sidecar(artifact)["format"]
        cases = [("before", a.before_threads, False), ("after", a.cores, fmt == "pte" and a.cores > 1)]
        for label, threads, sharded in cases:
            rate, top1 = measure(artifact, spec, threads, sharded)
            rows.append({"artifact": artifact, "format": fmt, "pass": label, "threads": threads,
                         "how": "one worker process per core" if sharded else f"one process, {threads} threads",
                         "images_per_s": rate, "top1": top1})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    from pqv.evaluate import machine

    facts = machine()
    table["cpu"], table["cores"], table["torch"] = facts["cpu"], facts["cores"], facts["torch"]
    table["date"] = datetime.date.today().isoformat()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out, index=False, float_format="%.4g")
    print(table[["artifact", "pass", "how", "images_per_s", "top1"]].to_string(index=False))
    print(f"torch {torch.__version__}; {facts['cpu']}; written {a.out}")


if __name__ == "__main__":
    main()
