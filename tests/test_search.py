"""The search rule on synthetic accuracy curves: its answer and how many probes it takes."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from pqv.plan import search
from pqv.plan.errors import PQVError

POINTS = search.grid(0.0, 0.9, 0.05)  # 19 ratios: 0, 0.05, ..., 0.9


def test_the_grid_follows_the_resolution_and_round_to():
    assert POINTS[:3] == [0.0, 0.05, 0.1] and POINTS[-1] == 0.9 and len(POINTS) == 19
    snapped = search.grid(0.0, 0.9, 0.05, embed=96, round_to=16)  # widths 80, 64, ... 16 of 96
    assert snapped == [0.0, 0.166667, 0.333333, 0.5, 0.666667, 0.833333]
    assert all(round(96 * (1 - r)) % 16 == 0 for r in snapped)


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.33, 0.5, 0.85, 0.9])
def test_a_monotone_curve_is_bisected_to_its_threshold_in_log2_probes(threshold):
    answer, rounds = search.simulate(lambda r: r <= threshold + 1e-9, POINTS, parallel=1, max_probes=99)
    assert answer == max(p for p in POINTS if p <= threshold + 1e-9)
    assert all(len(r) == 1 for r in rounds)
    assert len(rounds) <= math.ceil(math.log2(len(POINTS)))  # 5 finetunes instead of the grid's 18


def test_a_clear_failure_below_a_pass_bounds_the_answer_and_a_weak_one_does_not():
    """Near the budget accuracy is not monotone. A failure by more than one standard error caps the
    answer even with a pass above it; one by less (WEAK), contradicted from above, does not."""
    results = {0.0: search.PASS, 0.3: search.PASS, 0.45: search.PASS, 0.6: search.FAIL}
    clear = {**results, 0.35: search.FAIL}
    assert search.interval(POINTS, clear) == (POINTS.index(0.3), POINTS.index(0.35))
    weak = {**results, 0.35: search.WEAK}
    assert search.interval(POINTS, weak) == (POINTS.index(0.45), POINTS.index(0.6))
    alone = {0.0: search.PASS, 0.3: search.PASS, 0.35: search.WEAK}  # nothing above it passed (yet)
    assert search.interval(POINTS, alone) == (POINTS.index(0.3), POINTS.index(0.35))


def _curve(answer: float, fluke: float | None = None):
    """Verdicts of a monotone curve whose last pass is `answer`; at `fluke` a WEAK failure."""
    return lambda r: (
        search.WEAK if fluke is not None and abs(r - fluke) < 1e-9 else (search.PASS if r <= answer + 1e-9 else search.FAIL)
    )


@pytest.mark.parametrize("answer, fluke", [(0.6, 0.5), (0.6, 0.45), (0.3, 0.25), (0.85, 0.45)])
def test_a_first_failure_that_is_a_fluke_is_checked_from_above_and_overcome(answer, fluke):
    """The rule before issue 29 stopped at a fluke for good; checking the ratio above a WEAK bound
    costs one probe and finds the true answer."""
    strict = lambda r: search.FAIL if _curve(answer, fluke)(r) == search.WEAK else _curve(answer, fluke)(r)  # noqa: E731
    got, rounds = search.simulate(_curve(answer, fluke), POINTS, parallel=1, max_probes=99)
    probed = [r for rnd in rounds for r in rnd]
    if fluke in probed:  # the bisection met the fluke
        assert search.simulate(strict, POINTS, parallel=1, max_probes=99)[0] < fluke
    assert got == answer


def test_a_weak_failure_confirmed_from_above_bounds_the_answer():
    curve = lambda r: search.PASS if r <= 0.4 + 1e-9 else (search.WEAK if r < 0.5 else search.FAIL)  # noqa: E731
    answer, rounds = search.simulate(curve, POINTS, parallel=1, max_probes=99)
    assert answer == 0.4
    assert POINTS[POINTS.index(0.45) + 1] in [r for rnd in rounds for r in rnd]  # the check above the weak one


def test_on_noisy_curves_the_checked_rule_beats_the_strict_one_for_under_one_finetune_more():
    """bench/search_noise.py on fewer trials: where the first failure met is a fluke, the strict
    bisection is capped below it; the checked one recovers what the grid finds."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("search_noise", Path(__file__).parents[1] / "bench/search_noise.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = {(r["scenario"], r["eval_images"], r["rule"]): r for r in bench.run(trials=300)}
    for images in bench.IMAGES:
        checked, strict = rows["fluke", images, "search, checked"], rows["fluke", images, "search, strict"]
        grid = rows["fluke", images, "grid, checked"]
        assert checked["within_one_step_pct"] > strict["within_one_step_pct"]
        if images >= 10_000:  # on 360 images the noise is wider than the budget: no rule is often right there
            assert checked["within_one_step_pct"] >= grid["within_one_step_pct"] - 5
        assert checked["finetunes_mean"] - strict["finetunes_mean"] < 1.0
        assert rows["fluke", images, "grid, strict"]["right_pct"] == 0  # a fluke below the answer caps the grid too


