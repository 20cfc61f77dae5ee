"""Every choice a user makes, named once: formats, precisions, engines, importances, scopes, head
modes, devices, schedulers, and the words the sweep uses (DENSE, NO_ENGINE, EAGER, Status).

Plain data, importable without torch: the config's typed description (pqv.plan.config) takes its
choices from here, so do the CLI's --help, the Snakefile's sweep (pqv.plan.sweep) and the stages that
implement each entry. Adding a precision, an importance or an engine is an entry here plus its
implementation and test.
"""

from __future__ import annotations

from enum import Enum

NO_ENGINE = "none"  # float precisions use no quantized engine
DENSE = "dense"  # the branch name of the unpruned model (ratio 0): no importance ranked anything
EAGER = "eager"  # the "format" of the eager FP32 baseline: measured like an artifact, never shipped


class Status(str, Enum):
    """An artifact after its fidelity check against its parent (and its branch's training)."""

    VERIFIED = "verified"
    REJECTED = "rejected"  # a lossy recipe that fails the check: kept as a result, never chosen
    # the branch failed for a reason of its own (a diverged finetune, an exact export that changed the
    # function): its files are kept, flagged, with the reason, so a sweep or a search goes on; never chosen
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value

    @staticmethod
    def shippable(value) -> bool:
        """Whether a file with this status may be chosen, shipped, or drawn on the Pareto front: a
        verified one alone. No status (None, NaN, "": a sidecar or summary from before statuses, a
        file nobody checked) is never shippable. The one judge: choose, evaluate, search, plot and
        the summary's readers all ask it."""
        return isinstance(value, str) and value == Status.VERIFIED.value

    @staticmethod
    def word(value) -> str:
        """A status as printed and recorded: its word, or NO_STATUS where there is none."""
        return value.value if isinstance(value, Status) else value if isinstance(value, str) and value else NO_STATUS


NO_STATUS = "missing"  # what a file without a status is called (a probe, a summary row): never shippable


# ONNX Runtime's quantization recipes, as the engines of its formats: every MLAS kernel is the same,
# which recipe is fastest is not (the transformer optimizer made int8 files faster on an AVX2 EPYC
# and slower on an AMX Xeon: docs/latency.md). They are files of the sweep, verified and timed like
# every file, so `pqv choose` and the search ship whichever wins on the host that runs the sweep.
# optimize: ORT's transformer optimizer and quantization pre-processing first (ORT's ViT advice);
# per_channel: int8 weights per output channel (else one scale per tensor); qdq: int8_static as
# QuantizeLinear/DequantizeLinear pairs (else QOperator's QLinearMatMul); precisions: where a
# recipe differs from another at all (QDQ vs QOperator only exists for static int8).
ORT_RECIPES = {
    "mlas": {
        "optimize": True,
        "per_channel": True,
        "qdq": True,
        "help": "ORT's documented ViT recipe: transformer optimizer, pre-processing, per-channel int8 weights, QDQ",
    },
    "mlas_plain": {
        "optimize": False,
        "per_channel": True,
        "qdq": True,
        "help": "torch.onnx.export, then ORT's quantizer with per-channel weights, nothing else",
    },
    "mlas_tensor": {"optimize": True, "per_channel": False, "qdq": True, "help": "the documented recipe, per-tensor int8 weights"},
    "mlas_plain_tensor": {"optimize": False, "per_channel": False, "qdq": True, "help": "the plain recipe, per-tensor int8 weights"},
    "mlas_qop": {
        "optimize": True,
        "per_channel": True,
        "qdq": False,
        "precisions": ("int8_static",),
        "help": "the documented recipe, static int8 in QOperator format (QLinearMatMul)",
    },
}

# Mobile formats: the intermediate representation the quantize stage writes for them, and the
# quantized engines whose kernels their runtime has.
FORMATS = {
    "ptl": {
        "ir": "ts",
        "engines": ("x86", "fbgemm", "qnnpack", "onednn"),
        "help": "TorchScript Lite Interpreter (the paper's format)",
    },
    "pte": {"ir": "pt2", "engines": ("xnnpack",), "help": "ExecuTorch with the XNNPACK delegate"},
    # ONNX Runtime (pqv/common/ort.py), the runtime a user would pick instead; its engines are its recipes
    "onnx": {
        "ir": "onnx",
        "engines": tuple(ORT_RECIPES),
        "needs": "onnx",
        "help": "ONNX Runtime, CPU provider (MLAS kernels), one file per recipe (ORT_RECIPES)",
    },
    "ort": {
        "ir": "onnx",
        "engines": tuple(ORT_RECIPES),
        "needs": "onnx",
        "help": "ORT Mobile's format (ONNX Runtime's mobile packages), one file per recipe (ORT_RECIPES)",
    },
}

# The bar a user sets: the file they get without PQV, ONNX Runtime's plain int8 of the dense model
# (evaluate.without_pqv adds it to every model's sweep; `pqv choose` prints each pick's speed-up over it).
WITHOUT_PQV = {"importance": DENSE, "ratio": "0", "precision": "int8_dynamic", "engine": "mlas_plain", "merge": "", "format": "onnx"}
WITHOUT_PQV_HELP = "ONNX Runtime's plain int8 dynamic file of the dense model (torch.onnx.export, quantize_dynamic)"
ONNX_FORMATS = ("onnx", "ort")
ONNX_TENSORS = ("x", "y")  # the input and output names their session.run takes (an app file says them)
# Optional runtimes: the pip extra that installs them and the modules it must provide.
EXTRAS = {"onnx": ("onnxruntime", "onnx")}

