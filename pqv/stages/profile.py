"""Profile stage: per-operator time of an exported artifact (the paper's Fig. 3), in its own runtime.

One profiler per format (PROFILERS), each giving the same table (operator, self and total time per
inference in ms, calls per inference, share of the self time):
- ptl: torch.profiler around the Lite Interpreter call (its operators are torch operators);
- pte: ExecuTorch's own event tracer (ETDump), read with executorch.devtools.Inspector. The
  profiler around a .pte call would see one opaque call. The tracer has to be compiled into the
  runtime: the project's executorch 1.3.1 wheel has none, so the .pte is run in the side
  environment of `envs/etdump.sh` (executorch 1.5.1: tracer plus XNNPACK's per-operator timings)
  or in the Python named by $PQV_ETDUMP_PYTHON. This file is also that runner (`__main__`
  below), so it imports nothing but torch at the top;
- onnx, ort: ONNX Runtime's own profiler (kernel time per node, summed by operator type).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

ETDUMP_PYTHON_ENV = "PQV_ETDUMP_PYTHON"  # the names pqv.plan.config.tracer_python checks before any job
COLUMNS = ["operator", "self_cpu_ms", "total_cpu_ms", "calls", "self_cpu_pct"]


def _finish(rows: list[dict]):
    import pandas as pd

    table = pd.DataFrame(rows, columns=COLUMNS[:-1]).sort_values("self_cpu_ms", ascending=False, ignore_index=True)
    table["self_cpu_pct"] = 100 * table["self_cpu_ms"] / table["self_cpu_ms"].sum()
    return table


# ---- ptl: torch.profiler ---------------------------------------------------------------------


def profile_ops(fn, example: torch.Tensor, warmup: int, runs: int):
    """A table (pandas) of operators: self and total CPU time per call of the model, and calls."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(warmup):
            fn(example)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                fn(example)
    return _finish(
        [
            {
                "operator": e.key,
                "self_cpu_ms": e.self_cpu_time_total / 1e3 / runs,
                "total_cpu_ms": e.cpu_time_total / 1e3 / runs,
                "calls": e.count // runs,
            }
            for e in prof.key_averages()
        ]
    )


def _torch_profiler(artifact: str, meta: dict, example: torch.Tensor, warmup: int, runs: int):
    from . import export
    from .evaluate import runtime_version

    module = export.load(artifact, meta["format"], meta["engine"])
    return profile_ops(module, example, warmup, runs), "torch.profiler, self CPU time", runtime_version("ptl")


# ---- pte: ExecuTorch's event tracer (ETDump) ------------------------------------------------

# ExecuTorch's own event names (runtime/executor/method.cpp) around the operators they contain
EXECUTE, OPERATOR_CALL, DELEGATE_CALL = "Method::execute", "OPERATOR_CALL", "DELEGATE_CALL"
# a delegate's operators come numbered per name ("... GEMM #3"): one row per kind of operator
_NUMBERED = re.compile(r" #\d+$")


def etdump_python() -> str:
    """The Python that runs a .pte with the event tracer: $PQV_ETDUMP_PYTHON as given (one that
    cannot run is reported by name), else envs/etdump's, else this one (right once the project's
    own ExecuTorch has the tracer)."""
    from ..plan.config import tracer_python

    return os.environ.get(ETDUMP_PYTHON_ENV) or tracer_python() or sys.executable


