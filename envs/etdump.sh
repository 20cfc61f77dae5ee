#!/usr/bin/env bash
# Side environment for `pqv profile` on .pte files (envs/etdump/.venv, git-ignored).
#
# The project's executorch 1.3.1 wheel is built without ExecuTorch's event tracer: a .pte runs, but
# ETDump stays empty, so its time cannot be split by operator. executorch 1.5.1's Linux wheel has the
# tracer and XNNPACK's per-operator timings compiled in. Only its runtime is used here (the
# project still exports with 1.3.1): it loads the project's .pte files and writes an ETDump that
# pqv/profile.py reads with executorch.devtools.Inspector. executorch 1.5.1's bindings need a torch
# with a matching C++ ABI: 2.13.0 works; 2.12.1 loads but fails on the first tensor.
#   bash envs/etdump.sh            # ~1 min with a local torch wheel, a few minutes from PyPI
set -euo pipefail
cd "$(dirname "$0")"
python3.11 -m venv etdump/.venv
pip=(etdump/.venv/bin/pip install --quiet --disable-pip-version-check)
"${pip[@]}" torch==2.13.0 numpy pyyaml ruamel.yaml packaging flatbuffers tabulate
# --no-deps: its declared dependencies are for exporting (coremltools, hydra, ...), not the runtime
"${pip[@]}" --no-deps executorch==1.5.1
etdump/.venv/bin/python -c "import torch; from executorch.runtime import Runtime; Runtime.get(); print('envs/etdump ready')"
