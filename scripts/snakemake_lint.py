"""`snakemake --lint` on the workflow, failing on any lint but those kept on purpose (ALLOWED, each
with its reason). Usage: python scripts/snakemake_lint.py [snakemake options, e.g. --configfile F].

Snakemake 9's `--lint json` prints text, so this reads the text: a header per snakefile or rule
("Lints for snakefile F:", "Lints for rule NAME (line N, F):") and a line per lint ("    * TITLE:").
A lint kept here is kept because the fix would change what Snakemake records for a job (a rule's
params, or its shell text, which Snakemake keeps unexpanded as the rule's code) and so rerun every
job of every existing results folder, or because it goes against a decision of the workflow.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# how a job starts and runs, not what it makes: on the command line, never in params (README, docs/configuring.md)
_HOW = (
    "how a job runs, not what it makes: deliberately a module variable, not a param, so that changing it reruns "
    "nothing; as {params.x} it would also change each rule's recorded code and rerun every job"
)

# lint title (its "in line N" dropped) -> (why it stays, where: rule names or snakefile names, None: anywhere)
ALLOWED: dict[str, tuple[str, set[str] | None]] = {
    "Shell command directly uses variable PQV from outside of the rule": (
        "every rule calls the interpreter Snakemake runs under (common.smk); " + _HOW,
        None,
    ),
    "Shell command directly uses variable FINETUNE_PQV from outside of the rule": (
        "one process, torchrun or finetune.launcher (finetune.smk); " + _HOW,
        {"finetune"},
    ),
    "Shell command directly uses variable DEVICE from outside of the rule": ("the device option; " + _HOW, None),
    "Shell command directly uses variable WORKERS from outside of the rule": ("dataset.workers; " + _HOW, None),
    "Specify a conda environment or container for each rule.": (
        "rules run the interpreter Snakemake runs under (the pinned venv, or envs/pqv.yaml activated around "
        "snakemake on a cluster); a conda: per rule would add a software-stack record to every job and rerun it",
        None,
    ),
    "Mixed rules and functions in same snakefile.": (
        "each rule file keeps the input functions of its own rules beside them; common.smk holds the shared ones",
        {"data.smk", "evaluate.smk", "finetune.smk", "model.smk", "search.smk"},
    ),
    "Environment variable PATH used but not asserted with envvars directive.": (
        "common.smk puts the venv's bin/ (ExecuTorch's flatc) first on every job's PATH: it sets PATH, it does not need it",
        {"common.smk"},
    ),
    "Param outdir is a prefix of input or output file but hardcoded": (
        "plot's outdir, the folder pqv plot writes its figures to; a param derived from output is recorded "
        "differently and would rerun plot in every existing results folder",
        {"plot"},
    ),
}

HEADER = re.compile(r"^Lints for (?:snakefile (?P<file>\S+)|rule (?P<rule>\S+) \(line \d+, \S+\)):$")
LINT = re.compile(r"^    \* (?P<title>.*?)(?: in line \d+)?\.?:$")


def lints(text: str) -> list[tuple[str, str]]:
    """(where, title) of each lint in snakemake --lint's text: where is a rule's name or a snakefile's name."""
    found, where = [], None
    for line in text.splitlines():
        if m := HEADER.match(line):
            where = m["rule"] or Path(m["file"]).name
        elif (m := LINT.match(line)) and where is not None:
            found.append((where, m["title"]))
    return found


def allowed(where: str, title: str) -> bool:
    for kept, (_, places) in ALLOWED.items():
        if kept.rstrip(".") == title.rstrip(".") and (places is None or where in places):
            return True
    return False


def main(argv: list[str]) -> int:
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint", "--cores", "1", *argv], cwd=ROOT, capture_output=True, text=True
    )
    text = run.stdout + run.stderr
    found = lints(text)
    if run.returncode not in (0, 1) or (run.returncode == 1 and not found):
        print(text, file=sys.stderr)
        print(f"snakemake --lint failed (exit status {run.returncode}) without a lint", file=sys.stderr)
        return 2
    new = [(where, title) for where, title in found if not allowed(where, title)]
    for where, title in new:
        print(f"{where}: {title}")
    kept = len(found) - len(new)
    if new:
        print(
            f"snakemake --lint: {len(new)} lint(s) not kept on purpose (fix them, or add them to ALLOWED in "
            f"{Path(__file__).relative_to(ROOT)} with a reason); {kept} kept",
            file=sys.stderr,
        )
        return 1
    print(f"snakemake --lint: no lint but the {kept} kept on purpose (scripts/snakemake_lint.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