def record_etdump(
    pte: str, etdump: str, threads: int, warmup: int, runs: int, python: str | None = None, example: torch.Tensor | None = None
) -> str:
    """Run `pte` warmup + runs times at batch 1 with ETDump on (in `python`, a subprocess) and write
    the dump to `etdump`; the runtime's ExecuTorch version. `example` (default zeros) is the input."""
    from ..plan.errors import PQVError

    python = python or etdump_python()
    inputs = f"{etdump}.input.pt"
    torch.save({"x": example if example is not None else torch.zeros(0)}, inputs)  # tensors only: weights_only loads it
    # -P: pqv/ must not go on sys.path (its store.py, data.py, ... would shadow other modules)
    cmd = [python, "-P", str(Path(__file__).resolve()), pte, etdump, str(threads), str(warmup), str(runs), inputs]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        Path(inputs).unlink(missing_ok=True)
        raise PQVError(
            f"cannot run {python} to profile {pte}: {e.strerror}",
            f"run `bash envs/etdump.sh`, or set {ETDUMP_PYTHON_ENV} to an existing Python",
        ) from None
    Path(inputs).unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"profiling {pte} in {python} failed:\n{done.stderr[-3000:]}")
    version = json.loads(done.stdout.strip().splitlines()[-1])["executorch"]
    if not Path(etdump).exists():
        raise PQVError(
            f"the ExecuTorch runtime of {python} (executorch {version}) was built without its event "
            "tracer, so it cannot time a .pte by operator",
            f"run `bash envs/etdump.sh` (executorch 1.5.1, tracer compiled in) or set {ETDUMP_PYTHON_ENV}",
        )
    return version


def etdump_table(etdump: str, runs: int):
    """The per-operator table of an ETDump: the last `runs` executions, averaged per inference.

    Rows are the leaves, so their self times add up to Method::execute: each portable operator
    (native_call_*), each kind of delegated operator (XNNPACK's timings, whole microseconds), and
    three remainders: dispatching portable operators (OPERATOR_CALL minus its kernels), entering
    the delegate (DELEGATE_CALL minus the operators it timed) and the runtime between calls."""
    import warnings

    from . import export

    export._find_flatc()  # the ETDump flatbuffer is decoded with ExecuTorch's flatc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Output Buffer not found": no tensors were logged, by design
        from executorch.devtools import Inspector

        inspector = Inspector(etdump_path=etdump)
    totals: dict[str, float] = {}
    calls: dict[str, int] = {}
    for block in inspector.event_blocks:
        for event in block.events:
            if event.perf_data is None or len(event.perf_data.raw) < runs:
                continue  # load-time events (Method::init, Program::load_method) ran once
            name = event.name
            if event.is_delegated_op:
                name = "delegate: " + _NUMBERED.sub("", name)
            totals[name] = totals.get(name, 0.0) + sum(event.perf_data.raw[-runs:]) / runs
            calls[name] = calls.get(name, 0) + 1
    kernels = {n: t for n, t in totals.items() if n.startswith("native_call_")}
    delegated = {n: t for n, t in totals.items() if n.startswith("delegate: ")}
    remainders = {
        "portable operator dispatch (OPERATOR_CALL minus kernels)": totals.get(OPERATOR_CALL, 0.0) - sum(kernels.values()),
        "delegate entry (DELEGATE_CALL minus its timed operators)": totals.get(DELEGATE_CALL, 0.0) - sum(delegated.values()),
        "runtime between calls (Method::execute minus calls)": totals.get(EXECUTE, 0.0)
        - totals.get(OPERATOR_CALL, 0.0)
        - totals.get(DELEGATE_CALL, 0.0),
    }
    remainder_calls = [calls.get(OPERATOR_CALL, 0), calls.get(DELEGATE_CALL, 0), calls.get(EXECUTE, 0)]
    rows = [{"operator": n, "self_cpu_ms": t, "total_cpu_ms": t, "calls": calls[n]} for n, t in {**kernels, **delegated}.items()]
    rows += [
        {"operator": n, "self_cpu_ms": max(t, 0.0), "total_cpu_ms": max(t, 0.0), "calls": c}
        for (n, t), c in zip(remainders.items(), remainder_calls)
        if c
    ]
    return _finish(rows)


def _etdump(artifact: str, meta: dict, example: torch.Tensor, warmup: int, runs: int):
    with tempfile.TemporaryDirectory() as tmp:
        etdump = str(Path(tmp) / "profile.etdp")
        version = record_etdump(artifact, etdump, torch.get_num_threads(), warmup, runs, example=example)
        table = etdump_table(etdump, runs)
    return table, f"ExecuTorch {version} ETDump, XNNPACK per-operator timings (1 µs resolution)", f"executorch {version}"


# ---- onnx, ort: ONNX Runtime's profiler ------------------------------------------------------------


