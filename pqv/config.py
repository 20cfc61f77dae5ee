"""Config checks that run before any job: the schema, then what the schema cannot say.

`check(config)` validates a workflow config against workflow/schemas/config.schema.yaml, fills in
the schema's defaults (as snakemake.utils.validate(set_default=True) does) and checks what would
otherwise fail only after upstream jobs ran (a profile selector that matches nothing, an unknown
timm optimizer, Mixup with an odd batch, ...). Every problem is a `PQVError` whose message names
the key, and for a typo the closest valid key or value. The Snakefile calls it inside `reported()`,
which prints the one line `pqv config: error: ...` and exits with status 2 before any job starts.

Torch-free on purpose: the Snakefile imports it on every run (timm is imported only to check an
optimizer name other than the default, and once per timm version to list its model names, which
are then read from `$PQV_CACHE`, default `~/.cache/pqv`).
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import logging
import os
import sys
from pathlib import Path

from . import targets as T
from .errors import PQVError

log = logging.getLogger(__name__)

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA_NAME = "workflow/schemas/config.schema.yaml"

# The names timm 1.0.31's create_scheduler_v2 accepts (its if/elif ladder; 'none' is no schedule),
# less 'plateau', which steps per epoch on a metric while PQV steps per update.
# tests/test_config.py checks every one against timm the way pqv.finetune calls it.
SCHEDULERS = ("cosine", "tanh", "step", "constant", "multistep", "poly", "wsd", "rsqrt", "none")
DEFAULT_OPT = "adamw"  # the schema's default; tests/test_config.py checks timm has it


@contextlib.contextmanager
def reported(stage: str = "config"):
    """Turn a PQVError into the one line `pqv <stage>: error: ...` and exit status 2.

    Snakemake prints a WorkflowError with its file, line and a traceback line; the user needs
    only the problem and the fix.
    """
    try:
        yield
    except PQVError as e:
        print(f"pqv {stage}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def load_yaml(path: str | Path) -> dict:
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def load_schema(path: str | Path | None = None) -> dict:
    return load_yaml(path or SCHEMA)


def check(config: dict, schema_path: str | Path | None = None, default: dict | None = None) -> dict:
    """Validate `config`, fill in the schema's defaults (in place) and run the semantic checks.

    `default` is the embedded default config: its profile selectors are suggestions, so one that
    a user's sweep leaves without a match is a warning, while a selector the user wrote is an error.
    """
    schema = load_schema(schema_path)
    check_schema(config, schema)
    fill_defaults(config, schema)
    check_semantics(config, default or {})
    return config


# ---- the schema ------------------------------------------------------------------------------

def _validator(schema: dict):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema)


def check_schema(config: dict, schema: dict) -> None:
    """Raise the most relevant schema violation as one line naming the key."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator(schema).iter_errors(config))
    if error is not None:
        raise _explain(error, schema)


def fill_defaults(config: dict, schema: dict) -> None:
    """Set every missing key that has a schema default, recursively (jsonschema's FAQ recipe, the
    one snakemake.utils.validate uses)."""
    from jsonschema import validators

    base = type(_validator(schema))
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if "default" in prop:
                    instance.setdefault(name, copy.deepcopy(prop["default"]))
        yield from validate_properties(validator, properties, instance, subschema)

    filler = validators.extend(base, {"properties": set_defaults})
    for error in filler(schema).iter_errors(config):  # defaults are valid: nothing is expected here
        raise _explain(error, schema)


