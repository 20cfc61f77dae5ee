"""The SLURM profile makes valid submissions: Snakemake's SLURM executor plugin runs for real
against stand-ins of every SLURM command it runs (sbatch records what it was asked), so these tests
pass the same on a machine without SLURM (two of them run again with this machine's own SLURM
commands hidden: `slurm_on_path`).
(tests/test_slurm_cluster.py runs the workflow on a real SLURM cluster.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import write_data_manifests

REPO = Path(__file__).resolve().parents[1]

FAKE = {
    "sbatch": 'echo "$@" >> "$FAKE_SLURM_LOG"\necho 4242',
    # every job 'completes' at the first status check without its files, so the run ends after
    # submitting (a job reported FAILED makes the plugin wait 10 s more before Snakemake can stop)
    "sacct": "echo '4242|COMPLETED'",
    "sacctmgr": "echo acct",  # the plugin checks the account exists
    "squeue": "true",
    "sinfo": "true",
    "scontrol": "true",
    "sshare": "echo acct",  # where sacctmgr fails
    "scancel": "true",  # a run that stops cancels its jobs
}
BRANCH = "results/demo_vit/{}"
# stand-in inputs, so that each target's own job is the one submitted: finetune taylor_0.25,
# prune taylor_0.5 / l2_0.5, evaluate l2_0.25
INPUTS = ["model.safetensors", "model.safetensors.json", "taylor_0.25/pruned.safetensors", "taylor_0.25/pruned.safetensors.json"] + [
    f"l2_0.25/{name}"
    for name in (
        "pruned.safetensors",
        "pruned.safetensors.json",
        "finetuned.safetensors",
        "finetuned.safetensors.json",
        "export/int8_dynamic-x86.ptl",
        "export/int8_dynamic-x86.ptl.app.json",
        "export/int8_dynamic-x86.ptl.json",
    )
]


SLURM_COMMANDS = frozenset(
    "sacct sacctmgr salloc sattach sbatch sbcast scancel scontrol scrontab sdiag sh5util sinfo sprio squeue sreport srun sshare "
    "sstat strigger sview".split()
)


def path_without_slurm(path: str, links: Path) -> str | None:
    """PATH as on a machine without SLURM: each folder that holds a SLURM command becomes a folder of
    links to its other files. None where no SLURM command is on PATH."""
    folders, hidden = [], False
    for i, folder in enumerate(path.split(os.pathsep)):
        if os.path.isdir(folder) and SLURM_COMMANDS & set(os.listdir(folder)):
            copy = links / str(i)
            copy.mkdir(parents=True)
            for name in set(os.listdir(folder)) - SLURM_COMMANDS:
                (copy / name).symlink_to(Path(folder, name))
            folder, hidden = str(copy), True
        folders.append(folder)
    return os.pathsep.join(folders) if hidden else None


@pytest.fixture(params=[True, False], ids=["slurm-on-path", "no-slurm"])
def slurm_on_path(request, tmp_path_factory, monkeypatch):
    """Run once as on this machine and once with its SLURM commands hidden (Snakemake imports the SLURM
    plugin, which looks for sinfo, sacct and squeue): where there are none, the first run was the
    second."""
    if not request.param:
        path = path_without_slurm(os.environ["PATH"], tmp_path_factory.mktemp("no-slurm"))
        if path is None:
            pytest.skip("no SLURM command on PATH here: the run with PATH as it is ran without SLURM")
        for name in ("sinfo", "sacct", "squeue", "sbatch", "scontrol"):
            assert shutil.which(name, path=path) is None, name
        monkeypatch.setenv("PATH", path)
    return request.param


@pytest.fixture
def submit(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "sbatch.log"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_LOG": str(log)}
    runs = iter(range(100))

    def run(config: dict, targets: list[str], *args: str, inputs: bool = True, site: tuple[str, ...] = ()) -> dict[str, str]:
        """sbatch's own options (space-delimited) per submitted job, keyed by rule and wildcards,
        for one run of the README's command with partition and account named on the command line."""
        work = tmp_path / f"work{next(runs)}"
        if inputs:  # the data jobs' manifests first, then the files made after them
            write_data_manifests(work)
        for name in INPUTS if inputs else []:
            (work / "results/demo_vit" / name).parent.mkdir(parents=True, exist_ok=True)
            (work / "results/demo_vit" / name).touch()
        work.mkdir(exist_ok=True)
        (work / "site.yaml").write_text(yaml.safe_dump(config))
        log.unlink(missing_ok=True)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "--snakefile",
                str(REPO / "Snakefile"),
                "--directory",
                str(work),
                "--profile",
                str(REPO / "profiles/slurm"),
                "--configfile",
                str(work / "site.yaml"),
                "--slurm-init-seconds-before-status-checks",
                "1",
                "--latency-wait",
                "0",
                "--default-resources",
                "slurm_account=acct",
                "slurm_partition=part",
                *site,
                *args,
                "--",
                *targets,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert log.exists(), result.stderr[-3000:]
        calls = {}
        for call in log.read_text().splitlines():
            assert "-A acct -p part" in call and "--parsable" in call
            assert "--wrap=" in call and "--executor slurm-jobstep" in call  # the job runs Snakemake's jobstep
            comment = call.split("--comment ")[1].split()[0].strip("'").replace("_wildcards_demo_vit", "")
            comment = comment.replace("__", "_")  # an empty merge wildcard (no token merging)
            calls[comment] = " " + call.split(" --wrap=")[0] + " "
        assert len(calls) == len(targets), (sorted(calls), result.stderr[-3000:])
        return calls

    return run


