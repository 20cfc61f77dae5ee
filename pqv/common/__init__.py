"""What the stages share (docs/architecture.md): model files and architectures (store, arch), the
XNNPACK-friendly layers, token merging (tome), data sets from a manifest (datasets), ONNX Runtime
(ort), the device, progress bars, usage lines and app files. Imports the plan, never a stage.
"""