def _key(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the config"


def _closest(word, choices) -> str | None:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return match[0] if match else None


def _close(word, choices) -> str:
    """' (did you mean 'x'?)' for the closest valid choice, or nothing."""
    match = _closest(word, choices)
    return f" (did you mean '{match}'?)" if match else ""


def _resolve(schema: dict, sub: dict) -> dict:
    """Follow a local `$ref` ('#/$defs/...') of a subschema."""
    ref = sub.get("$ref")
    if not ref or not ref.startswith("#/"):
        return {}
    node = schema
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _known_keys(schema: dict, sub: dict) -> list[str]:
    keys = list(sub.get("properties", {}))
    ref = _resolve(schema, sub)
    keys += [k for k in ref.get("properties", {}) if k not in keys]
    return keys


def _explain(error, schema: dict) -> PQVError:
    where = _key(error.absolute_path)
    sub = error.schema
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        known = _known_keys(schema, sub)
        unknown = sorted(k for k in error.instance if k not in known)
        key = unknown[0] if unknown else "?"
        full = f"{where}.{key}" if error.absolute_path else key
        match = _closest(key, known)
        fix = (f"rename it to '{match}'" if match
               else f"remove it; {where if error.absolute_path else 'top-level'} keys are {', '.join(known)}")
        return PQVError(f"unknown key '{full}'{_close(key, known)}", fix)
    if error.validator == "enum":
        choices = error.validator_value
        return PQVError(f"{where} is '{error.instance}', not a valid value{_close(error.instance, choices)}",
                        f"use one of {', '.join(map(str, choices))}")
    if error.validator == "required":
        return PQVError(f"{where}: {error.message}", f"add it (see {SCHEMA_NAME})")
    message = " ".join(error.message.split())
    if len(message) > 200:
        message = message[:200] + "..."
    bound = BOUNDS.get(error.validator)
    if bound:
        fix = f"use a value {bound} {error.validator_value}"
    elif error.validator == "type":
        fix = f"use a {' or '.join(error.validator_value) if isinstance(error.validator_value, list) else error.validator_value}"
    else:
        description = " ".join(str(sub.get("description", "")).split())
        fix = f"{where}: {description}" if description else f"see {where} in {SCHEMA_NAME}"
    return PQVError(f"{where}: {message}", fix)


BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<",
          "minItems": "list of at least", "maxItems": "list of at most"}


# ---- what the schema cannot say --------------------------------------------------------------

def ratio_name(ratio) -> str:
    return f"{float(ratio):g}"


def branches(config: dict) -> list[tuple[str, str]]:
    """(importance, ratio) per pruned branch; the dense model (ratio 0) is one shared branch."""
    ratios = config["prune"]["ratios"]
    out = [(T.NO_ENGINE, "0")] if any(float(r) == 0 for r in ratios) else []
    out += [(imp, ratio_name(r)) for imp in config["prune"]["importances"] for r in ratios if float(r) > 0]
    return out


def combinations(config: dict) -> list[tuple[str, str, str]]:
    q = config["quantize"]
    return T.combinations(q["precisions"], q["engines"], config["export"]["formats"])


def artifacts(config: dict) -> list[dict]:
    """Every final artifact the config asks for, as wildcard dicts (model, importance, ratio,
    precision, engine, format)."""
    return [dict(model=m["id"], importance=imp, ratio=ratio, precision=p, engine=e, format=f)
            for m in config["models"] for imp, ratio in branches(config) for p, e, f in combinations(config)]


def matches(selector: dict, artifact: dict) -> bool:
    """Whether a profile selector picks an artifact (every key given must agree)."""
    return all((ratio_name(v) if k == "ratio" else str(v)) == artifact[k] for k, v in selector.items())


def check_semantics(config: dict, default: dict | None = None) -> None:
    for rule in SEMANTIC_CHECKS:
        rule(config)
    _check_profile(config, default or {})


def _check_dataset(config: dict) -> None:
    if config["dataset"]["name"] == "imagefolder" and not config["dataset"]["root"]:
        raise PQVError("dataset.root is required for imagefolder data",
                       "add a file with `dataset: {root: /path/to/data}` after the config, "
                       "e.g. --configfile config/paper.yaml site.yaml")


