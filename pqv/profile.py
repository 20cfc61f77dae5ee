"""Profile stage: per-operator time of an exported artifact (the paper's Fig. 3), via torch.profiler."""
from __future__ import annotations

import torch


def profile_ops(fn, example: torch.Tensor, warmup: int, runs: int):
    """A table (pandas) of operators: self and total CPU time per call of the model, and calls."""
    import pandas as pd
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(warmup):
            fn(example)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                fn(example)
    rows = [
        {
            "operator": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1e3 / runs,
            "total_cpu_ms": e.cpu_time_total / 1e3 / runs,
            "calls": e.count // runs,
        }
        for e in prof.key_averages()
    ]
    table = pd.DataFrame(rows).sort_values("self_cpu_ms", ascending=False, ignore_index=True)
    table["self_cpu_pct"] = 100 * table["self_cpu_ms"] / table["self_cpu_ms"].sum()
    return table


def bar_chart(table, title: str, out_png: str, top: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = table.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(head) + 1.5))
    bars = ax.barh(head["operator"], head["self_cpu_ms"], color="tab:blue")
    for bar, pct, calls in zip(bars, head["self_cpu_pct"], head["calls"]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {pct:.1f}% ({calls} calls)", va="center", fontsize=8)
    ax.set_xlabel("self CPU time per inference (ms)")
    fig.suptitle(title, fontsize=10)
    ax.margins(x=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def run(artifact: str, out_csv: str, out_png: str, threads: int, warmup: int, runs: int) -> None:
    """CLI entry: profile one exported artifact at batch 1."""
    from . import export, io

    torch.set_num_threads(threads)
    meta = io.read_sidecar(artifact)
    module = export.load(artifact, meta["format"], meta["engine"])
    example = torch.zeros(1, *meta["data_config"]["input_size"])
    table = profile_ops(module, example, warmup, runs)
    with io.atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    title = f"{artifact}\nper-operator self CPU time: batch 1, threads: {threads}, mean of {runs} runs"
    with io.atomic_path(out_png) as tmp, open(tmp, "wb") as f:
        bar_chart(table, title, f)