@pytest.mark.parametrize("parallel", [2, 3])
def test_parallel_probes_take_fewer_rounds_for_a_few_more_probes(parallel):
    one, one_rounds = search.simulate(lambda r: r <= 0.62, POINTS, parallel=1, max_probes=99)
    answer, rounds = search.simulate(lambda r: r <= 0.62, POINTS, parallel=parallel, max_probes=99)
    assert answer == one == 0.6
    assert len(rounds) < len(one_rounds) and max(map(len, rounds)) == parallel
    assert sum(map(len, rounds)) <= 2 * sum(map(len, one_rounds))


def test_the_standard_error_of_a_top1_follows_the_split_size():
    assert search.standard_error(95.0, 360) == pytest.approx(100 * math.sqrt(0.95 * 0.05 / 360))
    assert search.standard_error(100.0, 360) > 0  # a perfect score is not exact either
    assert search.standard_error(80.0, 50_000) < search.standard_error(80.0, 360) / 10


def test_the_probe_budget_is_kept():
    _, rounds = search.simulate(lambda r: r <= 0.62, POINTS, parallel=1, max_probes=2)
    assert sum(map(len, rounds)) == 2


def _measured(tmp_path, ratio, top1, status="verified", name=None):
    path = tmp_path / (name or f"m{ratio}.json")
    path.write_text(
        json.dumps(
            {
                "model": "m",
                "importance": "l2",
                "ratio": ratio,
                "precision": "int8_dynamic",
                "engine": "x86",
                "format": "ptl",
                "top1": top1,
                "status": status,
                "latency_ms_median": 1.0 - ratio,
                "size_mb": 1.0,
            }
        )
    )
    return str(path)


SETTINGS = {
    "budget": 1.0,
    "lo": 0.0,
    "hi": 0.9,
    "resolution": 0.05,
    "parallel": 1,
    "max_probes": 8,
    "artifact": {"precision": "int8_dynamic", "engine": "x86", "format": "ptl"},
}


@pytest.fixture
def model_sidecar(tmp_path):
    path = tmp_path / "model.safetensors.json"
    widths = {"embed": 96, "blocks.0.mlp": 384, "blocks.0.head_dim": 32, "blocks.0.heads": 3}
    path.write_text(json.dumps({"stage": "model", "widths": widths}))
    return str(path)


def _reference(tmp_path, top1=95.0):
    """The dense branch's FP32 accuracy files: the eager baseline and a .ptl a little below it."""
    out = []
    for fmt, value in (("eager", top1), ("ptl", top1 - 0.3)):
        path = tmp_path / f"dense-fp32-{fmt}.json"
        path.write_text(
            json.dumps(
                {
                    "model": "m",
                    "importance": "dense",
                    "ratio": 0.0,
                    "precision": "fp32",
                    "engine": "none",
                    "format": fmt,
                    "top1": value,
                    "status": "verified",
                }
            )
        )
        out.append(str(path))
    return out


def test_a_round_reads_its_probes_and_asks_for_the_next(tmp_path, model_sidecar):
    first = search.run_round(
        str(tmp_path / "r0.json"), model_sidecar, SETTINGS, {}, [_measured(tmp_path, 0.0, 94.5)], references=_reference(tmp_path)
    )
    assert first["next"] == [0.5] and not first["done"] and first["reach"]["ratio"] == pytest.approx(1 - 1 / 32)
    second = search.run_round(
        str(tmp_path / "r1.json"), model_sidecar, SETTINGS, {}, [_measured(tmp_path, 0.5, 93.0)], previous=str(tmp_path / "r0.json")
    )
    assert [p["passed"] for p in second["probes"]] == [True, False] and second["next"] == [0.25]


