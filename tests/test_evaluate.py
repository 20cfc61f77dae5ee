import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pqv.stages import evaluate, plot


def test_accuracy_counts_top1_and_top5_exactly():
    logits = torch.tensor([[9.0, 1, 2, 3, 4, 5, 0], [0.0, 9, 8, 7, 6, 5, 4], [1.0, 2, 3, 4, 5, 6, 7]])
    labels = torch.tensor([0, 6, 0])  # hit; in no top-5; ranked last
    loader = DataLoader(TensorDataset(logits, labels), batch_size=2)
    top1, top5 = evaluate.accuracy(lambda x: x, loader)
    assert top1 == 100 / 3 and top5 == 100 / 3
    labels = torch.tensor([0, 3, 2])  # hit; 4th for row 2 -> top-5; 5th for row 3 -> top-5
    top1, top5 = evaluate.accuracy(lambda x: x, DataLoader(TensorDataset(logits, labels), batch_size=3))
    assert top1 == 100 / 3 and top5 == 100.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the device rule's accuracy jobs on a GPU node)")
def test_an_eager_model_scores_the_same_on_cuda_as_on_the_cpu():
    """`pqv evaluate accuracy --device cuda` crashed on 2026-12-04 (logits on the GPU, labels not)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 7))
    loader = DataLoader(TensorDataset(torch.randn(64, 3, 2, 2), torch.randint(0, 7, (64,))), batch_size=16)
    on_cpu = evaluate.accuracy_on(model, loader, torch.device("cpu"))
    assert evaluate.accuracy_on(model, loader, torch.device("cuda")) == pytest.approx(on_cpu)
    assert next(model.parameters()).device.type == "cpu"


def test_latency_reports_ordered_statistics_of_the_requested_calls():
    calls = []
    stats = evaluate.latency(lambda x: calls.append(1), torch.zeros(1), warmup=3, runs=7)
    assert len(calls) == 10
    assert stats["latency_ms_min"] <= stats["latency_ms_median"] <= stats["latency_ms_p90"] <= stats["latency_ms_max"]


def test_pareto_front_keeps_only_unbeaten_artifacts():
    table = pd.DataFrame({"latency_ms_median": [1.0, 2.0, 3.0, 1.5], "top1": [80.0, 90.0, 85.0, 79.0], "status": "verified"})
    front = plot.pareto_front(table)
    assert sorted(front.index) == [0, 1]


def test_rejected_artifacts_never_make_the_pareto_front():
    table = pd.DataFrame(
        {"latency_ms_median": [1.0, 2.0, 3.0], "top1": [95.0, 90.0, 92.0], "status": ["rejected", "verified", "verified"]}
    )
    assert sorted(plot.pareto_front(table).index) == [1, 2]


def test_the_accuracy_pass_uses_every_core_the_job_holds_and_latency_keeps_its_threads(tiny_file, tmp_path, monkeypatch):
    """Two jobs: a .pte's accuracy pass runs on an XNNPACK pool as wide as the job's cores (its
    DataLoader workers decode beside it); its latency on evaluate.threads."""
    from executorch.extension.pybindings import portable_lib

    from pqv.common import datasets
    from pqv.plan import fileio
    from pqv.stages import export

    from .conftest import DIGITS

    pte = tiny_file("int8_dynamic", "xnnpack", "pte")
    dc = fileio.read_sidecar(pte)["data_config"]
    whole = evaluate.accuracy(export.load(str(pte), "pte", "xnnpack"), datasets.loader(DIGITS, "eval", dc, 64))
    pools = {}
    for name in ("latency", "accuracy"):  # the XNNPACK pool's width when each pass starts
        real = getattr(evaluate, name)
        monkeypatch.setattr(
            evaluate,
            name,
            lambda *a, _real=real, _name=name, **k: (
                pools.setdefault(_name, portable_lib._threadpool_get_thread_count()),
                _real(*a, **k),
            )[1],
        )
    try:
        timed = evaluate.run_latency(str(pte), str(tmp_path / "l.json"), DIGITS, {}, threads=1, warmup=1, runs=2)
        scored = evaluate.run_accuracy(str(pte), str(tmp_path / "a.json"), DIGITS, {}, threads=2)
        with_workers = evaluate.run_accuracy(str(pte), str(tmp_path / "w.json"), DIGITS, {}, threads=4, workers=2)
    finally:
        evaluate.set_threads(1)
    assert pools == {"latency": 1, "accuracy": 2}
    assert (scored["top1"], scored["top5"]) == whole == (with_workers["top1"], with_workers["top5"])
    assert timed["threads"] == 1 and scored["accuracy_threads"] == 2 and scored["accuracy_images_per_s"] > 0
    assert with_workers["accuracy_threads"] == 4 and with_workers["accuracy_workers"] == 2  # workers do not subtract
    assert timed["runtime"].startswith("executorch ") and "top1" not in timed and "latency_ms_median" not in scored


def test_memory_is_the_artifacts_not_the_data_sets(saved_tiny, tmp_path):
    """The latency job measures memory before it reads the data: a data set with 200 times the
    images gives the same figure (building its held-out split takes ~70 MB of tensors)."""
    import json
    import subprocess
    import sys

    from pqv.stages import export, quantize

    from .conftest import DIGITS

    program, ptl = tmp_path / "int8.ts", tmp_path / "int8.ptl"
    quantize.run(str(saved_tiny), str(program), "int8_dynamic", "x86", DIGITS)
    export.run(str(program), str(saved_tiny), str(ptl), "ptl", DIGITS)
    figures = {}
    for name, times in (("small", 1), ("large", 200)):
        manifest = {**DIGITS, "splits": {s: {**v, "items": v["items"] * times} for s, v in DIGITS["splits"].items()}}
        (tmp_path / f"{name}.json").write_text(json.dumps(manifest))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pqv",
                "evaluate",
                "latency",
                "--artifact",
                str(ptl),
                "--out",
                str(tmp_path / f"{name}.out.json"),
                "--data",
                str(tmp_path / f"{name}.json"),
                "--runs",
                "2",
            ],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        figures[name] = json.loads((tmp_path / f"{name}.out.json").read_text())
    assert figures["large"]["peak_rss_mb"] == pytest.approx(figures["small"]["peak_rss_mb"], rel=0.03)
    assert 0 < figures["small"]["rss_model_mb"] < figures["small"]["peak_rss_mb"]
    assert (tmp_path / "large.json").stat().st_size > 3 * 2**20
