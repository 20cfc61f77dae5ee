"""What PQV reads from Snakemake, in one place: the facts of an invocation that the plan needs, and
whether Snakemake keeps a record of a file. The Snakefile and workflow/rules/*.smk hand this module
the `workflow` object and touch none of its attributes themselves; the rest of pqv.plan works on
the plain facts (Facts), so a Snakemake release that moves one of them is a change here and a
failing tests/test_snakemake_api.py, not a traceback in a rule file.

Checked against Snakemake 9.27.1, the version pyproject.toml pins (>=9.27,<9.28):
tests/test_snakemake_api.py builds its real settings objects and runs it on a tiny Snakefile. Where
each fact comes from (settings fields and properties, none private, though a Snakefile's `workflow`
object is not documented API):
- cores: `ResourceSettings.cores` (--cores; a local run's --jobs; 1 in a dry run given neither),
  the value Workflow puts in `global_resources["_cores"]` when it reads the Snakefile
- nodes: `ResourceSettings.nodes` (--jobs of a run whose executor is not local; None otherwise)
- remote: `Workflow.remote_exec` (this process runs jobs a cluster executor started: ExecMode.REMOTE)
- mem_mb: `ResourceSettings.resources` (--resources), as `Resources.from_mapping` reads it
- default_resources: `ResourceSettings.default_resources` (--default-resources: a Resources whose
  values keep the text given in `Resource.raw`)
- set_resources: `ResourceSettings.overwrite_resources` (--set-resources: {rule: Resources}; the
  private `_parsed_overwrite_resources` the rule files read before is the same, parsed)
- a file's record: `Workflow.persistence.metadata(IOFile(path))` (None: no record; the persistence
  is None before Snakemake sets it up, as in --lint)
Read in Snakemake's sources, the same holds from 9.17.0 (where Resource/Resources and the
persistence package appeared; before it default resources were a DefaultResources object and
--set-resources plain mappings) to 9.25.2; widening the pin means running those tests there.

Torch-free; Snakemake is imported only inside the functions that need its classes.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Facts:
    """What PQV plans with from one Snakemake invocation."""

    cores: int | None = None  # --cores (None: not given, as in a cluster run with --jobs alone)
    nodes: int | None = None  # --jobs of a cluster run (Snakemake turns a local run's --jobs into --cores)
    remote: bool = False  # a job process that a cluster executor started
    mem_mb: int | str | None = None  # --resources mem_mb=N
    # site settings given as default resources (profile or --default-resources), as text: '"--qos=high"' -> --qos=high
    default_resources: Mapping[str, str] = field(default_factory=dict)
    # --set-resources RULE:NAME=VALUE: an int where Snakemake parsed one (runtime=5h -> 300), else the expression's text
    set_resources: Mapping[str, Mapping[str, int | str]] = field(default_factory=dict)

    @property
    def on_cluster(self) -> bool:
        """A cluster run: one given --jobs without --cores (the executor is unknown while the
        Snakefile is read: workflow.local_exec is always True then), or a job process it started."""
        return self.remote or self.nodes is not None


def _value(resource: Any) -> Any:
    """A Resource's value (None: unset, or computed per job); a plain value as it is."""
    if resource is None or (hasattr(resource, "is_evaluable") and resource.is_evaluable()):
        return None
    return getattr(resource, "value", resource)


def _raw(resource: Any) -> Any:
    """What was given for a resource: the text of an expression, else its value."""
    return getattr(resource, "raw", resource)


def _text(raw: Any) -> str | None:
    """A default resource given as text, unquoted (a default resource is an expression: '"--qos=high"')."""
    if not isinstance(raw, str):
        return None
    try:
        return str(ast.literal_eval(raw)).strip()
    except (ValueError, SyntaxError):
        return raw.strip()


def _resources(mapping: Any):
    """A Resources of a settings field (Snakemake's CLI gives one; its Python API may give a mapping)."""
    from snakemake.resources import Resources

    return Resources.from_mapping(mapping if mapping is not None else {})


def facts(workflow: Any) -> Facts:
    """The facts of the invocation `workflow` (the Snakefile's global) belongs to."""
    settings = workflow.resource_settings
    defaults = _resources(settings.default_resources)
    return Facts(
        cores=settings.cores,
        nodes=settings.nodes,
        remote=bool(workflow.remote_exec),
        mem_mb=_value(_resources(settings.resources).get("mem_mb")),
        default_resources={name: text for name, value in defaults.items() if (text := _text(_raw(value))) is not None},
        set_resources={
            rule: {name: _raw(value) for name, value in _resources(mapping).items()}
            for rule, mapping in (settings.overwrite_resources or {}).items()
        },
    )


def keeps_records(workflow: Any) -> bool:
    """Whether Snakemake keeps records of the files jobs made in this invocation (not in --lint)."""
    return getattr(workflow, "persistence", None) is not None


def has_record(workflow: Any, path: str) -> bool:
    """Whether Snakemake has a record of the job that made `path` (its metadata): a file a run wrote
    and was stopped before recording stays without one, and Snakemake takes it as it is."""
    from snakemake.io import IOFile

    return workflow.persistence.metadata(IOFile(path)) is not None
