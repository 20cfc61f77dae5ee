"""PQV: prune, finetune, quantize and export timm Vision Transformers for mobile."""

__version__ = "0.1.0"
