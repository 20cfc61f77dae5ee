"""The README and docs/ say only what works: every config snippet is a valid config, every `pqv`
command parses, every snakemake option, profile, config file and script they name exists, and
every `section.key` they mention is a key of the config."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pqv import cli
from pqv.plan import config as C

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DEFAULT = C.load_yaml(REPO / "config/config.yaml")


def blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.S)


def commands(page: Path) -> list[str]:
    """Each command line of the page's bash blocks (continuations joined, comments dropped)."""
    out = []
    for block in blocks(page, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out += [part.strip() for part in line.split("&&")]
    return out


def test_the_readme_is_read_in_five_minutes():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_config_snippets_are_valid_configs(page):
    for block in blocks(page, "yaml"):
        snippet = yaml.safe_load(block)
        if not isinstance(snippet, dict) or not set(snippet) & set(C.Config.model_fields):
            continue  # a profile, not a config
        C.filled(C.merge(DEFAULT, snippet))


@pytest.fixture(scope="module")
def snakemake_options() -> set[str]:
    text = subprocess.run([sys.executable, "-m", "snakemake", "--help"], capture_output=True, text=True).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_name_what_exists(page, snakemake_options):
    for command in commands(page):
        words = shlex.split(command)
        program = Path(words[0]).name
        if program == "pqv":
            try:
                cli.parser().parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{page.name}: `{command}` does not parse")
        if program == "snakemake":
            for option in (w.split("=")[0] for w in words if w.startswith("--")):
                assert option in snakemake_options, f"{page.name}: snakemake has no {option}: `{command}`"
            for i, w in enumerate(words):
                if w == "--profile":
                    assert (REPO / words[i + 1]).is_dir(), f"{page.name}: no profile {words[i + 1]}"
                if w.startswith("config/"):
                    assert (REPO / w).is_file(), f"{page.name}: no config {w}"
        for w in words:
            if re.match(r"^(bench|scripts|envs)/.+\.(py|sh)$", w):
                assert (REPO / w).is_file(), f"{page.name}: no {w}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_config_keys_named_in_the_text_exist(page):
    sections = {name: field.annotation for name, field in C.Config.model_fields.items()}
    for section, key in set(re.findall(r"`([a-z_]+)\.([a-z_]+)", page.read_text())):
        if section not in sections or not isinstance(sections[section], type):
            continue
        try:  # `export.load`, `evaluate.latency`: a function of a stage's module, not a key
            if hasattr(importlib.import_module(f"pqv.stages.{section}"), key):
                continue
        except ImportError:
            pass
        assert key in sections[section].model_fields, f"{page.name}: `{section}.{key}` is not a config key"


def script(path: str):
    """A script of the repository (bench/, scripts/) imported as a module, to render its table again."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_table_is_the_csv_it_names():
    """The README's results table is scripts/summary_table.py's rendering of the run's CSV it cites."""
    summary_table = script("scripts/summary_table.py")
    readme = (REPO / "README.md").read_text()
    csv = re.search(r"`(docs/data/default-summary-[0-9-]+\.csv)`", readme)[1]
    assert "\n".join(summary_table.table(str(REPO / csv))) in readme, f"render it again: python scripts/summary_table.py {csv}"


def test_the_per_host_latency_tables_are_the_csvs_of_the_runs():
    """docs/latency.md's per-host tables are bench/hosts.py's rendering of the CSVs the runs wrote."""
    hosts = script("bench/hosts.py")
    paths = [str(p) for p in sorted((REPO / "docs/data/latency-hosts").glob("*.csv"))]
    page = (REPO / "docs/latency.md").read_text()
    again = "render them again: python bench/hosts.py docs/data/latency-hosts/*.csv"
    assert hosts.render(paths) in page, again
    assert hosts.split(paths) in page, again


def test_the_token_merging_table_is_the_benchs_csv(monkeypatch):
    """docs/latency.md's token-merging table is bench/merge_table.py's rendering of the run's CSV."""
    monkeypatch.chdir(REPO)  # the table names the CSV as the command was given it
    merge_table = script("bench/merge_table.py")
    page = (REPO / "docs/latency.md").read_text()
    csv = re.search(r"`(docs/data/latency-merge-[0-9-]+\.csv)`", page)[1]
    assert "\n".join(merge_table.table(csv)) in page, f"render it again: python bench/merge_table.py {csv}"


def test_the_token_merging_accuracy_tables_are_the_benchs_csv():
    """docs/merging.md's accuracy tables are bench/tome_table.py's rendering of the CSV it names, one per run."""
    tome_table = script("bench/tome_table.py")
    page = (REPO / "docs/merging.md").read_text()
    csv = re.search(r"\(data/(tome_accuracy-[0-9-]+\.csv)\)", page)[1]
    shown = [t for t in tome_table.tables(REPO / "docs/data" / csv) if "\n".join(t) in page]
    again = f"render them again: python bench/tome_table.py docs/data/{csv}"
    assert len(shown) == page.count("\nCommand: `python bench/tome_accuracy.py") > 0, again


def test_the_round_to_comparison_is_the_two_runs_csvs(monkeypatch):
    """docs/cifar10.md's round_to table is scripts/compare_runs.py's rendering of the CSVs it cites."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))  # it imports summary_table.py beside it
    compare_runs = script("scripts/compare_runs.py")
    folder = REPO / "docs/data/cifar10-wide"
    lines = compare_runs.table(
        str(folder / "summary-2026-11-30.csv"), str(folder / "summary-round_to64-2026-11-30.csv"), ("default", "round_to 64")
    )
    assert "\n".join(lines) in (REPO / "docs/cifar10.md").read_text(), "render it again: python scripts/compare_runs.py ..."
    assert len(lines) == 2 + 9  # every artifact both runs made


def test_the_rerun_tables_are_the_declaration_and_the_tests_data():
    """docs/configuring.md's tables of what a change reruns: rendered from pqv/plan/config.py's
    declaration and from tests/data/reruns.yaml, the data tests/test_workflow.py asserts."""
    result = subprocess.run([sys.executable, str(REPO / "scripts/reruns_table.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_search_noise_table_is_the_benchs_csv():
    bench = script("bench/search_noise.py")
    assert bench.table(bench.read(REPO / "docs/data/search-noise.csv")) in (REPO / "docs/search.md").read_text(), (
        "render it again: python bench/search_noise.py"
    )


def test_the_paper_sweeps_cluster_table_is_the_benchs_csv():
    bench = script("bench/node_hours.py")
    csv = REPO / "docs/data/2026-12-03-node-hours/node_hours-24h-gpu.csv"
    assert bench.markdown(csv) in (REPO / "docs/clusters.md").read_text(), "render it again: python bench/node_hours.py"


def test_the_import_cost_table_is_the_benchs_csv():
    bench = script("bench/import_cost.py")
    assert bench.markdown(REPO / "docs/data/import_cost-2026-12-03.csv") in (REPO / "docs/default-run.md").read_text(), (
        "render it again: python bench/import_cost.py"
    )


@pytest.mark.parametrize("run_folder", ["2026-12-04-deit_b", "2026-12-04-deit_b-full"])
def test_the_deit_b_stage_costs_are_the_runs_benchmarks_and_logs(run_folder):
    """docs/deit_b.md's 2026-12-04 per-stage tables (the heavy jobs; the whole config) are the CSVs
    that `pqv costs` makes again from each run's benchmark files and job logs (copied beside it),
    rendered by scripts/costs_table.py."""
    from pqv.plan import jobs
    from pqv.stages import summary

    costs_table = script("scripts/costs_table.py")
    run = REPO / "docs/data" / run_folder
    benchmarks = sorted((run / "benchmarks").rglob("*.tsv"))
    # each benchmark file's log, as the rules name them (pqv.plan.jobs)
    logs = [
        str(run / "job-logs" / jobs.log_name(*jobs.of_benchmark(str(path.relative_to(run / "benchmarks"))))) for path in benchmarks
    ]
    assert all(Path(log).is_file() for log in logs), [log for log in logs if not Path(log).is_file()]
    again = summary.stage_costs([str(p) for p in benchmarks], str(run / "benchmarks"), logs).set_index("stage")
    written = pd.read_csv(run / "stage_costs.csv").set_index("stage")
    # the columns the run wrote (`warm` came later: no job of theirs was forked, and it says so)
    assert (again["warm"] == 0).all()
    pd.testing.assert_frame_equal(again.loc[written.index, written.columns], written, check_dtype=False, rtol=1e-5)
    assert written.loc["total", "cpu_from_log"] == written.loc["total", "jobs"]
    page = (REPO / "docs/deit_b.md").read_text()
    assert costs_table.table(str(run / "stage_costs.csv")) in page, "render it again: python scripts/costs_table.py ..."
