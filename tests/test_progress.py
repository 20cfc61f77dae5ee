"""Long loops report progress with rate and ETA, one line per update in a job's log."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import manifest_file


def test_finetune_steps_are_counted_in_the_log(saved_tiny, tmp_path):
    out = tmp_path / "finetuned.safetensors"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pqv",
            "finetune",
            "--model",
            str(saved_tiny),
            "--out",
            str(out),
            "--data",
            manifest_file(),
            "--hparams",
            json.dumps({"epochs": 2, "batch_size": 128, "lr": 1e-4}),
            "--metrics",
            str(tmp_path / "m.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("finetune")]
    steps = 2 * (1437 // 128)  # 1,437 training digits, the last incomplete batch dropped
    assert lines and "\r" not in result.stderr  # one line per update, not carriage-return redraws
    assert f"{steps}/{steps}" in lines[-1] and ("step/s" in lines[-1] or "s/step" in lines[-1])  # rate
    assert "epoch=2/2" in lines[-1] and "loss=" in lines[-1]