FINETUNE = BRANCH.format("taylor_0.25/finetuned.safetensors")
PRUNE_TAYLOR, PRUNE_L2 = BRANCH.format("taylor_0.5/pruned.safetensors"), BRANCH.format("l2_0.5/pruned.safetensors")
LATENCY = BRANCH.format("l2_0.25/eval/int8_dynamic-x86.ptl.latency.json")
ACCURACY = BRANCH.format("l2_0.25/eval/int8_dynamic-x86.ptl.accuracy.json")
EAGER_LATENCY = BRANCH.format("l2_0.25/eval/fp32-none.eager.latency.json")
EAGER_ACCURACY = BRANCH.format("l2_0.25/eval/fp32-none.eager.accuracy.json")


def expected(stage: str, config: dict, images: tuple[int, int]) -> dict:
    """What pqv.plan.resources gives a job of the default config (with `config` over it) on the digits
    and the demo model's size estimate (the stand-in inputs have no sidecar facts)."""
    from pqv.plan import config as pqv_config
    from pqv.plan import resources

    cfg = pqv_config.load_yaml(REPO / "config/config.yaml")
    for key, value in config.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    cfg = pqv_config.filled(cfg)
    work = resources.Work(*images, *resources.estimate_macs(cfg["models"][0]), data="digits")
    return {**resources.of(stage, cfg, work, planned_images=1797), "threads": resources.threads(stage, cfg, 1797)}