def _ort_profiler(artifact: str, meta: dict, example: torch.Tensor, warmup: int, runs: int):
    from ..common import ort

    rows = ort.profile_rows(artifact, meta["format"] == "ort", example, warmup, runs)
    return _finish(rows), "ONNX Runtime's profiler, kernel time by operator type", ort.version()


@dataclass(frozen=True)
class Profiler:
    table: Callable  # (artifact, sidecar, example, warmup, runs) -> (table, what measured it, runtime and version)


PROFILERS: dict[str, Profiler] = {
    "ptl": Profiler(_torch_profiler),
    "pte": Profiler(_etdump),
    "onnx": Profiler(_ort_profiler),
    "ort": Profiler(_ort_profiler),
}


def bar_chart(table, title: str, out_png: str, top: int = 12) -> None:
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head = table.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(head) + 1.5))
    bars = ax.barh(head["operator"], head["self_cpu_ms"], color="tab:blue")
    for bar, pct, calls in zip(bars, head["self_cpu_pct"], head["calls"]):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {pct:.1f}% ({calls} calls)", va="center", fontsize=8)
    ax.set_xlabel("self time per inference (ms)")
    # a long artifact path or method line would run off the figure: wrap each line to its width
    fig.suptitle("\n".join(textwrap.fill(line, 100) for line in title.splitlines()), fontsize=10)
    ax.margins(x=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def run(artifact: str, out_csv: str, out_png: str, threads: int, warmup: int, runs: int, manifest=None) -> None:
    """CLI entry: profile one exported artifact at batch 1 in its own runtime, on one held-out image of
    the data set (its manifest; the same class-balanced sample as every stage) or, without data, zeros."""
    from ..common import datasets, store
    from ..plan import fileio  # here, not above: this file is also the ETDump runner, run as a script
    from ..plan.errors import PQVError

    torch.set_num_threads(threads)
    meta = fileio.read_sidecar(artifact)
    store.check_artifact(artifact)  # a cut file: one line, before a runtime (or the tracer's) prints its own
    profiler = PROFILERS.get(meta["format"])
    if profiler is None:
        raise PQVError(f"no profiler for format '{meta['format']}'", f"profile a {' or '.join(PROFILERS)} artifact")
    size = (1, *meta["data_config"]["input_size"])
    example = datasets.sample_batch(manifest, meta["data_config"], 1, split="train") if manifest else torch.zeros(size)
    table, what, runtime = profiler.table(artifact, meta, example, warmup, runs)
    table["runtime"] = runtime  # the latency rows name theirs too: a .pte may be profiled by a newer runtime
    with fileio.atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    title = f"{artifact}\nper-operator time ({what}): batch 1, threads: {threads}, mean of {runs} runs"
    with fileio.atomic_path(out_png) as tmp, open(tmp, "wb") as f:
        bar_chart(table, title, f)


def _run_with_etdump(pte: str, etdump: str, threads: int, warmup: int, runs: int, inputs: str) -> None:
    """Runner (in the tracer's Python): execute the program with ETDump on, write the dump if the
    runtime recorded one, print the ExecuTorch version. Needs torch and executorch only."""
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime
    from executorch.version import __version__

    torch.set_num_threads(threads)
    if portable_lib._threadpool_get_thread_count() != threads:  # as export.load does: XNNPACK's pool
        portable_lib._unsafe_reset_threadpool(threads)
    program = Runtime.get().load_program(pte, enable_etdump=True, debug_buffer_size=0)
    method = program.load_method("forward")
    example = torch.load(inputs, weights_only=True)["x"]
    if example.numel() == 0:
        example = torch.zeros(*method.metadata.input_tensor_meta(0).sizes())
    for _ in range(warmup + runs):
        method.execute([example])
    program.write_etdump_result_to_file(etdump, os.devnull)  # writes nothing if no tracer was built in
    print(json.dumps({"executorch": __version__}))


if __name__ == "__main__":
    pte, etdump, threads, warmup, runs, inputs = sys.argv[1:7]
    _run_with_etdump(pte, etdump, int(threads), int(warmup), int(runs), inputs)
