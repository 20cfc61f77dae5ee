"""The CLI contract: a user error is one line naming problem and fix, exit 2, and no file left."""

import subprocess
import sys

import pytest

from .conftest import job_environment, manifest_file

pytestmark = pytest.mark.usefixtures("warm_jobs")  # their jobs fork from a warm-start server (tests/conftest.py)


def pqv(*args):
    return subprocess.run([sys.executable, "-m", "pqv", *args], capture_output=True, text=True, env=job_environment())


@pytest.mark.parametrize(
    "args, message",
    [
        (["prune", "--model", "{saved}", "--out", "{out}", "--importance", "tayler", "--ratio", "0.5"], "unknown importance 'tayler'"),
        (["prune", "--model", "{saved}", "--out", "{out}", "--importance", "l2", "--ratio", "1.2"], "outside [0, 1)"),
        (["prune", "--model", "{missing}", "--out", "{out}", "--importance", "l2", "--ratio", "0.5"], "missing model file"),
        (
            ["quantize", "--model", "{saved}", "--out", "{out}", "--precision", "int8_dynamic", "--engine", "tpu"],
            "unknown engine 'tpu'",
        ),
        (["quantize", "--model", "{corrupt}", "--out", "{out}", "--precision", "fp32", "--engine", "none"], "corrupt model file"),
    ],
)
def test_user_errors_are_one_line_with_a_fix_and_leave_no_file(saved_tiny, tmp_path, args, message):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 32)
    out = tmp_path / "out" / "artifact.ts"
    paths = {"saved": saved_tiny, "out": out, "missing": tmp_path / "nope.safetensors", "corrupt": corrupt}
    result = pqv(*[a.format(**paths) for a in args])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "(fix: " in lines[0]
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


@pytest.mark.parametrize(
    "stage, option, names",
    [
        ("prune", "--importance", "IMPORTANCES"),
        ("prune", "--scope", "SCOPES"),
        ("prune", "--heads", "HEAD_MODES"),
        ("quantize", "--precision", "PRECISIONS"),
        ("quantize", "--engine", "ENGINES"),
        ("export", "--format", "FORMATS"),
    ],
)
def test_help_lists_the_valid_values_of_every_choice_from_the_registries(stage, option, names):
    from pqv.plan import registry as R

    registry = {
        "IMPORTANCES": R.IMPORTANCES,
        "SCOPES": R.SCOPES,
        "HEAD_MODES": R.HEAD_MODES,
        "PRECISIONS": R.PRECISIONS,
        "ENGINES": (R.NO_ENGINE, *R.ENGINES),
        "FORMATS": R.FORMATS,
    }[names]
    result = pqv(stage, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert f"{option} {option[2:].upper()} one of: {', '.join(registry)}" in text


def test_a_command_line_mistake_is_one_line_too(tmp_path):
    result = pqv("prune", "--model", str(tmp_path / "m.safetensors"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "pqv prune: error: the following arguments are required: --out, --importance, --ratio (fix: see `pqv prune --help`)"
    ]


@pytest.mark.parametrize(
    "hparams, message",
    [
        ('{"opt": "adamww"}', "finetune.opt: unknown timm optimizer 'adamww' (did you mean 'adamw'?)"),
        ('{"sched": "cosin"}', "finetune.sched is 'cosin', not a valid value (did you mean 'cosine'?)"),
        ('{"mixup": 0.8, "batch_size": 31}', "finetune: mixup/cutmix need an even batch_size, got 31"),
    ],
)
def test_finetune_settings_timm_would_reject_are_one_line_before_loading(saved_tiny, tmp_path, hparams, message):
    out = tmp_path / "out" / "finetuned.safetensors"
    result = pqv(
        "finetune",
        "--model",
        str(saved_tiny),
        "--out",
        str(out),
        "--data",
        manifest_file(),
        "--hparams",
        hparams,
        "--metrics",
        str(tmp_path / "out" / "m.csv"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr
    assert not out.parent.exists()