def test_every_rule_asks_for_its_own_resources_with_partition_and_account_named(submit):
    # the paper's shape: 4 finetune processes, GPUs where a stage uses them (device: auto)
    config = {"finetune": {"nproc": 4}, "evaluate": {"threads": 2}}
    jobs = submit(config, [FINETUNE, PRUNE_TAYLOR, PRUNE_L2, LATENCY, ACCURACY, EAGER_LATENCY, EAGER_ACCURACY])
    finetune = jobs["rule_finetune_taylor_0.25"]
    want = expected("finetune", config, (1437, 0))  # finetuning reads the training split only
    # 4 processes x (2 torch threads + 0 workers on the digits), memory from the data and the model
    assert want["threads"] == 8 and want["gpu"] == 4
    assert " --cpus-per-task=8 " in finetune and f" --mem {want['mem_mb']} " in finetune and " --gpus=4 " in finetune
    assert f" -t {want['runtime']} " in finetune
    assert " -t " in finetune and "--exclusive" not in finetune
    # a prune job asks for a GPU only where its importance takes gradients
    assert " --gpus=1 " in jobs["rule_prune_taylor_0.5"] and "--gpus" not in jobs["rule_prune_l2_0.5"]
    # latency jobs ask for the node to themselves and no GPU; the accuracy pass shares a node, and
    # for the eager baseline it may use CUDA
    for fmt in ("int8_dynamic_x86_ptl", "fp32_none_eager"):
        latency = jobs[f"rule_latency_l2_0.25_{fmt}"]
        assert " --exclusive " in latency and " --cpus-per-task=2 " in latency and "--gpus" not in latency
        assert int(latency.split(" -t ")[1].split()[0]) <= 15  # minutes: short
        assert "--exclusive" not in jobs[f"rule_accuracy_l2_0.25_{fmt}"]
    assert "--gpus" not in jobs["rule_accuracy_l2_0.25_int8_dynamic_x86_ptl"]
    assert " --gpus=1 " in jobs["rule_accuracy_l2_0.25_fp32_none_eager"]
    (model,) = submit({}, ["results/data/train.json"], inputs=False).values()  # the first job: the data
    assert " --cpus-per-task=2 " in model and "--gpus" not in model


def test_one_override_keeps_the_other_values_and_device_cpu_asks_for_no_gpu(submit):
    jobs = submit({"device": "cpu", "finetune": {"nproc": 2}}, [FINETUNE, PRUNE_TAYLOR], "--set-resources", "finetune:runtime=77")
    finetune = jobs["rule_finetune_taylor_0.25"]
    want = expected("finetune", {"device": "cpu", "finetune": {"nproc": 2}}, (1437, 0))
    assert " -t 77 " in finetune and f" --mem {want['mem_mb']} " in finetune and " --cpus-per-task=4 " in finetune
    assert "--gpus" not in finetune and "--gpus" not in jobs["rule_prune_taylor_0.5"]


@pytest.mark.parametrize("gres, gpus", [("(null)", False), ("gpu:a100:4", True)])
def test_device_auto_asks_for_gpus_only_where_the_partition_has_them(submit, tmp_path, gres, gpus):
    """sinfo tells whether partition `part` has GPUs: on one without, sbatch would refuse --gpus."""
    (tmp_path / "bin" / "sinfo").write_text(f"#!/bin/bash\necho 'part* infinite {gres}'\n")  # sinfo -h -o "%P %l %G"
    jobs = submit({"finetune": {"nproc": 2}}, [FINETUNE, PRUNE_TAYLOR, EAGER_ACCURACY])
    assert all((" --gpus=" in call) == gpus for call in jobs.values()), jobs


def test_max_threads_and_resources_cap_every_job(slurm_on_path, submit):
    (finetune,) = submit({"finetune": {"nproc": 4}}, [FINETUNE], "--max-threads", "2", "--resources", "mem_mb=1500").values()
    assert " --cpus-per-task=2 " in finetune and " --mem 1500 " in finetune


