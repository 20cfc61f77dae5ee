"""Each stage's effective defaults and version, snapshotted in tests/data/stage_defaults.json.

A job's params (pqv.plan.reruns.settings) leave out every key at its default, and its command fills the
defaults in from pqv/plan/config.py: so a default changed in code changes what the job makes but not its
params, and reruns nothing unless the stage's version (pqv/plan/reruns.py VERSIONS) is bumped with it.
The snapshot holds, per stage, its version, the default of every key the stage reads (from the
`setting(..., reads=...)` declaration) and the module-level constants its code makes its output
from (CONSTANTS below); tests/test_reruns.py compares it with the code and fails until a changed
stage has a bumped version and a regenerated snapshot.

python scripts/stage_defaults.py          rewrite tests/data/stage_defaults.json
python scripts/stage_defaults.py --check  exit 1 with what changed and what to do (tests/test_reruns.py)
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tests" / "data" / "stage_defaults.json"
COMMAND = "python scripts/stage_defaults.py"

# Module-level constants a stage's output is made from (module.NAME), beside its settings. (The data
# jobs' own, pqv.plan.manifest.FORMAT and IMAGE_EXTENSIONS, are not here: a manifest of another layout is
# rebuilt and another listing changes the split's stamp, so they rerun what they change by themselves.)
CONSTANTS = {
    "quantize": [
        "pqv.common.datasets.CALIBRATION_SEED",
        "pqv.stages.quantize.INT4_GROUP",
        "pqv.stages.quantize.PROGRAM_BATCH",
        "pqv.common.ort.OPSET",
    ],
    "export": ["pqv.common.datasets.CALIBRATION_SEED", "pqv.stages.export.COMPACT_STORAGE"],
    "search_round": ["pqv.plan.search.DIGITS"],
}


def _json(value):
    """A default as JSON: a required key has none."""
    from pydantic_core import PydanticUndefined

    if value is PydanticUndefined:
        return "<required>"
    return json.loads(json.dumps(value, default=repr))


def _constant(dotted: str):
    module, _, name = dotted.rpartition(".")
    return _json(getattr(importlib.import_module(module), name))


def current() -> dict:
    """{stage: {version, defaults: {key: default}, constants: {module.NAME: value}}} of the code here."""
    sys.path.insert(0, str(REPO))
    from pqv.plan import reruns

    out = {}
    for stage in reruns.STAGES:
        read = {key.name: _json(key.default) for key in reruns.keys() if any(s == stage for s, _ in key.reads)}
        out[stage] = {
            "version": reruns.VERSIONS[stage],
            "defaults": read,
            "constants": {name: _constant(name) for name in CONSTANTS.get(stage, [])},
        }
    return out


def _changes(old: dict, new: dict) -> list[str]:
    out = []
    for part in ("defaults", "constants"):
        before, after = old.get(part, {}), new.get(part, {})
        for name in sorted(set(before) | set(after)):
            if before.get(name, "<absent>") != after.get(name, "<absent>"):
                out.append(f"{name}: {json.dumps(before.get(name, '<absent>'))} -> {json.dumps(after.get(name, '<absent>'))}")
    return out


def problems(snapshot: dict, now: dict) -> list[str]:
    """What differs between the snapshot and the code, each with its fix; [] when current."""
    out = []
    for stage in sorted(set(snapshot) | set(now)):
        old, new = snapshot.get(stage), now.get(stage)
        if old is None or new is None:
            out.append(f"stage {stage} is {'new' if old is None else 'gone'}: run `{COMMAND}` to update the snapshot")
            continue
        changes = _changes(old, new)
        if changes and new["version"] == old["version"]:
            out.append(
                f"stage {stage}'s defaults changed ({'; '.join(changes)}), which reruns nothing by itself: bump "
                f"its version in pqv/plan/reruns.py VERSIONS (now {new['version']}) and run `{COMMAND}` to update "
                f"the snapshot"
            )
        elif changes or new["version"] != old["version"]:
            out.append(
                f"stage {stage}'s version is {new['version']}, the snapshot's {old['version']}"
                + (f" ({'; '.join(changes)})" if changes else "")
                + f": run `{COMMAND}` to update the snapshot"
            )
    return out


def main(argv: list[str]) -> int:
    now = current()
    if "--check" in argv:
        found = problems(json.loads(SNAPSHOT.read_text()) if SNAPSHOT.exists() else {}, now)
        for line in found:
            print(line, file=sys.stderr)
        return 1 if found else 0
    SNAPSHOT.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
