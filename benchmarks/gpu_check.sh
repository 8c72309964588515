#!/usr/bin/env bash
# The GPU check on one H100/H200 in under 10 minutes: benchmarks/gpu_check.sh [gpu_check.py options]
#
# Uses .venv/bin/python when there is one, else $PYTHON or python3. The GPU machines' image has torch
# but not ray, open_clip_torch or pydantic: carry them as Python 3.12 wheels in .whl/ (see
# docs/performance.md, "GPU check"); they are installed into /tmp/site when an import fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c "import ray, open_clip, pydantic, yaml" 2>/dev/null && [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# raymmft from this checkout, without installing it
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
exec timeout 570 "$PYTHON" benchmarks/gpu_check.py "$@"