# Precisions: whether they need a quantized engine, whether they are calibrated on images (and so
# read the data set), whether they lose precision (an exported file of a lossy precision that fails
# its check is a rejected recipe; of an exact one, a bug), the formats that can carry them, and the
# largest |artifact - eager FP32| on logits its export check allows (None: judged by cosine).
PRECISIONS = {
    "fp32": {"quantized": False, "calibrated": False, "lossy": False, "formats": ("ptl", "pte", *ONNX_FORMATS), "atol": 1e-4},
    "fp16": {"quantized": False, "calibrated": False, "lossy": True, "formats": ("ptl",), "atol": 5e-2},
    "int8_dynamic": {"quantized": True, "calibrated": False, "lossy": True, "formats": ("ptl", "pte", *ONNX_FORMATS), "atol": None},
    "int8_static": {"quantized": True, "calibrated": True, "lossy": True, "formats": ("ptl", "pte", *ONNX_FORMATS), "atol": None},
    # int8 dynamic activations, int4 weights
    "int4_weight": {"quantized": True, "calibrated": False, "lossy": True, "formats": ("pte",), "atol": None},
}

ENGINES = tuple(dict.fromkeys(e for f in FORMATS.values() for e in f["engines"]))
# each intermediate representation and the formats made from it (one .onnx program: .onnx and .ort)
IRS = {ir: tuple(name for name, f in FORMATS.items() if f["ir"] == ir) for ir in dict.fromkeys(f["ir"] for f in FORMATS.values())}

# Torch-Pruning importance criteria: what each must see before scoring ("weights", "gradients" of
# calibration batches, per-sample gradients for "hessian"), whether it ranks at random, and how pqv.stages.prune builds it (a class of
# torch_pruning.importance, or "module:attribute", with its keyword arguments).
IMPORTANCES = {
    "l1": {"needs": "weights", "make": ("GroupMagnitudeImportance", {"p": 1})},
    "l2": {"needs": "weights", "make": ("GroupMagnitudeImportance", {"p": 2})},
    "lamp": {"needs": "weights", "make": ("LAMPImportance", {"p": 2})},
    "random": {"needs": "weights", "random": True, "make": ("RandomImportance", {})},
    "fpgm": {"needs": "weights", "make": ("FPGMImportance", {"p": 2})},  # filters nearest the geometric median go
    "taylor": {"needs": "gradients", "make": ("GroupTaylorImportance", {})},
    "hessian": {"needs": "hessian", "make": ("pqv.stages.prune:HessianImportance", {})},
}
GRADIENT_IMPORTANCES = tuple(name for name, imp in IMPORTANCES.items() if imp["needs"] != "weights")
# Importances whose ranking prune.seed changes: a random one, and those whose calibration sample it draws.
SEEDED_IMPORTANCES = tuple(name for name, imp in IMPORTANCES.items() if imp.get("random") or name in GRADIENT_IMPORTANCES)

# Ranking scope -> Torch-Pruning's global_pruning flag.
SCOPES = {"uniform": False, "global": True}
# What is removed in attention -> (prune_head_dims, prune_num_heads).
HEAD_MODES = {"dims": (True, False), "whole": (False, True)}

DEVICES = ("auto", "cpu", "cuda")

# The figures the plot stage draws (pqv.stages.plot draws each; the workflow names their files):
# Fig. 2 latency and memory, Fig. 4 accuracy, Fig. 5 importances, Fig. 6 models, Fig. 7 engines
# (the paper's numbering), and accuracy against latency with the Pareto front.
FIGURES = ("fig2_latency_memory", "fig4_accuracy", "fig5_importance", "fig6_models", "fig7_engines", "pareto_accuracy_latency")

# The names timm 1.0.31's create_scheduler_v2 accepts (its if/elif ladder; 'none' is no schedule),
# less 'plateau', which steps per epoch on a metric while PQV steps per update.
# tests/test_config.py checks every one against timm the way pqv.stages.finetune calls it.
SCHEDULERS = ("cosine", "tanh", "step", "constant", "multistep", "poly", "wsd", "rsqrt", "none")


def combinations(precisions, engines, formats):
    """(precision, engine, format) for every meaningful combination of the configured lists."""
    out = []
    for fmt in formats:
        for precision in precisions:
            if fmt not in PRECISIONS[precision]["formats"]:
                continue
            if not PRECISIONS[precision]["quantized"]:
                out.append((precision, NO_ENGINE, fmt))
                continue
            out += [(precision, e, fmt) for e in engines if e in FORMATS[fmt]["engines"] and runs(e, precision)]
    return out


def runs(engine: str, precision: str) -> bool:
    """Whether an engine makes a file of a precision (an ONNX Runtime recipe may apply to some only)."""
    return precision in ORT_RECIPES.get(engine, {}).get("precisions", (precision,))


def ir_of(fmt: str) -> str:
    return FORMATS[fmt]["ir"]
