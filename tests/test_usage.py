"""A job's own count of what it used (pqv.common.usage), and stage_costs taking its CPU seconds from it."""

import json
import subprocess
import sys

import pytest

from pqv.common import usage
from pqv.plan.errors import PQVError
from pqv.stages import summary

BUSY = "import time\nx = 0\nfor i in range(3_000_000): x += i\nprint(time.process_time())"
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def test_the_count_includes_children_that_ran_and_ended():
    """DataLoader workers end before the job does: their CPU seconds are the job's."""
    before = usage.measure()["cpu_s"]
    child = subprocess.run([sys.executable, "-c", BUSY], capture_output=True, text=True, check=True)
    after = usage.measure()
    assert after["cpu_s"] - before >= float(child.stdout) - 0.05
    assert after["wall_s"] > 0 and after["max_rss_mb"] > 0


def test_the_count_includes_children_still_running():
    """A live worker's CPU seconds are counted too (not yet in the kernel's reaped-children total)."""
    child = subprocess.Popen(
        [sys.executable, "-c", BUSY + "\nimport sys; sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        spent = float(child.stdout.readline())
        live = usage._live_children_cpu_s()
        assert live >= spent - 0.05  # /proc counts in clock ticks (10 ms), sampled by the kernel
    finally:
        child.communicate("")


def test_the_cli_ends_its_log_with_one_usage_line_and_only_when_asked(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b/model.tsv").write_text(HEADER + "10.0\t0:00:10\t100\t200\t50\t60\t0\t0\t50\t5.0\n")
    args = [
        sys.executable,
        "-m",
        "pqv",
        "costs",
        str(tmp_path / "b/model.tsv"),
        "--root",
        str(tmp_path / "b"),
        "--out",
        str(tmp_path / "costs.csv"),
    ]
    quiet = subprocess.run(args, capture_output=True, text=True, check=True)
    assert usage.PREFIX not in quiet.stderr
    logged = subprocess.run(args[:3] + ["--log-usage"] + args[3:], capture_output=True, text=True, check=True)
    last = logged.stderr.strip().splitlines()[-1]
    assert last.startswith(usage.PREFIX) and json.loads(last[len(usage.PREFIX) :])["cpu_s"] > 0


def test_stage_costs_take_each_jobs_cpu_seconds_from_its_log(tmp_path):
    """Snakemake's sample (5 CPU-s of a 10 s job) gives way to the job's own count; a torchrun
    finetune's ranks each write a line, and they add up; a job without a usage line keeps the sample,
    and so does one whose line counts less (both are lower bounds: the line misses the exit)."""
    root = tmp_path / "benchmarks"
    jobs = ("model/m", "finetune/m/l2_0.5", "prune/m/l2_0.5", "keep_dense/m/l2_0")
    for job, cpu in zip(jobs, (5.0, 3.0, 4.0, 5.0)):
        (root / job).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{job}.tsv").write_text(HEADER + f"10.0\t0:00:10\t100\t200\t50\t60\t0\t0\t50\t{cpu}\n")
    logs = tmp_path / "logs"
    logs.mkdir()

    def line(cpu):
        return usage.PREFIX + json.dumps({"wall_s": 9.5, "cpu_s": cpu, "mean_load": cpu / 9.5, "max_rss_mb": 1})

    (logs / "model.log").write_text("progress\n" + line(18.0) + "\n")
    (logs / "finetune.log").write_text(line(19.0) + "\nrank 1 says\n" + line(17.0) + "\n")
    (logs / "prune.log").write_text("cut off before its end\n")
    (logs / "keep_dense.log").write_text(line(4.5) + "\n")
    paths = [str(root / f"{j}.tsv") for j in jobs]
    table = summary.stage_costs(paths, str(root), [str(logs / f"{j.split('/')[0]}.log") for j in jobs])
    table = table.set_index("stage")
    assert table["cpu_s"].to_dict() == {"model": 18.0, "finetune": 36.0, "prune": 4.0, "keep_dense": 5.0, "total": 63.0}
    assert table["mean_load"].to_dict() == pytest.approx(
        {"model": 1.8, "finetune": 3.6, "prune": 0.4, "keep_dense": 0.5, "total": 63 / 40}
    )
    assert table["cpu_from_log"].to_dict() == {"model": 1, "finetune": 1, "prune": 0, "keep_dense": 1, "total": 3}
    with pytest.raises(PQVError, match="2 logs for 4 benchmark files"):
        summary.stage_costs(paths, str(root), [str(logs / "model.log")] * 2)
    no_logs = summary.stage_costs(paths, str(root)).set_index("stage")
    assert no_logs["cpu_s"].to_dict() == {"model": 5.0, "finetune": 3.0, "prune": 4.0, "keep_dense": 5.0, "total": 17.0}


def test_a_missing_log_or_a_damaged_line_is_no_count(tmp_path):
    assert usage.read(tmp_path / "absent.log") is None
    (tmp_path / "bad.log").write_text(usage.PREFIX + "{not json\n")
    assert usage.read(tmp_path / "bad.log") is None
