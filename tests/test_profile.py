"""The profile stage: a per-operator table for each format, measured in the artifact's own runtime.

.pte files are timed by ExecuTorch's event tracer (ETDump). The project's executorch 1.3.1 has no
tracer, so those tests need the side environment of envs/etdump.sh (executorch 1.5.1) and are
skipped, with the command that makes it, where it is missing.
"""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pqv.plan import config as pqv_config
from pqv.plan import registry
from pqv.stages import export, quantize
from pqv.stages import profile as profiling

from .conftest import DIGITS

# the tiny ViT of conftest: 2 blocks of qkv, proj, fc1, fc2, then the head
LINEARS = 2 * 4 + 1
# pqv/common/layers.py's attention twin: q @ k^T and attn @ v as 3-D batched matmuls in every block
ATTENTION_MATMULS = 2 * 2
TRACER = Path(pqv_config.tracer_python() or "/no-tracer").exists()
needs_tracer = pytest.mark.skipif(not TRACER, reason="no ExecuTorch with its event tracer: run `bash envs/etdump.sh`")


def _artifact(saved, tmp_path, precision, engine, fmt):
    program = tmp_path / f"{precision}-{engine}.{registry.ir_of(fmt)}"
    quantize.run(str(saved), str(program), precision, engine, DIGITS, calibration_images=32)
    out = tmp_path / f"{precision}-{engine}.{fmt}"
    export.run(str(program), str(saved), str(out), fmt, DIGITS)
    return out


@pytest.fixture(scope="module")
def pte(tiny_file):
    return tiny_file("int8_dynamic", "xnnpack", "pte")


def _profile(artifact, tmp_path, env=None, runs=5):
    csv, png = tmp_path / "p.csv", tmp_path / "p.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pqv.cli",
            "profile",
            "--artifact",
            str(artifact),
            "--out-csv",
            str(csv),
            "--out-png",
            str(png),
            "--threads",
            "1",
            "--warmup",
            "2",
            "--runs",
            str(runs),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return done, csv, png


def test_ptl_profile_counts_the_quantized_linear_calls(saved_tiny, tmp_path):
    ptl = _artifact(saved_tiny, tmp_path, "int8_dynamic", "x86", "ptl")
    done, csv, png = _profile(ptl, tmp_path)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(csv)
    assert list(table.columns) == profiling.COLUMNS + ["runtime"]
    assert set(table["runtime"]) == {f"torch lite interpreter {torch.__version__}"}  # the latency rows name theirs too
    linear = table[table["operator"] == "quantized::linear_dynamic"]
    assert linear["calls"].tolist() == [LINEARS]
    assert (linear["self_cpu_ms"] > 0).all()
    assert table["self_cpu_pct"].sum() == pytest.approx(100, abs=0.1)
    assert png.stat().st_size > 0


@needs_tracer
def test_pte_profile_splits_the_program_by_operator(pte, tmp_path):
    done, csv, png = _profile(pte, tmp_path)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(csv).set_index("operator")
    assert list(table.reset_index().columns) == profiling.COLUMNS + ["runtime"]
    assert table["runtime"].iloc[0].startswith("executorch ")
    calls = table["calls"].to_dict()
    # XNNPACK's own operators inside the delegate: one int8 GEMM per Linear layer, the attention
    # matmuls in float
    assert calls["delegate: Fully Connected (NC, QDU8, F32, QC8W) GEMM"] == LINEARS
    assert calls["delegate: Batch Matrix Multiply (NC, F32) GEMM"] == ATTENTION_MATMULS
    # the program is two delegated graphs (blocks; head) with the class token's selection between
    assert calls["delegate entry (DELEGATE_CALL minus its timed operators)"] == 2
    portable = table[table.index.str.startswith("native_call_")]
    assert len(portable) > 0 and (portable["self_cpu_ms"] > 0).all()
    assert (table["self_cpu_ms"] >= 0).all() and table["self_cpu_ms"].sum() > 0
    assert table["self_cpu_pct"].sum() == pytest.approx(100, abs=0.1)
    assert png.stat().st_size > 0


@needs_tracer
def test_etdump_rows_add_up_to_the_whole_program(pte, tmp_path):
    etdump = str(tmp_path / "p.etdp")
    version = profiling.record_etdump(str(pte), etdump, threads=1, warmup=1, runs=3)
    assert version.startswith("1.5")
    table = profiling.etdump_table(etdump, runs=3)
    from executorch.devtools import Inspector

    whole = [e for b in Inspector(etdump_path=etdump).event_blocks for e in b.events if e.name == profiling.EXECUTE][0]
    per_inference = sum(whole.perf_data.raw[-3:]) / 3
    # remainders are clipped at zero (XNNPACK times whole microseconds), so the sum may exceed it a little
    assert table["self_cpu_ms"].sum() == pytest.approx(per_inference, rel=0.05)


def test_pte_without_the_tracer_is_a_one_line_error_and_writes_nothing(pte, tmp_path):
    # the project's own runtime, executorch 1.3.1, was built without the tracer
    done, csv, png = _profile(pte, tmp_path, env={profiling.ETDUMP_PYTHON_ENV: sys.executable})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("pqv profile: error: the ExecuTorch runtime of") and "envs/etdump.sh" in lines[-1]
    assert not csv.exists() and not png.exists()


def test_missing_tracer_python_is_a_one_line_error(pte, tmp_path):
    done, csv, _ = _profile(pte, tmp_path, env={profiling.ETDUMP_PYTHON_ENV: str(tmp_path / "no-such-python")})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("pqv profile: error: cannot run")
    assert not csv.exists()


def test_every_exported_format_has_a_profiler():
    assert set(profiling.PROFILERS) == set(export.FORMATS)


def test_recorded_etdump_reads_as_the_operator_table():
    """A real ETDump (executorch 1.5.1, the tiny ViT's int8_dynamic xnnpack .pte, 3 runs at 1 thread,
    recorded with profiling.record_etdump): read without the side environment."""
    table = profiling.etdump_table(str(Path(__file__).parent / "data" / "tiny-int8_dynamic-xnnpack.etdp"), runs=3)
    calls = table.set_index("operator")["calls"].to_dict()
    assert calls["delegate: Fully Connected (NC, QDU8, F32, QC8W) GEMM"] == LINEARS
    assert calls["delegate: Batch Matrix Multiply (NC, F32) GEMM"] == ATTENTION_MATMULS
    assert calls["delegate entry (DELEGATE_CALL minus its timed operators)"] == 2
    assert list(table.columns) == profiling.COLUMNS
    assert (table["self_cpu_ms"] >= 0).all() and table["self_cpu_ms"].sum() > 0
    assert table["self_cpu_ms"].is_monotonic_decreasing
