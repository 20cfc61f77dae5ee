"""Which precision runs on which engine in which mobile format.

Plain data, importable without torch, so the Snakefile expands the sweep from the same table
the stages check their arguments against.
"""
from __future__ import annotations

NO_ENGINE = "none"  # float precisions use no quantized engine
EAGER = "eager"  # the "format" of the eager FP32 baseline: measured like an artifact, never shipped

# Mobile formats: the intermediate representation the quantize stage writes for them, and the
# quantized engines whose kernels their runtime has.
FORMATS = {
    "ptl": {"ir": "ts", "engines": ("x86", "fbgemm", "qnnpack", "onednn")},  # TorchScript Lite
    "pte": {"ir": "pt2", "engines": ("xnnpack",)},  # ExecuTorch, XNNPACK delegate
}

# Precisions: whether they need a quantized engine, whether they are calibrated on images (and so
# read the data set), whether they lose precision (an exported file of a lossy precision that fails
# its check is a rejected recipe; of an exact one, a bug), and the formats that can carry them.
PRECISIONS = {
    "fp32": {"quantized": False, "calibrated": False, "lossy": False, "formats": ("ptl", "pte")},
    "fp16": {"quantized": False, "calibrated": False, "lossy": True, "formats": ("ptl",)},
    "int8_dynamic": {"quantized": True, "calibrated": False, "lossy": True, "formats": ("ptl", "pte")},
    "int8_static": {"quantized": True, "calibrated": True, "lossy": True, "formats": ("ptl", "pte")},
    "int4_weight": {"quantized": True, "calibrated": False, "lossy": True, "formats": ("pte",)},  # int8 dynamic activations, int4 weights
}

ENGINES = tuple(e for f in FORMATS.values() for e in f["engines"])
IRS = {f["ir"]: name for name, f in FORMATS.items()}


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
            out += [(precision, e, fmt) for e in engines if e in FORMATS[fmt]["engines"]]
    return out


def ir_of(fmt: str) -> str:
    return FORMATS[fmt]["ir"]
