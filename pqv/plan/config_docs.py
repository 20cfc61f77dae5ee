"""Files derived from the config's description (pqv.plan.config): its JSON schema
(workflow/schemas/config.schema.json, for editors) and its reference (docs/config.md).

python -m pqv.plan.config_docs (or python -m pqv.plan.config) rewrites both; tests/test_config.py checks
they are current.
"""

from __future__ import annotations

import json
import sys
import typing
from typing import Annotated, Literal

from pydantic import BaseModel

from .config import ROOT, Config, check_files, reported

SCHEMA_FILE = ROOT / "workflow" / "schemas" / "config.schema.json"
REFERENCE_FILE = ROOT / "docs" / "config.md"


def schema() -> dict:
    return Config.model_json_schema()


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:  # a constrained item: its type and its bounds
        bounds = (
            [
                f"{BOUND_SIGNS[type(m).__name__]} {getattr(m, type(m).__name__.lower())}"
                for m in args[1].metadata
                if type(m).__name__ in BOUND_SIGNS
            ]
            if hasattr(args[1], "metadata")
            else []
        )
        return _type_name(args[0]) + (f" ({', '.join(bounds)})" if bounds else "")
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (list, list):
        return f"list of {_type_name(args[0])}"
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


BOUND_SIGNS = {"Ge": "≥", "Gt": ">", "Le": "≤", "Lt": "<"}


def reference() -> str:
    """docs/config.md: every key with its type, default and meaning, from the models."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `pqv/plan/config.py` by `python -m pqv.plan.config` (tests/test_config.py checks it is current).",
        "A config file lists only what it changes; the embedded default is `config/config.yaml`.",
        "",
    ]

    def section(model: type[BaseModel], path: str) -> None:
        title = path or "top level"
        lines.extend([f"## `{title}`", ""])
        doc = " ".join((model.__doc__ or "").split())
        if doc and model is not Config:
            lines.extend([doc, ""])
        lines.extend(["| key | type | default | meaning |", "|---|---|---|---|"])
        nested = []
        for name, field in model.model_fields.items():
            key = f"{path}.{name}" if path else name
            annotation = field.annotation
            inner = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
            sub = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else (inner[0] if inner else None)
            default_value = (
                "required"
                if field.is_required()
                else json.dumps(field.get_default(call_default_factory=True), default=lambda o: o.model_dump())
            )
            if sub is not None:
                nested.append((sub, key + ("[]" if typing.get_origin(annotation) is list else "")))
                default_value = "see below" if not field.is_required() else "required"
            bounds = ", ".join(
                f"{BOUND_SIGNS[type(m).__name__]} {getattr(m, type(m).__name__.lower())}"
                for m in field.metadata
                if type(m).__name__ in BOUND_SIGNS
            )
            meaning = " ".join((field.description or "").split()).replace("|", "\\|")
            lines.append(f"| `{key}` | {_type_name(annotation)}{f' ({bounds})' if bounds else ''} | `{default_value}` | {meaning} |")
        lines.append("")
        for sub, key in nested:
            section(sub, key)

    section(Config, "")
    return "\n".join(lines).rstrip() + "\n"


def write_derived() -> None:
    SCHEMA_FILE.write_text(json.dumps(schema(), indent=2) + "\n")
    REFERENCE_FILE.write_text(reference())


def main(argv: list[str]) -> None:
    if argv[:1] == ["check"]:
        from . import manifest as manifests

        with reported():
            config = check_files(argv[1:])
            manifests.check_folders(config["dataset"])  # what a run (not a dry run) stops on before its first job
        print(f"pqv config: {' '.join(argv[1:]) or 'the default'} is valid")
    else:
        write_derived()
        print(f"wrote {SCHEMA_FILE.relative_to(ROOT)} and {REFERENCE_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
