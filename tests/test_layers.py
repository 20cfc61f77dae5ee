import copy

import pytest
import torch

from pqv.common import arch, layers
from pqv.stages import export, quantize

from .conftest import tiny_vit


@pytest.mark.parametrize("overrides", [{}, {"global_pool": "avg"}, {"qk_norm": True}])
def test_xnnpack_twins_compute_the_same_function(overrides):
    model = tiny_vit(**overrides)
    for block in model.blocks:  # non-trivial norms, so a swapped weight/bias would show
        torch.nn.init.normal_(block.norm1.weight, 1.0, 0.3)
        torch.nn.init.normal_(block.norm1.bias, 0.0, 0.3)
    x = torch.randn(3, 1, 8, 8)
    source = copy.deepcopy(model)
    source_params = {id(p) for p in source.parameters()}
    twin = layers.for_xnnpack(source)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in twin.modules())
    plain = not overrides.get("qk_norm")
    assert sum(isinstance(m, layers.BmmAttention) for m in twin.modules()) == (len(model.blocks) if plain else 0)
    # the twins share the original parameters: nothing copied, nothing new
    assert {id(p) for p in twin.parameters()} == source_params
    assert sum(p.numel() for p in twin.parameters()) == arch.count_params(model)
    assert twin.state_dict().keys() == model.state_dict().keys()  # the averaging rows are not saved


def test_exported_vit_lowers_to_xnnpack_almost_whole():
    """Two delegated graphs (blocks, head); outside them only the class token's broadcast in
    and its selection out (a few hundred floats each), no portable op inside the blocks."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = tiny_vit()
    program = quantize.quantize(model, "int8_dynamic", "xnnpack", "pt2", [torch.randn(2, 1, 8, 8)])
    export._find_flatc()
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).exported_program()
    calls = [n for n in lowered.graph.nodes if n.op == "call_function"]
    delegates = [n for n in calls if "executorch_call_delegate" in str(n.target)]
    portable = {n.target.__name__ for n in calls if n not in delegates and n.target.__name__ != "getitem"}
    assert len(delegates) <= 2
    assert portable <= {"aten.expand_copy.default", "aten.select_copy.int"}, portable


def test_exported_program_takes_one_image_and_the_loader_any_batch(tmp_path):
    model = tiny_vit()
    program = quantize.quantize(model, "fp32", "none", "pt2", [torch.randn(2, 1, 8, 8)])
    assert program.example_inputs[0][0].shape[0] == quantize.PROGRAM_BATCH
    src, out = tmp_path / "m.pt2", tmp_path / "m.pte"
    quantize.save(program, str(src), "pt2")
    export._export_pte(str(src), str(out), "fp32", {})
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(export.load(str(out), "pte", "none")(x), model(x), atol=1e-4, rtol=0)


def test_executorch_runs_on_torchs_thread_count(tmp_path):
    """`evaluate.threads` must bind XNNPACK too, whose pool otherwise takes every core."""
    from executorch.extension.pybindings import portable_lib

    program = quantize.quantize(tiny_vit(), "fp32", "none", "pt2", [torch.randn(1, 1, 8, 8)])
    src, out = tmp_path / "m.pt2", tmp_path / "m.pte"
    quantize.save(program, str(src), "pt2")
    export._export_pte(str(src), str(out), "fp32", {})
    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            export.load(str(out), "pte", "none")
            assert portable_lib._threadpool_get_thread_count() == threads
    finally:
        torch.set_num_threads(before)


def test_int8_programs_quantize_the_linear_layers_and_keep_layernorm_statistics_in_fp32():
    """The LayerNorm twin takes its means as matrix-vector products (`F.linear` with a constant row):
    XNNPACK's quantizer must leave them FP32 (an int8 mean and variance would skew every token) and
    still quantize every nn.Linear of the model."""
    model = tiny_vit()
    program = quantize.quantize(model, "int8_dynamic", "xnnpack", "pt2", [torch.randn(2, 1, 8, 8)])
    weights = [n.args[1] for n in program.graph.nodes if n.op == "call_function" and "linear" in str(n.target)]
    int8 = [w for w in weights if w.op == "call_function" and "dequantize" in str(w.target)]
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    norms = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert len(int8) == linears
    assert len(weights) - len(int8) == 2 * norms
