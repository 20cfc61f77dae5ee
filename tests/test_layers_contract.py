"""The layers of pqv (issue 41): the modules Snakemake imports to plan a run are torch-free, and pqv's
modules import each other without cycles (the contracts under [tool.importlinter] in pyproject.toml)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the Snakefile and workflow/rules/common.smk import (and the config's own modules)
PLANNING = ["pqv.config", "pqv.config_docs", "pqv.config_errors", "pqv.data", "pqv.errors", "pqv.plot", "pqv.registry",
            "pqv.reruns", "pqv.resources", "pqv.search", "pqv.sweep"]
HEAVY = ["torch", "timm", "torch_pruning", "executorch", "onnxruntime"]


def test_the_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint_imports), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_planning_loads_none_of_the_heavy_packages():
    """The contract ignores imports inside functions (listed in pyproject.toml); this checks what importing
    the planning modules loads, so that a new top-level import of torch fails here too."""
    code = ("import json, sys\n"
            f"for name in {PLANNING!r}:\n"
            "    __import__(name)\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == []
