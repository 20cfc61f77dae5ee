"""What an app needs beside a shipped file: `<artifact>.app.json`, readable without Python or PQV.

The labels in output order, the input's shape, dtype and channel order, and the preprocessing as a
list of plain steps (turn by EXIF orientation, convert, resize, center crop, scale, normalize), the
same transforms the workflow scored the file with (timm's evaluation transform of the model's
data config). An Android or iOS developer reads it with any JSON parser (docs/formats.md);
tests/test_data_workflow.py feeds a raw image through these steps alone and gets the workflow's top-1.
"""
from __future__ import annotations

import math

from .datasets import CHANNEL_MODES
from .registry import ONNX_FORMATS, ONNX_TENSORS

FORMAT = 1
RUNTIMES = {"ptl": "PyTorch Lite Interpreter (org.pytorch:pytorch_android_lite, LibTorch-Lite)",
            "pte": "ExecuTorch with the XNNPACK backend",
            "onnx": "ONNX Runtime (com.microsoft.onnxruntime:onnxruntime-android, onnxruntime-objc)",
            "ort": "ONNX Runtime Mobile, ORT format (com.microsoft.onnxruntime:onnxruntime-android, onnxruntime-objc)"}


def describe(data_config: dict, manifest: dict, artifact_name: str, fmt: str) -> dict:
    """The app file of one artifact: `data_config` is the model's (input_size, mean, std,
    interpolation, crop_pct), `manifest` the training split's (class names, value range)."""
    chans, height, width = data_config["input_size"]
    crop_pct = data_config.get("crop_pct", 0.875)
    interpolation = data_config.get("interpolation", "bicubic")
    if height == width:  # timm resizes the shorter side, then crops the center
        resize = {"op": "resize_shorter_side", "size": math.floor(height / crop_pct), "interpolation": interpolation,
                  "longer_side": "floor(size * longer / shorter)"}
    else:
        resize = {"op": "resize", "size": [math.floor(height / crop_pct), math.floor(width / crop_pct)],
                  "interpolation": interpolation}
    steps = [
        {"op": "exif_transpose", "why": "phones store pixels in sensor order: turn them as a photo viewer does"},
        *([{"op": "scale_16bit", "low": manifest["value_range"][0], "high": manifest["value_range"][1],
            "why": "16-bit and float images: (value - low) * 255 / (high - low), rounded, clipped to 0..255"}]
          if manifest.get("value_range") else []),
        {"op": "convert", "mode": CHANNEL_MODES[chans]},
        resize,
        {"op": "center_crop", "size": [height, width]},
        {"op": "to_float", "scale": 1 / 255, "why": "8-bit values to 0..1"},
        {"op": "normalize", "mean": list(data_config["mean"]), "std": list(data_config["std"]),
         "why": "per channel: (x - mean) / std"},
    ]
    return {
        "format": FORMAT,
        "file": artifact_name,
        "runtime": RUNTIMES.get(fmt, fmt),
        "labels": list(manifest["classes"]),
        "input": {**({"name": ONNX_TENSORS[0]} if fmt in ONNX_FORMATS else {}),
                  "shape": [1, chans, height, width], "dtype": "float32", "layout": "NCHW",
                  "channels": "RGB" if chans == 3 else "gray"},
        "preprocess": steps,
        "output": {**({"name": ONNX_TENSORS[1]} if fmt in ONNX_FORMATS else {}),
                   "shape": [1, len(manifest["classes"])], "meaning": "logits in the order of `labels`; "
                   "the top class is the largest, softmax gives probabilities"},
    }


def path_of(artifact: str) -> str:
    return f"{artifact}.app.json"
