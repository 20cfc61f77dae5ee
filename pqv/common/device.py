"""Where a stage computes: one rule for every stage.

Gradients and accuracy passes go to CUDA when it is there, unless the config says `device: cpu`;
latency is always measured on the CPU, in the artifact's own runtime (evaluate, profile).
"""

from __future__ import annotations

import torch

from ..plan.errors import PQVError
from ..plan.registry import DEVICES as CHOICES


def describe(device: torch.device, amp_dtype: str | None = None) -> str:
    """What a job computed on, for sidecars and the summary's `device` column: "cpu (fp32)" or
    "cuda: NVIDIA H200 (amp float16)"; branches trained on different hardware show it."""
    if device.type != "cuda":
        return "cpu (fp32)"
    name = torch.cuda.get_device_name(device)
    return f"cuda: {name} ({f'amp {amp_dtype}' if amp_dtype else 'fp32'})"


def resolve(preference: str = "auto", cuda_available: bool | None = None) -> torch.device:
    """`auto`: cuda:0 if available, else cpu; `cpu`: cpu; `cuda`: cuda:0 or a one-line error."""
    if preference not in CHOICES:
        raise PQVError(f"unknown device '{preference}'", f"use one of {', '.join(CHOICES)}")
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if preference == "cpu" or (preference == "auto" and not available):
        return torch.device("cpu")
    if not available:
        raise PQVError(
            "device 'cuda' was asked for but this machine has no CUDA GPU",
            "set device: auto (or cpu) in the config, or run on a GPU node",
        )
    return torch.device("cuda", 0)