def _check_sweep(config: dict) -> None:
    """Each listed precision and engine must produce an artifact in a listed format; an engine
    that only float precisions were configured for has nothing to do and is left alone."""
    q, formats = config["quantize"], config["export"]["formats"]
    made = combinations(config)
    for precision in q["precisions"]:
        if not any(p == precision for p, _, _ in made):
            carriers = [f for f in T.PRECISIONS[precision]["formats"]]
            if any(f in formats for f in carriers):  # its format is listed, its engines are not
                engines = sorted({e for f in carriers if f in formats for e in T.FORMATS[f]["engines"]})
                raise PQVError(f"quantize.precisions lists '{precision}' but no quantize.engines entry runs it "
                               f"in export.formats {formats}", f"add one of {', '.join(engines)} to quantize.engines")
            raise PQVError(f"quantize.precisions lists '{precision}' but export.formats {formats} cannot carry it",
                           f"add {' or '.join(carriers)} to export.formats, or drop '{precision}'")
    quantized = [p for p in q["precisions"] if T.PRECISIONS[p]["quantized"]]
    if not quantized:
        return  # a float-only sweep: engines play no part
    for engine in q["engines"]:
        if any(e == engine for _, e, _ in made):
            continue
        runs_it = [f for f, d in T.FORMATS.items() if engine in d["engines"]]
        takers = [p for p in quantized if any(f in T.PRECISIONS[p]["formats"] for f in runs_it)]
        if not takers:
            raise PQVError(f"quantize.engines lists '{engine}' but no quantized precision in quantize.precisions "
                           f"runs on it", f"drop '{engine}' or add a precision that {'/'.join(runs_it)} files carry")
        raise PQVError(f"quantize.engines lists '{engine}' but export.formats {formats} has no format that runs it",
                       f"add {' or '.join(runs_it)} to export.formats, or drop '{engine}'")


def _check_profile(config: dict, default: dict) -> None:
    """A profile selector that matches nothing would be found only after the sweep ran."""
    made = artifacts(config)
    suggested = (default.get("profile") or {}).get("artifacts") or []
    for i, selector in enumerate(config["profile"]["artifacts"]):
        if any(matches(selector, a) for a in made):
            continue
        if selector in suggested:
            log.warning(f"pqv config: warning: the default profile selector {selector} matches no artifact of "
                        "this sweep, so no operator profile is made (set profile.artifacts to choose one)")
            continue
        for key, value in selector.items():
            wanted = ratio_name(value) if key == "ratio" else str(value)
            present = sorted({a[key] for a in made})
            if wanted not in present:
                raise PQVError(f"profile.artifacts[{i}] asks for {key} '{value}', which this sweep does not make"
                               f"{_close(wanted, present)}", f"use one of {', '.join(present)} or drop the selector")
        raise PQVError(f"profile.artifacts[{i}] {selector} matches no artifact of this sweep "
                       "(each value exists, not together)", "check the combination against quantize and export")


def _check_prune(config: dict) -> None:
    p = config["prune"]
    if p["head_ratio"] is not None and p["heads"] != "whole":
        raise PQVError(f"prune.head_ratio {p['head_ratio']} applies to whole-head pruning only, but prune.heads is "
                       f"'{p['heads']}'", "set prune.heads: whole, or drop prune.head_ratio")


def _training_sections(config: dict):
    yield "finetune", config["finetune"]
    for i, m in enumerate(config["models"]):
        if m.get("weights", "hub") == "train":
            yield f"models[{i}].train", m.get("train") or {}


def check_training(where: str, hp: dict) -> None:
    """Settings a training loop would reject only once it starts: Mixup's even batch, timm's
    optimizer and scheduler names."""
    batch = hp.get("batch_size", 64)
    if (hp.get("mixup", 0) > 0 or hp.get("cutmix", 0) > 0) and batch % 2:
        raise PQVError(f"{where}: mixup/cutmix need an even batch_size, got {batch}",
                       f"set {where}.batch_size to {batch + 1} or {batch - 1}")
    sched = hp.get("sched", "cosine")
    if sched not in SCHEDULERS:
        raise PQVError(f"{where}.sched: unknown timm scheduler '{sched}'{_close(sched, SCHEDULERS)}",
                       f"use one of {', '.join(SCHEDULERS)}")
    opt = hp.get("opt", DEFAULT_OPT)
    if opt != DEFAULT_OPT:
        names = optimizers()
        parts = opt.lower().split("_")  # timm accepts a 'lookahead_' prefix
        if parts[-1] not in names or (len(parts) > 1 and parts[0] != "lookahead") or len(parts) > 2:
            raise PQVError(f"{where}.opt: unknown timm optimizer '{opt}'{_close(opt, names)}",
                           "use a name from timm.optim.list_optimizers(), e.g. adamw, sgd, lamb")