@pytest.mark.parametrize("oversubscribe, expected", [("NO", True), ("OK", False)])
def test_evaluate_records_whether_a_slurm_job_had_its_node_alone(tmp_path, monkeypatch, oversubscribe, expected):
    from pqv.stages import evaluate

    scontrol = tmp_path / "scontrol"
    scontrol.write_text(f"#!/bin/bash\n[ \"$4\" = 77 ] && echo 'JobId=77 NumCPUs=2 OverSubscribe={oversubscribe} Contiguous=0'\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert evaluate.machine()["node_exclusive"] is None  # outside SLURM
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert evaluate.machine()["node_exclusive"] is expected


def test_a_sites_own_slurm_extra_stays_on_the_jobs_that_add_exclusive(submit):
    """A site's reservation or mail settings are a default resource; a latency job's --exclusive is added to it,
    not put in its place (a rule's resource replaces a default of the same name)."""
    jobs = submit({}, [LATENCY, ACCURACY], site=("slurm_extra='--reservation=demo --mail-type=FAIL'",))
    latency, accuracy = jobs["rule_latency_l2_0.25_int8_dynamic_x86_ptl"], jobs["rule_accuracy_l2_0.25_int8_dynamic_x86_ptl"]
    assert " --reservation=demo --mail-type=FAIL --exclusive " in latency, latency
    assert " --reservation=demo --mail-type=FAIL " in accuracy and "--exclusive" not in accuracy, accuracy


def _node_hours():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_node_hours", REPO / "bench/node_hours.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_paper_sweep_fits_a_partitions_time_limit_and_a_cpu_finetune_stops_in_one_line(slurm_on_path, tmp_path):
    """config/paper.yaml planned on ImageNet's counts (bench/node_hours.py) against partitions a
    stand-in sinfo describes: with GPUs and a 24- or 12-hour limit no request exceeds it, and on
    12 hours the DeiT-B finetunes run as successive jobs; on a 24-hour partition with device cpu
    the plan stops in one line."""
    bench = _node_hours()
    for limit, minutes in (("1-00:00:00", 1440), ("12:00:00", 720)):
        (tmp_path / f"gpu{minutes}").mkdir()  # no colon: the folder's bin/ goes on PATH
        done = bench.plan(REPO, REPO / "config/paper.yaml", tmp_path / f"gpu{minutes}", f"gpu* {limit} gpu:a100:4")
        assert done.returncode == 0, done.stderr[-3000:]
        jobs = bench.jobs(done.stdout)
        assert len(jobs) > 600 and max(job["runtime_min"] for job in jobs) <= minutes
        finetunes = [job for job in jobs if job["rule"] == "finetune"]
        assert len(finetunes) == 24 and all(job["gpus"] == 4 for job in finetunes)
        spans = "partition gpu's limit of 720 min: it runs as about 2 successive jobs"
        assert (spans in done.stderr) == (minutes == 720)  # DeiT-B's 20 h fit a day, not half a day

    (tmp_path / "cpu").mkdir()
    done = bench.plan(REPO, REPO / "config/paper.yaml", tmp_path / "cpu", "gpu* 1-00:00:00 gpu:a100:4", site="device: cpu\n")
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert done.returncode != 0 and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("pqv plan: error: finetune of deit-b asks for ")
    assert " h on CPUs (" in errors[0] and "partition gpu's limit of 24 h" in errors[0]
    assert "device: cuda" in errors[0] and "--set-resources finetune:runtime=" in errors[0]
    assert "Job stats" not in done.stdout  # before any job


def test_a_login_node_with_sinfo_alone_stops_snakemake_before_pqv_runs(tmp_path):
    """The SLURM plugin, which Snakemake imports on every run (local ones too), stops any snakemake
    command before the Snakefile is read where sinfo is on PATH but neither sacct nor squeue: no
    PQV code can run first, so docs/clusters.md gives the plugin's line and the fix."""
    which = shutil.which("which")  # the plugin asks `which sacct`
    if which is None:
        pytest.skip("no `which` command on this machine")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "which").symlink_to(which)
    (bin_dir / "sinfo").write_text("#!/bin/sh\ntrue\n")
    (bin_dir / "sinfo").chmod(0o755)
    env = {**os.environ, "PATH": str(bin_dir)}  # this machine's own SLURM commands, if any, hidden
    done = subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True, text=True, env=env)
    message = "Neither 'sacct' nor 'squeue' commands are available on this system."
    assert done.returncode != 0 and message in done.stderr, done.stderr[-3000:]
    assert message in " ".join((REPO / "docs/clusters.md").read_text().split())
    (bin_dir / "squeue").write_text("#!/bin/sh\ntrue\n")  # the fix: SLURM's squeue (or sacct) on PATH too
    (bin_dir / "squeue").chmod(0o755)
    done = subprocess.run([sys.executable, "-m", "snakemake", "--version"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
