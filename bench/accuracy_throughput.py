"""Images per second of the evaluate stage's accuracy pass, before and after it used every core.

Before: the accuracy pass ran on `evaluate.threads` threads. After: on every core the job holds (a
.ptl scores batches of 64, a .pte image by image on an XNNPACK pool that wide). With --shards, a .pte
is also scored by one worker process per core, each on one thread (a design we measured and did
not adopt: docs/paper.md). The same functions as the evaluate stage, on artifacts the workflow made.

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

from pqv.common import datasets
from pqv.plan import fileio
from pqv.stages import data, evaluate, export


def dataset_manifest(configfile: str) -> dict:
    """The config's data set, read by the data stage (pqv.stages.data.scan)."""
    return data.scan(yaml.safe_load(Path(configfile).read_text())["dataset"])


def _shard(artifact: str, engine: str, manifest: dict, data_config: dict, rank: int, world: int) -> tuple[int, int, int]:
    evaluate.set_threads(1)
    module = export.load(artifact, "pte", engine)
    evaluate.set_threads(1)
    return evaluate.counts(module, datasets.loader(manifest, "eval", data_config, evaluate.EVAL_BATCH, rank=rank, world_size=world))


def sharded_accuracy(artifact: str, engine: str, manifest: dict, data_config: dict, workers: int) -> float:
    """Top-1 of a .pte scored by `workers` spawned processes, each on every workers-th image."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = [pool.submit(_shard, artifact, engine, manifest, data_config, r, workers) for r in range(workers)]
        hits1, _, total = (sum(x) for x in zip(*(f.result() for f in parts)))
    return 100.0 * hits1 / total


def measure(artifact: str, manifest: dict, threads: int, sharded: bool) -> tuple[float, float]:
    """(images/s, top-1) of one accuracy pass over the evaluation split."""
    meta = fileio.read_sidecar(artifact)
    dc = meta["data_config"]
    loader = datasets.loader(manifest, "eval", dc, evaluate.EVAL_BATCH)
    evaluate.set_threads(threads)
    start = time.perf_counter()
    if sharded:
        top1 = sharded_accuracy(artifact, meta["engine"], manifest, dc, threads)
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
    p.add_argument("--shards", action="store_true", help="also score each .pte in one process per core")
    p.add_argument("--out", default="bench/work/accuracy_throughput.csv")
    a = p.parse_args()
    manifest = dataset_manifest(a.configfile)
    rows = []
    for artifact in a.artifacts:
        fmt = fileio.read_sidecar(artifact)["format"]
        cases = [("before", a.before_threads, False), ("after", a.cores, False)]
        if a.shards and fmt == "pte":
            cases.append(("shards", a.cores, True))
        for label, threads, sharded in cases:
            rate, top1 = measure(artifact, manifest, threads, sharded)
            rows.append(
                {
                    "artifact": artifact,
                    "format": fmt,
                    "pass": label,
                    "threads": threads,
                    "how": "one worker process per core" if sharded else f"one process, {threads} threads",
                    "images_per_s": rate,
                    "top1": top1,
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    from pqv.stages.evaluate import machine

    facts = machine()
    table["cpu"], table["cores"], table["torch"] = facts["cpu"], facts["cores"], facts["torch"]
    table["date"] = datetime.date.today().isoformat()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out, index=False, float_format="%.4g")
    print(table[["artifact", "pass", "how", "images_per_s", "top1"]].to_string(index=False))
    print(f"torch {torch.__version__}; {facts['cpu']}; written {a.out}")


if __name__ == "__main__":
    main()
