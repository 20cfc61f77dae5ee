"""Summary: one row per evaluated artifact, gathered from the evaluate stage's JSON files."""
from __future__ import annotations

import json

import pandas as pd

from .io import atomic_path

KEYS = ["model", "importance", "ratio", "precision", "engine", "format"]
COLUMNS = KEYS + [
    "top1", "top5", "eager_top1", "top1_agreement", "cosine_min",
    "latency_ms_median", "latency_ms_min", "latency_ms_max", "latency_ms_p90", "latency_ms_paper_method",
    "size_mb", "peak_rss_mb", "rss_model_mb", "params", "macs",
    "threads", "warmup", "runs", "batch_size", "cpu", "torch", "artifact",
]


def collect(paths: list[str]) -> pd.DataFrame:
    rows = [json.loads(open(p).read()) for p in paths]
    table = pd.DataFrame(rows)
    table = table[[c for c in COLUMNS if c in table.columns]]
    return table.sort_values(KEYS, ignore_index=True)


def run(paths: list[str], out: str) -> pd.DataFrame:
    table = collect(paths)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table
