"""The layers of pqv (docs/architecture.md): the CLI over the stages over what they share over the
plan; the plan, which Snakemake imports, loads no heavy package, not even while it checks a config;
no import cycles (the contracts under [tool.importlinter] in pyproject.toml)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Every module of the plan (what the Snakefile and workflow/rules/common.smk import)
PLANNING = sorted(f"pqv.plan.{p.stem}" for p in (ROOT / "pqv" / "plan").glob("*.py") if p.stem != "__init__")
HEAVY = ["torch", "timm", "torch_pruning", "executorch", "onnxruntime", "PIL"]


def test_the_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run(
        [str(lint_imports), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_planning_loads_none_of_the_heavy_packages(tmp_path):
    """What importing the plan and checking the shipped configs loads, with a cold timm cache (the
    config check then asks timm, in a child process): none of the heavy packages."""
    site = tmp_path / "site.yaml"
    site.write_text(f"dataset: {{root: {tmp_path}}}\n")  # ImageFolder configs name no folder of their own
    code = (
        "import json, sys\n"
        f"for name in {PLANNING!r}:\n"
        "    __import__(name)\n"
        "from pqv.plan import config\n"
        "for name in ('config', 'paper', 'cifar10', 'deit_b'):\n"
        f"    config.check_files(['config/' + name + '.yaml', {str(site)!r}])\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PQV_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == []
