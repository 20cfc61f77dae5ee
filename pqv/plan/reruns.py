"""What a changed setting reruns: each job's params are exactly the settings its command reads.

Snakemake reruns a job whose params changed. So a rule's params must hold every setting its
command reads, for its branch, and nothing else: a prune job of an L2 branch does not read the
calibration settings, the dense branch no prune setting, a quantize job of a precision that does
not calibrate no calibration setting. Which job reads which key is declared once, beside the key's
type and default in pqv.plan.config (`setting(..., reads="prune:gradient")`); this module walks that
declaration and renders, for one job, the command-line options it gets (`options`), which the
rules pass as their `settings` param and put on the command line. A key without a declaration is
an error here, so a new key cannot be forgotten. `table()` renders the declaration for
docs/configuring.md.

A key that names a file (`models[].weights: /path/w.safetensors`) is read by its content, not its
path: `FILE_KEYS`. In a job's settings its value is the file's sha256 (`file_stamp`, hashed once
per invocation and kept by path, size and modification time), and the path goes on the command line
apart (`files`, not a param): a file replaced under its path reruns the job, the same bytes moved,
copied or touched rerun nothing.

Code changes are not settings: `VERSIONS` holds one number per stage, a rule param too. A change to
a stage that alters what it makes bumps that stage's number, and an upgraded PQV reruns that stage
and what is made from its outputs, nothing else (docs/configuring.md).

Torch-free: the Snakefile imports it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shlex
import typing
from dataclasses import dataclass

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from . import registry, sweep
from .errors import PQVError

# The stages whose jobs read settings (a rule each); `sweep` and `none` are the other two words.
STAGES = (
    "data_train",
    "data_eval",
    "model",
    "prune",
    "finetune",
    "quantize",
    "export",
    "accuracy",
    "latency",
    "profile",
    "search_round",
    "search_report",
)
SWEEP = "sweep"  # the key decides which jobs exist, not what one job makes
NONE = "none"  # how a job runs (threads, workers, device, launcher): changes no result

# A stage's version: bump it when a change to the stage's code changes what it makes. It is a param
# of the stage's rule, so an upgraded PQV reruns that stage and what is made from its outputs.
VERSIONS = {stage: 1 for stage in STAGES}


def _pruned(wc) -> bool:
    return float(wc["ratio"]) > 0


def _model_entry(config: dict, wc) -> dict:
    return next(m for m in config["models"] if m["id"] == wc["model"])


def _drawn(config: dict, split: str) -> bool:
    """Whether a split's images are drawn at random (split_seed): the digits split, or a max_ subset."""
    return config["dataset"]["name"] == "digits" or config["dataset"].get(f"max_{split}") is not None


# Conditions on a job (its wildcards, and the config) under which a stage's job reads a key.
CONDITIONS = {
    "pruned": ("a pruned branch (ratio > 0)", lambda config, wc: _pruned(wc)),
    "gradient": (
        "a pruned branch of an importance that reads calibration batches (" + ", ".join(registry.GRADIENT_IMPORTANCES) + ")",
        lambda config, wc: _pruned(wc) and wc["importance"] in registry.GRADIENT_IMPORTANCES,
    ),
    "seeded": (
        "a pruned branch of an importance with randomness (" + ", ".join(registry.SEEDED_IMPORTANCES) + ")",
        lambda config, wc: _pruned(wc) and wc["importance"] in registry.SEEDED_IMPORTANCES,
    ),
    "calibrated": (
        "a precision calibrated on images (" + ", ".join(p for p, d in registry.PRECISIONS.items() if d["calibrated"]) + ")",
        lambda config, wc: registry.PRECISIONS[wc["precision"]]["calibrated"],
    ),
    "lossy": ("a lossy precision (judged by cosine)", lambda config, wc: registry.PRECISIONS[wc["precision"]]["lossy"]),
    "ptl": (".ptl files", lambda config, wc: wc["format"] == "ptl"),
    "trained": ("a model with weights: train", lambda config, wc: _model_entry(config, wc)["weights"] == "train"),
    "distilling": ("finetune.distill.enabled", lambda config, wc: bool(config["finetune"]["distill"]["enabled"])),
    "imagefolder": ("an imagefolder data set", lambda config, wc: config["dataset"]["name"] == "imagefolder"),
    "drawn_train": ("digits, or a max_train subset", lambda config, wc: _drawn(config, "train")),
    "drawn_eval": ("digits, or a max_eval subset", lambda config, wc: _drawn(config, "eval")),
}

# Keys whose value can name a file a job reads, and the option that gives the job its path: a
# `models[].weights` other than hub or train is a local weights file. What the job reads is the
# file's content, so its setting is the file's sha256 (`file_stamp`: the bytes replaced under the
# same path rerun the job and what is made from it), and the path is not a param (the same bytes at
# another path, or touched, rerun nothing): the job checks the file against the sha256.
FILE_KEYS = {("models", "weights"): ("--weights", lambda value: value not in ("hub", "train"))}


def _names_file(key: Key, value) -> bool:
    return key.path in FILE_KEYS and isinstance(value, str) and FILE_KEYS[key.path][1](value)


# Stages whose command takes a config section as one JSON option (the keys it reads, nested as in the
# config); every other stage takes each key it reads as `--key-name value`.
JSON_OPTIONS = {
    "data_train": {"dataset": "--spec"},
    "data_eval": {"dataset": "--spec"},
    "model": {"models": "--model-cfg"},
    "finetune": {"finetune": "--hparams"},
    "search_round": {"search": "--settings", "prune": "--prune"},
}


@dataclass(frozen=True)
class Key:
    """One leaf key of the config and the jobs that read it."""

    path: tuple[str, ...]  # ("prune", "seed"); a list of sections is one step ("models", "timm_name")
    name: str  # as docs write it: prune.seed, models[].timm_name
    reads: tuple[tuple[str, str | None], ...]  # (stage, condition) pairs; empty for sweep/none
    kind: str  # "read", SWEEP or NONE (a key can be read and decide the sweep: search.artifact)
    sweep: bool
    default: object  # PydanticUndefined for a required key


def _sections(annotation) -> tuple[type[BaseModel] | None, bool]:
    """The section type a field holds (directly, optional, or as a list), and whether it is a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for arg in typing.get_args(annotation):
        inner, _ = _sections(arg)
        if inner is not None:
            return inner, typing.get_origin(annotation) is list
    return None, False


def _parse(words: str, where: str) -> tuple[tuple[tuple[str, str | None], ...], bool, bool]:
    reads, sweep, none = [], False, False
    for word in words.split():
        stage, _, condition = word.partition(":")
        if word == SWEEP:
            sweep = True
        elif word == NONE:
            none = True
        elif stage not in STAGES or (condition and condition not in CONDITIONS):
            raise PQVError(
                f"pqv.plan.config: {where} declares reads '{word}', which names no stage or condition",
                f"use {', '.join(STAGES)}, {SWEEP} or {NONE}, with a condition of {', '.join(CONDITIONS)}",
            )
        else:
            reads.append((stage, condition or None))
    if none and (reads or sweep):
        raise PQVError(f"pqv.plan.config: {where} declares '{NONE}' with other readers", f"declare '{NONE}' alone")
    return tuple(reads), sweep, none


@functools.cache
def keys() -> tuple[Key, ...]:
    """Every leaf key of the config with its readers; a key that declares none is an error. Walked
    once per process (the Snakefile asks for every job's options)."""
    from .config import Config

    out: list[Key] = []

    def walk(model: type[BaseModel], path: tuple[str, ...], names: str, inherited: str | None) -> None:
        for field_name, field in model.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            words = extra.get("reads") or inherited
            section, listed = _sections(field.annotation)
            name = f"{names}.{field_name}" if names else field_name
            if section is not None:
                walk(section, (*path, field_name), name + ("[]" if listed else ""), words)
                continue
            if not words:
                raise PQVError(f"pqv.plan.config: {name} declares no reader", "add reads=... to its setting() (pqv.plan.reruns)")
            reads, sweep, none = _parse(words, name)
            kind = NONE if none else ("read" if reads else SWEEP)
            out.append(Key((*path, field_name), name, reads, kind, sweep, field.get_default(call_default_factory=True)))

    walk(Config, (), "", None)
    return tuple(out)


@functools.cache
def _read_by(stage: str) -> tuple[Key, ...]:
    return tuple(k for k in keys() if any(s == stage for s, _ in k.reads))


def _value(config: dict, key: Key, wc):
    node = config
    for i, part in enumerate(key.path):
        node = node[part]
        if isinstance(node, list) and i + 1 < len(key.path):  # a list of sections: the job's entry
            node = _model_entry(config, wc)
    return node


def launch_keys() -> tuple[str, ...]:
    """The finetune section's keys that its jobs do not read (how a job starts, which branches
    train): a checkpoint made under other values of these is still resumed."""
    return tuple(
        k.path[1]
        for k in keys()
        if k.path[0] == "finetune" and len(k.path) == 2 and not any(stage == "finetune" for stage, _ in k.reads)
    )


def _read(stage: str, config: dict, wc):
    """(key, value) of every key a job of `stage` with wildcards `wc` reads."""
    if stage not in STAGES:
        raise KeyError(stage)
    for key in _read_by(stage):
        conditions = [c for s, c in key.reads if s == stage]
        if any(c is None or CONDITIONS[c][1](config, wc) for c in conditions):
            yield key, _value(config, key, wc)


def settings(stage: str, config: dict, wc, stamps: dict | None = None) -> dict[tuple[str, ...], object]:
    """{key path: value} of every key a job of `stage` with wildcards `wc` reads and that is not at
    its default (the command fills in its defaults from pqv.plan.config): so a key added in a later
    version, at its default, changes no job's params and reruns nothing. A key that names a file
    has the file's `file_stamp` for its value (`stamps`: its cache), not the path (`files`)."""
    return {
        key.path: file_stamp(value, stamps) if _names_file(key, value) else value
        for key, value in _read(stage, config, wc)
        if key.default is PydanticUndefined or value != key.default
    }


def section_read(stage: str, config: dict, wc, section: str) -> dict:
    """A config section as a job of `stage` sees it: the keys it reads with their values, the others
    at their defaults. What a stamp of the job hashes besides its files (pqv.plan.manifest.stamp hashes the
    dataset section), so a key the job does not read (dataset.root of the digits) changes no stamp."""
    read = {key.path[1]: value for key, value in _read(stage, config, wc) if key.path[0] == section}
    return {
        key.path[1]: read.get(key.path[1], key.default)
        for key in keys()
        if key.path[0] == section and len(key.path) == 2 and (key.path[1] in read or key.default is not PydanticUndefined)
    }


def files(stage: str, config: dict, wc) -> dict[str, str]:
    """{option: path} of the files named in the config that a job reads (FILE_KEYS): the rule puts
    them on the command line but not into its params; its settings hold their `file_stamp`."""
    return {FILE_KEYS[key.path][0]: value for key, value in _read(stage, config, wc) if _names_file(key, value)}


def file_stamp(path: str, cache: dict | None = None) -> str:
    """`sha256:<hex>` of a file's bytes: the same for the same content at any path or time, so
    only a changed file reruns what reads it. `cache` ({'file <absolute path>': [size, mtime_ns,
    stamp]}, JSON-safe: the Snakefile shares it with the job processes a cluster starts) keeps a
    file's stamp while its size and modification time stay, so an invocation hashes a file once
    (a 350 MB DeiT-B file: about a second), not again in each job process it starts. A file that
    cannot be read has a stamp that says why: its job then runs and reports the file with its fix."""
    full = os.path.abspath(os.path.expanduser(path))
    key = f"file {full}"
    try:
        st = os.stat(full)
        known = (cache or {}).get(key)
        if known and list(known[:2]) == [st.st_size, st.st_mtime_ns]:
            return known[2]
        with open(full, "rb") as f:
            stamp = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        return f"unreadable: {type(e).__name__}"
    if cache is not None:
        cache[key] = [st.st_size, st.st_mtime_ns, stamp]
    return stamp


def _flag(name: str, value) -> str:
    option = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return option if value else f"--no-{name.replace('_', '-')}"
    return f"{option} {shlex.quote(str(value))}"


def options(stage: str, config: dict, wc, stamps: dict | None = None) -> str:
    """The command-line options that carry a job's settings: the text its rule puts in its params
    (so exactly a change of these reruns it) and on its command line. `stamps`: file_stamp's cache."""
    groups: dict[str, dict] = {option: {} for option in JSON_OPTIONS.get(stage, {}).values()}  # given even if empty
    flags = []
    for path, value in settings(stage, config, wc, stamps).items():
        option = JSON_OPTIONS.get(stage, {}).get(path[0])
        if option is None:
            flags.append(_flag(path[-1], value))
            continue
        node = groups.setdefault(option, {})
        for part in path[1:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    if stage == "quantize" and wc.get("merge"):  # token merging: a wildcard of merged files only, so
        flags.append(f"--merge-r {sweep.merge_r(wc['merge'])}")  # every other job's params stay as they were
    out = [f"{option} {shlex.quote(json.dumps(group, sort_keys=True))}" for option, group in groups.items()]
    return " ".join(out + flags)


def describe(key: Key) -> str:
    """Who reads a key, in words."""
    parts = [f"`{stage}`" + (f" ({CONDITIONS[c][0]})" if c else "") for stage, c in key.reads]
    if key.path in FILE_KEYS:
        parts[-1] += " (a local file: by its content's sha256, not its path)"
    if key.sweep:
        parts.append("which jobs the sweep has")
    return "; ".join(parts) if parts else "nothing (how a job runs)"


def table() -> str:
    """docs/configuring.md's table: every key (keys of one section with the same readers on one
    row) and the jobs that read it."""
    rows: list[tuple[str, list[str], Key]] = []
    for key in keys():
        parent, leaf = key.name.rpartition(".")[0], key.name.rpartition(".")[2]
        last = rows[-1] if rows else None
        if (
            last
            and last[0] == parent
            and (last[2].reads, last[2].sweep, last[2].kind, last[2].path in FILE_KEYS)
            == (key.reads, key.sweep, key.kind, key.path in FILE_KEYS)
        ):
            last[1].append(leaf)
        else:
            rows.append((parent, [leaf], key))
    lines = ["| key | read by | a change reruns |", "|---|---|---|"]
    for parent, leaves, key in rows:
        names = leaves[0] if len(leaves) == 1 else "{" + ", ".join(leaves) + "}"
        if key.kind == NONE:
            reruns = "nothing"
        elif key.reads:
            reruns = "those jobs and what is made from their outputs" + ("; adds or removes jobs" if key.sweep else "")
        else:
            reruns = "only the jobs it adds (the summary, figures and costs list them again)"
        lines.append(f"| `{parent + '.' if parent else ''}{names}` | {describe(key)} | {reruns} |")
    return "\n".join(lines) + "\n"
