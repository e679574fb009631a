#!/usr/bin/env bash
# The CUDA check, in one go on a GPU machine (under 8 minutes): the `cuda` tests, then the training
# speed benchmark on the GPU (ours vs hand-written, fp32 and AMP). Results land in $OUT.
#
# The GPU machine has torch, numpy, networkx, scikit-learn, onnx, pytest and psutil but not what
# the compiler needs besides; `make gpu-wheels` downloads those wheels into .whl/ here (Python
# 3.12, x86-64), and this script installs them into /tmp/site there. On a machine that has
# everything (a GPU workstation with `make test` done), it uses what is installed.
# Run: bash benchmarks/gpu_check.sh        (carry .whl when the device tool sends the tree)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
} 2>&1 | tee "$OUT/machine.txt"

status=0
timeout 240 "$PY" -m pytest -m cuda tests/test_cuda.py -p no:cacheprovider -q -rA \
  --junitxml="$OUT/cuda_tests.xml" 2>&1 | tee "$OUT/cuda_tests.log" || status=1

for precision in fp32 amp; do
  flag=$([ "$precision" = amp ] && echo --amp || true)
  timeout 150 "$PY" benchmarks/train_speed.py --device cuda $flag --repeats 3 2>&1 \
    | tee "$OUT/train_speed_$precision.txt" || status=1
done
if [ -f benchmarks/first_point.py ]; then
  timeout 60 "$PY" benchmarks/first_point.py --device cuda 2>&1 | tee "$OUT/first_point.txt" || status=1
fi
exit $status
