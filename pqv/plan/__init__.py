"""The plan: what a config makes, checked and enumerated without torch (docs/architecture.md).

Settings (config), every choice (registry), the sweep and its jobs, the search's rounds,
resources, what reruns a job (reruns), the data set as folders and manifests, JSON files, errors.
Snakemake imports this package alone, in the process that plans and in every job's process, so it
never imports torch, timm, torch_pruning, executorch or onnxruntime, not even lazily.
"""