def test_a_budget_the_dense_artifact_fails_is_one_line(tmp_path, model_sidecar):
    with pytest.raises(
        PQVError,
        match=r"search budget 1 top-1 points: even the unpruned int8_dynamic .ptl artifact "
        r"fails it \(top-1 93.50 is 1.50 points below the dense FP32 model's 95.00\)",
    ):
        search.run_round(
            str(tmp_path / "r0.json"), model_sidecar, SETTINGS, {}, [_measured(tmp_path, 0.0, 93.5)], references=_reference(tmp_path)
        )
    assert not (tmp_path / "r0.json").exists()


def test_round_to_and_torch_prunings_reach_bound_the_grid(tmp_path, model_sidecar):
    settings = {**SETTINGS, "hi": 0.99}
    state = search.run_round(
        str(tmp_path / "r0.json"),
        model_sidecar,
        settings,
        {"round_to": 16},
        [_measured(tmp_path, 0.0, 95.0)],
        references=_reference(tmp_path),
    )
    assert state["grid"] == [0.0, 0.166667, 0.333333, 0.5]  # head_dim 32 in multiples of 16: at most 0.5


@pytest.mark.parametrize(
    "settings, prune",
    [
        ({"lo": 0.97, "hi": 0.99}, {}),  # above what Torch-Pruning reaches
        ({"lo": 0.6, "hi": 0.9}, {"round_to": 16}),
    ],
)  # round_to stops at 0.5
def test_a_search_with_nothing_to_probe_is_one_line_not_an_answer_of_zero(tmp_path, model_sidecar, settings, prune):
    with pytest.raises(
        PQVError,
        match=r"the search has no ratio to probe: from search.lo .* cut at 0.9688 \(the most "
        r"Torch-Pruning can prune this model: its blocks.0.head_dim group is 32 wide\)"
        if not prune
        else r"the search has no ratio to probe: .* in steps of prune.round_to 16",
    ):
        search.run_round(
            str(tmp_path / "r0.json"),
            model_sidecar,
            {**SETTINGS, **settings},
            prune,
            [_measured(tmp_path, 0.0, 95.0)],
            references=_reference(tmp_path),
        )
    assert not (tmp_path / "r0.json").exists()


def test_a_failed_probe_is_information_and_the_search_goes_on(tmp_path, model_sidecar):
    search.run_round(
        str(tmp_path / "r0.json"), model_sidecar, SETTINGS, {}, [_measured(tmp_path, 0.0, 95.0)], references=_reference(tmp_path)
    )
    broken = tmp_path / "broken.json"
    reason = "max |artifact - parent| 0.01 > 0.0001: exporting to .ptl changed the model's function"
    broken.write_text(
        json.dumps(
            {
                "model": "m",
                "importance": "l2",
                "ratio": 0.5,
                "precision": "int8_dynamic",
                "engine": "x86",
                "format": "ptl",
                "top1": 95.0,
                "status": "failed",
                "reason": reason,
            }
        )
    )
    state = search.run_round(str(tmp_path / "r1.json"), model_sidecar, SETTINGS, {}, [str(broken)], previous=str(tmp_path / "r0.json"))
    probe = [p for p in state["probes"] if p["ratio"] == 0.5][0]
    assert probe["verdict"] == search.FAIL and probe["reason"] == reason
    assert state["next"] == [0.25] and not state["done"]  # bisection goes on below it


def test_a_probe_without_a_status_fails(tmp_path, model_sidecar):
    missing = tmp_path / "no-status.json"
    missing.write_text(
        json.dumps(
            {
                "model": "m",
                "importance": "l2",
                "ratio": 0.5,
                "precision": "int8_dynamic",
                "engine": "x86",
                "format": "ptl",
                "top1": 95.0,
            }
        )
    )
    search.run_round(
        str(tmp_path / "r0.json"), model_sidecar, SETTINGS, {}, [_measured(tmp_path, 0.0, 95.0)], references=_reference(tmp_path)
    )
    state = search.run_round(
        str(tmp_path / "r1.json"), model_sidecar, SETTINGS, {}, [str(missing)], previous=str(tmp_path / "r0.json")
    )
    probe = [p for p in state["probes"] if p["ratio"] == 0.5][0]
    assert not probe["passed"] and probe["status"] == "missing"


