"""What an app needs beside a shipped file: `<artifact>.app.json`, readable without Python or PQV.

The labels in output order, the input's shape, dtype and channel order, and the preprocessing as a
list of plain steps (turn by EXIF orientation, convert, resize, center crop, scale, normalize), the
same transforms the workflow scored the file with (pqv.common.datasets: timm 1.0.31's evaluation
transform, `create_transform(is_training=False)`, of the model's data config), each with the
rounding and the PIL behaviour an app on another image library must match. An Android or iOS
developer reads it with any JSON parser (docs/formats.md); tests/test_appfile.py follows the steps
with PIL and numpy alone on EXIF-turned photos of other aspect ratios and gets PQV's input tensor,
and tests/test_data_workflow.py gets the workflow's top-1.
"""

from __future__ import annotations

import math

from ..plan.registry import ONNX_FORMATS, ONNX_TENSORS

FORMAT = 1
RUNTIMES = {
    "ptl": "PyTorch Lite Interpreter (org.pytorch:pytorch_android_lite, LibTorch-Lite)",
    "pte": "ExecuTorch with the XNNPACK backend",
    "onnx": "ONNX Runtime (com.microsoft.onnxruntime:onnxruntime-android, onnxruntime-objc)",
    "ort": "ONNX Runtime Mobile, ORT format (com.microsoft.onnxruntime:onnxruntime-android, onnxruntime-objc)",
}


def describe(data_config: dict, manifest: dict, artifact_name: str, fmt: str) -> dict:
    """The app file of one artifact: `data_config` is the model's (input_size, mean, std,
    interpolation, crop_pct), `manifest` the training split's (class names, value range)."""
    from .datasets import CHANNEL_MODES  # here: pqv.common.datasets imports torch, `pqv choose` reads path_of

    chans, height, width = data_config["input_size"]
    crop_pct = data_config.get("crop_pct", 0.875)
    interpolation = data_config.get("interpolation", "bicubic")
    scaled = [math.floor(height / crop_pct), math.floor(width / crop_pct)]  # timm's scale_size
    pil = (
        f"PIL's Image.resize with {interpolation} resampling, which antialiases: when it shrinks, its filter "
        "widens by the reduction, so every source pixel counts (a plain bilinear or bicubic sample of "
        "another library does not: use an antialiased resize, or PIL's algorithm)"
    )
    if scaled[0] == scaled[1]:  # timm: torchvision's Resize(int), the shorter side, the longer one truncated
        resize = {
            "op": "resize_shorter_side",
            "size": scaled[0],
            "interpolation": interpolation,
            "longer_side": "floor(size * longer / shorter)",
            "why": pil,
        }
    else:  # timm's ResizeKeepRatio(longest=0): one scale for both sides, the smallest that covers size
        resize = {
            "op": "resize_to_cover",
            "size": scaled,
            "interpolation": interpolation,
            "scale": "min(image_height / size[0], image_width / size[1])",
            "new_size": "[round(image_height / scale), round(image_width / scale)] (height, width; round "
            "halves to even, as Python's round)",
            "why": pil,
        }
    steps = [
        {"op": "exif_transpose", "why": "phones store pixels in sensor order: turn them as a photo viewer does"},
        *(
            [
                {
                    "op": "scale_16bit",
                    "low": manifest["value_range"][0],
                    "high": manifest["value_range"][1],
                    "why": "16-bit and float images: (value - low) * 255 / (high - low), rounded, clipped to 0..255",
                }
            ]
            if manifest.get("value_range")
            else []
        ),
        {
            "op": "convert",
            "mode": CHANNEL_MODES[chans],
            "why": GRAY
            if chans == 1
            else "PIL's convert(\"RGB\"): a gray photo's value in all three channels, an alpha channel dropped",
        },
        resize,
        {
            "op": "center_crop",
            "size": [height, width],
            "offset": "left = round((resized_width - size[1]) / 2), top = round((resized_height - size[0]) / 2) "
            "(round halves to even, as Python's round)",
        },
        {"op": "to_float", "scale": 1 / 255, "why": "8-bit values to 0..1"},
        {
            "op": "normalize",
            "mean": list(data_config["mean"]),
            "std": list(data_config["std"]),
            "why": "per channel: (x - mean) / std",
        },
    ]
    return {
        "format": FORMAT,
        "file": artifact_name,
        "runtime": RUNTIMES.get(fmt, fmt),
        "labels": list(manifest["classes"]),
        "input": {
            **({"name": ONNX_TENSORS[0]} if fmt in ONNX_FORMATS else {}),
            "shape": [1, chans, height, width],
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB" if chans == 3 else "gray",
        },
        "preprocess": steps,
        "output": {
            **({"name": ONNX_TENSORS[1]} if fmt in ONNX_FORMATS else {}),
            "shape": [1, len(manifest["classes"])],
            "meaning": "logits in the order of `labels`; the top class is the largest, softmax gives probabilities",
        },
    }


# tests/test_appfile.py checks the fixed-point form against PIL on a million random pixels
GRAY = (
    'PIL\'s convert("L"): ITU-R 601-2 luma, L = R * 299/1000 + G * 587/1000 + B * 114/1000, which PIL computes '
    "in 16-bit fixed point: L = (R * 19595 + G * 38470 + B * 7471 + 32768) >> 16 (the rounded formula but for "
    "about 1 pixel in 2,000, off by one)"
)


def path_of(artifact: str) -> str:
    return f"{artifact}.app.json"
