"""What the stages share (docs/architecture.md): model files and architectures (store, arch), the
XNNPACK-friendly layers, token merging (tome), data sets from a manifest (datasets), ONNX Runtime
(ort), training's checkpoints, torch.distributed and a job's time limit (checkpoint, distributed,
timelimit), the device, progress bars, usage lines, app files, and what the config check asks timm
(timm_facts). Imports the plan, never a stage.
"""