def test_the_search_and_choose_measure_loss_from_one_reference(tmp_path, model_sidecar):
    """The best verified dense FP32 file (here the eager baseline, 95.0), said in both outputs."""
    import pandas as pd

    from pqv.stages import choose

    state = search.run_round(
        str(tmp_path / "r0.json"), model_sidecar, SETTINGS, {}, [_measured(tmp_path, 0.0, 94.5)], references=_reference(tmp_path)
    )
    summary = pd.DataFrame(
        [json.loads(open(p).read()) for p in _reference(tmp_path)]
        + [{**json.loads(open(_measured(tmp_path, 0.0, 94.5)).read()), "importance": "dense"}]
    )
    picked = choose.candidates(summary, 1.0)
    assert state["reference_top1"] == 95.0 == picked["reference_top1"].iloc[0]
    assert search.REFERENCE in capsys_text(
        lambda: search.run_round(
            str(tmp_path / "r0b.json"), model_sidecar, SETTINGS, {}, [_measured(tmp_path, 0.0, 94.5)], references=_reference(tmp_path)
        )
    )


def capsys_text(call) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        call()
    return out.getvalue()


def test_widths_fit_one_cell():
    widths = {
        "embed": 72,
        "blocks.0.mlp": 288,
        "blocks.1.mlp": 256,
        "blocks.0.head_dim": 24,
        "blocks.1.head_dim": 24,
        "blocks.0.heads": 3,
    }
    for order in (widths, dict(sorted(widths.items()))):  # as a sidecar stores them: keys sorted
        assert search.widths_text(order) == "embed 72, mlp 256-288, head_dim 24, heads 3"


def test_two_searches_that_choose_one_file_both_mark_it(tmp_path):
    from pqv.stages import summary

    row = json.loads(open(_measured(tmp_path, 0.0, 95.0)).read())
    (tmp_path / "a.json").write_text(json.dumps(row))
    for importance in ("l2", "taylor"):  # both answered 0: the dense branch's file
        (tmp_path / f"{importance}.json").write_text(json.dumps({"importance": importance, "budget": 1.0, "chosen": row}))
    table = summary.collect([str(tmp_path / "a.json")], [str(tmp_path / "l2.json"), str(tmp_path / "taylor.json")])
    assert table["search"].tolist() == ["chosen by the l2 search (budget 1); chosen by the taylor search (budget 1)"]


def test_choose_prints_a_searchs_choice_without_a_budget_of_its_own(tmp_path, capsys):
    from pqv.stages import choose

    rows = [
        {
            **json.loads(open(_measured(tmp_path, r, 95.0 - 10 * r)).read()),
            "precision": "fp32",
            "engine": "none",
            "artifact": f"results/m/l2_{r:g}/export/fp32-none.ptl",
            "search": "",
        }
        for r in (0.0, 0.5)
    ]
    rows[1]["search"] = "chosen by the l2 search (budget 5)"
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    choose.run(str(tmp_path / "summary.csv"), None)
    out = capsys.readouterr().out
    assert out.startswith("m: chosen by the l2 search (budget 5):") and "l2_0.5/export/fp32-none.ptl" in out
    assert "fastest" not in out
    pd.DataFrame(rows[:1]).to_csv(tmp_path / "summary.csv", index=False)
    with pytest.raises(PQVError, match="has no accuracy-budget search's choice to print"):
        choose.run(str(tmp_path / "summary.csv"), None)


def test_evenly_spaced_picks_already_probed_give_way_to_other_open_points():
    """Issue 40: with weak failures below a pass, the evenly spaced picks of the open interval can
    be probes already made; the round then takes the nearest open points instead of none (which
    ended the search at 0 with probes unspent)."""
    results = {0.0: search.PASS, 0.1: search.WEAK, 0.2: search.WEAK, 0.3: search.FAIL, 0.65: search.PASS}
    nxt = search.next_probes(POINTS, results, parallel=2, max_probes=8)
    assert len(nxt) == 2 and all(0 < r < 0.3 and r not in results for r in nxt), nxt
    curve = {0.1: search.WEAK, 0.2: search.WEAK, 0.3: search.FAIL, 0.65: search.PASS}
    answer, rounds = search.simulate(
        lambda r: curve.get(r, search.PASS if r < 0.3 else search.FAIL), POINTS, parallel=2, max_probes=99
    )
    assert rounds[:2] == [[0.3, 0.65], [0.1, 0.2]]  # the state above, reached by the rule itself
    assert answer == 0.25


