"""Count folder listings under a tree, in every Python process of a run (bench/data_scan.py, tests).

Put this folder on PYTHONPATH and set PQV_AUDIT_ROOT (the tree) and PQV_AUDIT_LOG (a file): each
os.scandir / os.listdir of a folder under the root appends "<pid> <program:first argument> <folder>" to the log.
os.walk, glob and pathlib list folders through these two, so every listing is seen."""

import os
import sys

_root = os.environ.get("PQV_AUDIT_ROOT")
_log = os.environ.get("PQV_AUDIT_LOG")

if _root and _log:
    _root = os.path.realpath(_root)

    def _hook(event, args):
        if event not in ("os.scandir", "os.listdir") or not args:
            return
        path = args[0]
        if isinstance(path, int) or path is None:
            return
        path = os.path.realpath(os.fsdecode(path))
        if path == _root or path.startswith(_root + os.sep):
            # "pqv:data" for `python -m pqv data ...`, "snakemake:--snakefile" for Snakemake itself
            program = (
                os.path.basename(os.path.dirname(sys.argv[0]))
                if sys.argv[0].endswith("__main__.py")
                else os.path.basename(sys.argv[0])
            )
            command = [a for a in sys.argv[1:] if a != "--log-usage"]  # the workflow's flag, not a stage
            who = f"{program}:{command[0] if command else ''}"
            with open(_log, "a") as f:
                f.write(f"{os.getpid()}\t{who}\t{path}\n")

    sys.addaudithook(_hook)
