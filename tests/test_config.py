"""pqv.plan.config: the config described once; every config mistake is one line naming the key (and the
closest valid one), found before any job runs; the schema, the reference and the defaults the
stages and the CLI use all come from the description."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pqv.plan import config as C
from pqv.plan import config_docs as D
from pqv.plan import registry as T
from pqv.plan import sweep
from pqv.plan.errors import PQVError

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "config/config.yaml").read_text())


def merged(change: dict) -> dict:
    """The default config with `change` merged in one level deep, as snakemake merges a --configfile."""
    config = copy.deepcopy(DEFAULT)
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    return config


def error(change: dict) -> str:
    with pytest.raises(PQVError) as e:
        C.check(merged(change), default=DEFAULT)
    text = str(e.value)
    assert "\n" not in text and "(fix: " in text
    return text


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"prun": {"ratios": [0.1]}}, "unknown key 'prun' (did you mean 'prune'?) (fix: rename it to 'prune')"),
        ({"finetune": {"lrr": 1e-3}}, "unknown key 'finetune.lrr' (did you mean 'lr'?)"),
        (
            {"models": [{"id": "m", "timm_name": "x", "weights": "train", "train": {"epoch": 1}}]},
            "unknown key 'models[0].train.epoch' (did you mean 'epochs'?)",
        ),
        (
            {"quantize": {"precisions": ["int8_dynamc"]}},
            "quantize.precisions[0] is 'int8_dynamc', not a valid value (did you mean 'int8_dynamic'?) "
            "(fix: use one of fp32, fp16, int8_dynamic, int8_static, int4_weight)",
        ),
        ({"prune": {"importances": ["tayler"]}}, "(did you mean 'taylor'?)"),
        ({"prune": {"ratios": [1.5]}}, "prune.ratios[0]: 1.5 is not < 1.0 (fix: use a value < 1.0)"),
        ({"dataset": {"max_train": "many"}}, "dataset.max_train: Input should be a valid integer"),
        ({"models": [{"id": "my model", "timm_name": "vit_tiny_patch16_224"}]}, "models[0].id: 'my model' is not a valid value"),
        ({"models": []}, "models: needs at least 1 item(s)"),
        ({"dataset": {"name": "imagefloder"}}, "(did you mean 'imagefolder'?)"),
        ({"search": [1]}, "search: should be a mapping of keys (got [1]) (fix: write it as `search: {key: value, ...}`"),
    ],
)
def test_typos_and_bad_values_name_the_key_and_the_closest_valid_one(change, expected):
    assert expected in error(change)


def test_a_typo_is_one_line_not_the_schema():
    text = error({"prun": {}})
    assert len(text) < 200 and "properties" not in text


def test_defaults_are_filled_from_the_description():
    config = C.check(
        {"dataset": {"name": "digits"}, "models": [{"id": "m", "timm_name": "vit_tiny_patch16_224", "train": {"epochs": 1}}]}
    )
    assert config["quantize"]["engines"] == ["x86"] and config["prune"]["scope"] == "uniform"
    assert config["finetune"]["opt"] == "adamw" and config["finetune"]["distill"]["alpha"] == 0.5
    assert config["models"][0]["weights"] == "hub" and config["models"][0]["train"]["lr"] == 1.5e-4
    assert config["profile"]["artifacts"] == [] and config["results"] == "results"


@pytest.mark.parametrize("precisions", [["fp32"], ["fp32", "fp16"]])
def test_a_float_only_sweep_is_valid_and_its_engines_make_nothing(precisions):
    config = C.check(merged({"quantize": {"precisions": precisions}, "profile": {"artifacts": []}}))
    assert {(p, e) for p, e, _ in sweep.combinations(config)} == {(p, T.NO_ENGINE) for p in precisions}


def test_the_default_profile_selector_without_a_match_says_nothing(caplog, capsys):
    """(issue 43) The demo's selector, which the user's config never mentions, profiles nothing in a
    sweep without its file, without a warning on every command; a selector the user wrote that
    matches nothing is an error (below)."""
    config = C.check(merged({"quantize": {"precisions": ["fp32"]}}), default=DEFAULT)
    assert not caplog.text and not capsys.readouterr().err
    assert sweep.profiled(config) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            {"quantize": {"precisions": ["fp32", "int8_dynamic"], "engines": ["x86", "xnnpack"]}},
            "quantize.engines lists 'xnnpack' but export.formats ['ptl'] has no format that runs it (fix: add pte",
        ),
        (
            {"quantize": {"precisions": ["int4_weight"]}},
            "quantize.precisions lists 'int4_weight' but export.formats ['ptl'] cannot carry it (fix: add pte",
        ),
        (
            {
                "quantize": {"precisions": ["int8_dynamic"], "engines": ["xnnpack"]},
                "export": {"formats": ["ptl", "pte"]},
                "profile": {"artifacts": []},
            },
            None,
        ),
        (
            {"profile": {"artifacts": [{"importance": "tayler"}]}},
            "profile.artifacts[0] asks for importance 'tayler', which this sweep does not make (did you mean 'taylor'?)",
        ),
        ({"profile": {"artifacts": [{"ratio": 0.3, "precision": "fp32"}]}}, "asks for ratio '0.3'"),
        ({"profile": {"artifacts": [{"importance": "dense", "ratio": 0.5}]}}, "each value exists, not together"),
        ({"prune": {"head_ratio": 0.5}}, "prune.head_ratio 0.5 applies to whole-head pruning only, but prune.heads is 'dims'"),
        ({"finetune": {"mixup": 0.8, "batch_size": 33}}, "finetune: mixup/cutmix need an even batch_size, got 33"),
        (
            {"models": [{"id": "m", "timm_name": "x", "weights": "train", "train": {"cutmix": 1.0, "batch_size": 7}}]},
            "models[0].train: mixup/cutmix need an even batch_size, got 7",
        ),
        ({"finetune": {"sched": "cosin"}}, "finetune.sched is 'cosin', not a valid value (did you mean 'cosine'?)"),
        ({"finetune": {"opt": "adamww"}}, "finetune.opt: unknown timm optimizer 'adamww' (did you mean 'adamw'?)"),
        ({"dataset": {"name": "imagefolder"}}, "dataset.root is required for imagefolder data"),
        ({"search": {"enabled": True, "lo": 0.6, "hi": 0.3}}, "search.lo 0.6 is not below search.hi 0.3 (fix: set lo < hi)"),
        (
            {"search": {"enabled": True, "resolution": 0.95}},
            "search.resolution 0.95 leaves no ratio to probe from search.lo 0 to search.hi 0.9 (fix: use a finer",
        ),
        (
            {"search": {"enabled": True, "artifact": {"precision": "int8_static"}}},
            "search.artifact int8_static x86 .ptl is not an artifact of this sweep",
        ),
    ],
)
def test_mistakes_that_would_surface_after_upstream_jobs_are_config_errors(change, expected):
    if expected is None:
        C.check(merged(change), default=DEFAULT)
    else:
        assert expected in error(change)


def test_timm_accepts_every_listed_scheduler_and_the_default_optimizer():
    import torch
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    optimizer = create_optimizer_v2(torch.nn.Linear(2, 2), opt=C.default(C.HParams, "opt"), lr=0.1)
    for name in T.SCHEDULERS:
        create_scheduler_v2(optimizer, sched=name, num_epochs=10, warmup_epochs=1, updates_per_epoch=10, step_on_epochs=False)
    with pytest.raises(ValueError):
        create_scheduler_v2(optimizer, sched="cosin", num_epochs=2, updates_per_epoch=1)
    C.hparams({"opt": "lookahead_sgd"})  # timm's lookahead_ prefix is valid


def test_the_schema_and_the_reference_are_made_from_the_description():
    """workflow/schemas/config.schema.json and docs/config.md are current (`python -m pqv.plan.config`)."""
    import json

    assert json.loads(D.SCHEMA_FILE.read_text()) == D.schema()
    assert D.REFERENCE_FILE.read_text() == D.reference()


def test_choices_are_the_registries():
    props = D.schema()["$defs"]
    assert props["Prune"]["properties"]["importances"]["items"]["enum"] == list(T.IMPORTANCES)
    assert props["Prune"]["properties"]["scope"]["enum"] == list(T.SCOPES)
    assert props["Prune"]["properties"]["heads"]["enum"] == list(T.HEAD_MODES)
    assert props["Quantize"]["properties"]["precisions"]["items"]["enum"] == list(T.PRECISIONS)
    assert props["Quantize"]["properties"]["engines"]["items"]["enum"] == list(T.ENGINES)
    assert props["Export"]["properties"]["formats"]["items"]["enum"] == list(T.FORMATS)
    assert set(C.Selector.model_fields) == set(sweep.artifacts(C.check(merged({})))[0])


def test_the_stages_take_their_defaults_from_the_description():
    from pqv.stages import finetune

    hp = finetune.resolve_hparams({})
    assert hp["batch_size"] == C.default(C.HParams, "batch_size") == 64 and hp["sched"] == "cosine"
    assert hp["distill"] == C.Distill().model_dump()
    with pytest.raises(PQVError, match="unknown key 'finetune.lrr'"):
        finetune.resolve_hparams({"lrr": 1e-3})


def test_timm_model_names_are_listed_once_per_timm_version(tmp_path, monkeypatch):
    monkeypatch.setenv("PQV_CACHE", str(tmp_path))
    names = C.timm_models()
    assert {"deit_base_patch16_224", "vit_tiny_patch16_224"} <= names
    (cached,) = tmp_path.glob("timm-*-models.json")
    cached.write_text('["only_this_model"]')  # later checks read the file, not timm
    assert C.timm_models() == {"only_this_model"}


def test_an_unknown_timm_model_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PQV_CACHE", str(tmp_path))
    model = {"id": "m", "timm_name": "deit_bse_patch16_224", "weights": "train"}
    with pytest.raises(
        PQVError,
        match=r"models\[0\]\.timm_name: unknown timm model 'deit_bse_patch16_224' "
        r"\(did you mean 'deit_base_patch16_224'\?\)",
    ):
        C.check(merged({"models": [model]}))
    C.check(merged({"models": [{**model, "timm_name": "deit_base_patch16_224.fb_in1k"}]}))  # a pretrained tag


def test_a_typo_in_a_models_kwargs_or_data_config_is_a_config_error(tmp_path, monkeypatch):
    """(issue 43) Found before any job, not as a TypeError traceback in the model job: timm builds
    the model on the meta device once per timm version, model and kwargs (cached)."""
    monkeypatch.setenv("PQV_CACHE", str(tmp_path))
    model = {
        "id": "m",
        "timm_name": "vit_tiny_patch16_224",
        "weights": "train",
        "kwargs": {"img_sise": 32, "patch_size": 4, "in_chans": 1},
    }
    with pytest.raises(
        PQVError,
        match=r"models\[0\]\.kwargs: timm's vit_tiny_patch16_224 takes no keyword 'img_sise' "
        r"\(did you mean 'img_size'\?\) \(fix: use a keyword its model class takes, e\.g\. img_size",
    ):
        C.check(merged({"models": [model]}))
    assert "vit_tiny_patch16_224" in next(tmp_path.glob("timm-*-kwargs.json")).read_text()  # cached
    good = {**model, "kwargs": {"img_size": 32, "patch_size": 4, "in_chans": 1}}
    C.check(merged({"models": [good]}))
    with pytest.raises(PQVError, match=r"models\[0\]\.data_config: unknown key 'meen' \(did you mean 'mean'\?\)"):
        C.check(merged({"models": [{**good, "data_config": {"meen": [0.5]}}]}))
    C.check(merged({"models": [{**good, "data_config": {"mean": [0.5], "interpolation": "bilinear"}}]}))


def test_a_tab_in_a_config_file_names_the_file_and_the_line(tmp_path):
    """Snakemake reads --configfile before PQV runs and names neither file nor line; `python -m
    pqv.plan.config check` does."""
    import subprocess
    import sys

    bad = tmp_path / "my.yaml"
    bad.write_text("dataset:\n  name: digits\nprune:\n\tratios: [0.5]\n")
    done = subprocess.run([sys.executable, "-m", "pqv.plan.config", "check", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"pqv config: error: {bad}:4:1: not valid YAML: found character '\\t' that cannot "
        "start any token (fix: indent with spaces, not tabs)"
    )
    good = tmp_path / "good.yaml"
    good.write_text("prune:\n  ratios: [0.0, 0.5]\n")
    assert C.check_files([str(good)])["prune"]["ratios"] == [0.0, 0.5]
    # (issue 43) what a run would stop on before its first job, the check says too: a missing data folder
    photos = tmp_path / "photos"
    missing = tmp_path / "photos.yaml"
    missing.write_text(f"dataset: {{name: imagefolder, root: {photos}}}\n")
    done = subprocess.run([sys.executable, "-m", "pqv.plan.config", "check", str(missing)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"pqv config: error: data folder {photos / 'train'} does not exist (fix: check dataset.root and "
        "dataset.train_dir in the config)"
    )
    assert C.check_files([str(good)])["prune"]["importances"] == DEFAULT["prune"]["importances"]  # merged, as Snakemake does