@pytest.mark.parametrize("parallel", [1, 2, 3])
def test_on_non_monotone_curves_the_search_ends_only_when_the_interval_is_probed_or_the_probes_are_spent(parallel):
    """Random verdicts (no order at all): every round asks for new points, none twice, and the search
    stops only when no grid point inside the open interval is left unprobed or max_probes is spent."""
    import random

    rng = random.Random(40)
    for trial in range(300):
        verdicts = {r: rng.choice([search.PASS, search.PASS, search.WEAK, search.FAIL]) for r in POINTS}
        verdicts[0.0] = search.PASS
        budget = rng.choice([4, 8, 99])
        answer, rounds = search.simulate(verdicts.__getitem__, POINTS, parallel=parallel, max_probes=budget)
        probed = [r for rnd in rounds for r in rnd]
        assert len(probed) == len(set(probed)) and 0.0 not in probed and all(rounds)
        results = {0.0: search.PASS, **{r: verdicts[r] for r in probed}}
        a, b = search.interval(POINTS, results)
        assert POINTS[a] == answer
        if len(probed) < budget:
            assert all(POINTS[i] in results for i in range(a + 1, b)), (trial, results)


@pytest.mark.parametrize("text", ['{"round": 0, "probes": [', "[]", '{"round": 0}', "\xff\xfe"])
def test_a_damaged_round_file_is_one_line_naming_it_and_the_fix(tmp_path, model_sidecar, text):
    damaged = tmp_path / "round-0.json"
    damaged.write_bytes(text.encode("latin-1"))
    match = rf"damaged search state {damaged} \(.*\) \(fix: delete it \(rm {damaged}\) and run again: the search's results are kept"
    with pytest.raises(PQVError, match=match):
        search.read_state(damaged)
    with pytest.raises(PQVError, match=match):  # the round after it reads it too
        search.run_round(str(tmp_path / "r1.json"), model_sidecar, SETTINGS, {}, [], previous=str(damaged))


def test_the_search_figure_keeps_latency_off_the_accuracy_panel():
    """(issue 43) Latency on a second axis crossed the budget line and read as accuracy; a marker at
    100 % sat on the frame; the legend hid error bars."""
    import pandas as pd

    from pqv.stages import search as search_report

    table = pd.DataFrame(
        {
            "ratio": [0.0, 0.25, 0.5, 0.75],
            "top1": [100.0, 99.0, 97.0, 80.0],
            "top1_se": [0.0, 0.5, 0.8, 2.0],
            "status": ["verified"] * 4,
            "passed": [True, True, True, False],
            "uncertain": [False] * 4,
            "reason": [""] * 4,
            "latency_ms_median": [4.0, 3.0, 2.0, 1.0],
        }
    )
    final = {"reference_top1": 100.0, "budget": 3.5, "answer": 0.5}
    chosen = {"model": "m", "importance": "l2", "precision": "int8_dynamic", "engine": "x86", "format": "ptl", "ratio": 0.5}
    fig = search_report.figure(table, final, chosen)
    top, below = fig.axes
    assert top.get_ylim()[1] > 100.0  # room above a marker at 100 %
    assert all(list(line.get_ydata()) != [4.0, 3.0, 2.0, 1.0] for line in top.get_lines())  # no latency up here
    assert [list(line.get_ydata()) for line in below.get_lines()] == [[4.0, 3.0, 2.0, 1.0]]
    anchor = top.get_legend().get_bbox_to_anchor().transformed(top.transAxes.inverted())
    assert anchor.x0 > 1.0  # beside the panel, over no point


def test_the_reports_lines_count_probes_as_probes_and_print_no_negative_zero():
    """(issue 43) "after 2 probes" listed three ratios (the dense branch is not a probe) and a loss
    that rounds to nothing printed as -0.00 points."""
    from pqv.stages import search as search_report

    probe = {"status": "verified", "passed": True, "verdict": "pass", "top1_se": 0.5, "uncertain": False}
    lines = search_report.probe_lines(
        [{**probe, "ratio": 0.0, "top1": 95.0, "loss": 0.0}, {**probe, "ratio": 0.5, "top1": 95.0, "loss": 0.001}], 1.0
    )
    assert lines[0].startswith("dense 0 (the start, not a probe): top-1 95.00")
    assert lines[1].startswith("probe 0.5: top-1 95.00 ± 0.50 (+0.00 points), within the budget of 1")