def optimizers() -> list[str]:
    from timm.optim import list_optimizers

    return list_optimizers()


def _check_training(config: dict) -> None:
    for where, hp in _training_sections(config):
        check_training(where, hp)


def timm_models() -> set[str]:
    """timm's model names, listed once per installed timm version and kept in a small file, so a
    config check stays free of the torch import (seconds) on every later run."""
    from importlib.metadata import version

    cache = Path(os.environ.get("PQV_CACHE") or Path.home() / ".cache" / "pqv").expanduser()
    path = cache / f"timm-{version('timm')}-models.txt"
    try:
        return set(path.read_text().split())
    except OSError:
        pass
    import timm

    names = timm.list_models()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.part")
        tmp.write_text("\n".join(names))
        tmp.replace(path)  # atomic: a concurrent run reads the whole list or none
    except OSError:
        pass  # a read-only home: check without the cache
    return set(names)


def unknown_timm_model(name: str, known, where: str = "") -> PQVError:
    """The one-line error for a timm name that is not a model, with the closest names."""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return PQVError(f"{where}unknown timm model '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                    f"use {' or '.join(close)}" if close else "use a name from timm.list_models(), e.g. deit_tiny_patch16_224")


def _check_models(config: dict) -> None:
    """An unknown timm name would fail only in the model job; name it now, with the closest names."""
    seen: dict[str, int] = {}
    for i, m in enumerate(config["models"]):
        if m["id"] in seen:
            raise PQVError(f"models[{i}].id '{m['id']}' is also models[{seen[m['id']]}].id: the second would "
                           "silently replace the first", "give every model its own id")
        seen[m["id"]] = i
    known = timm_models() if config["models"] else set()
    for i, m in enumerate(config["models"]):
        name = m["timm_name"]
        if name.split(".", 1)[0] not in known:  # timm accepts a pretrained tag: name.tag
            raise unknown_timm_model(name, known, f"models[{i}].timm_name: ")


ETDUMP_PYTHON_ENV = "PQV_ETDUMP_PYTHON"
SIDE_ENV_PYTHON = Path(__file__).resolve().parents[1] / "envs" / "etdump" / ".venv" / "bin" / "python"


def tracer_python() -> str | None:
    """A Python whose ExecuTorch runtime has the event tracer (for .pte operator profiles):
    $PQV_ETDUMP_PYTHON, else the side environment of envs/etdump.sh; None when neither exists."""
    given = os.environ.get(ETDUMP_PYTHON_ENV)
    if given:
        return given
    return str(SIDE_ENV_PYTHON) if SIDE_ENV_PYTHON.exists() else None


def _check_profile_runtime(config: dict) -> None:
    """A .pte operator profile needs ExecuTorch's event tracer, which the project's executorch wheel
    lacks: say so before any job, not after the sweep."""
    profiled = [a for a in artifacts(config) if a["format"] == "pte"
                and any(matches(sel, a) for sel in config["profile"]["artifacts"])]
    if profiled and tracer_python() is None:
        raise PQVError("profile.artifacts selects .pte files, whose operator profile needs ExecuTorch's event tracer, "
                       "which this environment's executorch lacks",
                       f"run `bash envs/etdump.sh` once (a side environment with the executorch 1.5.1 runtime), set "
                       f"{ETDUMP_PYTHON_ENV} to a Python that has it, or profile .ptl files")


SEMANTIC_CHECKS = (_check_dataset, _check_sweep, _check_prune, _check_training, _check_models, _check_profile_runtime)
