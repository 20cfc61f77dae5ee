"""The config's mistakes in words: one pydantic error as one line naming the key, what is wrong
and the fix, with the closest valid key or value for a typo (pqv.plan.config raises them)."""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any

from pydantic import BaseModel

from .errors import PQVError


def _key(loc, prefix: str = "") -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the config"


def _closest(word, choices) -> str | None:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return match[0] if match else None


def _close(word, choices) -> str:
    """' (did you mean 'x'?)' for the closest valid choice, or nothing."""
    match = _closest(word, choices)
    return f" (did you mean '{match}'?)" if match else ""


def _section_at(loc, root: type[BaseModel] | None = None) -> type[BaseModel] | None:
    """The model a location's last key belongs to (for the keys it knows)."""
    from .config import Config

    node: Any = root or Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        annotation = node.model_fields[part].annotation
        args = [a for a in (typing.get_args(annotation) or (annotation,)) if isinstance(a, type)]
        inner = [a for a in args if issubclass(a, BaseModel)] or [
            a for arg in typing.get_args(annotation) for a in typing.get_args(arg) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not inner:
            return None
        node = inner[0]
    return node


BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"), "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def explain(error: dict, prefix: str = "") -> PQVError:
    """One pydantic error as one line: the key, what is wrong, the fix."""
    loc, kind = error["loc"], error["type"]
    where = _key(loc, prefix)
    if kind == "extra_forbidden":
        from .config import Finetune

        section = _section_at(loc, Finetune if prefix else None)
        known = list(section.model_fields) if section else []
        key = str(loc[-1])
        match = _closest(key, known)
        parent = _key(loc[:-1], prefix)
        fix = (
            f"rename it to '{match}'"
            if match
            else f"remove it; {parent if loc[:-1] or prefix else 'top-level'} keys are {', '.join(known)}"
        )
        return PQVError(f"unknown key '{where}'{_close(key, known)}", fix)
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        return PQVError(
            f"{where} is '{error['input']}', not a valid value{_close(error['input'], choices)}", f"use one of {', '.join(choices)}"
        )
    if kind == "missing":
        return PQVError(f"{where} is required", "add it (see docs/config.md)")
    if kind in BOUNDS:
        sign, name = BOUNDS[kind]
        bound = error["ctx"][name]
        return PQVError(f"{where}: {error['input']} is not {sign} {bound}", f"use a value {sign} {bound}")
    if kind == "too_short":
        return PQVError(
            f"{where}: needs at least {error['ctx']['min_length']} item(s)", f"give a list of at least {error['ctx']['min_length']}"
        )
    if kind == "string_pattern_mismatch":
        section = _section_at(loc)
        field = section.model_fields.get(str(loc[-1])) if section else None
        return PQVError(
            f"{where}: '{error['input']}' is not a valid value",
            f"{where}: {field.description}" if field and field.description else "see docs/config.md",
        )
    if kind == "model_type":  # a section given as something else (a list, a number)
        return PQVError(
            f"{where}: should be a mapping of keys (got {error['input']!r})",
            f"write it as `{loc[-1]}: {{key: value, ...}}`; its keys are in docs/config.md",
        )
    wanted = (
        kind.split("_")[0]
        .replace("int", "an integer")
        .replace("float", "a number")
        .replace("bool", "true or false")
        .replace("string", "a string")
        .replace("list", "a list")
        .replace("dict", "a mapping")
    )
    return PQVError(f"{where}: {error['msg']} (got {error['input']!r})", f"use {wanted}")


def unknown_timm_model(name: str, known, where: str = "") -> PQVError:
    """The one-line error for a timm name that is not a model, with the closest names."""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return PQVError(
        f"{where}unknown timm model '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
        f"use {' or '.join(close)}" if close else "use a name from timm.list_models(), e.g. deit_tiny_patch16_224",
    )
