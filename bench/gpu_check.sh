#!/usr/bin/env bash
# One prepared GPU check of the Triton kernels (< 5 minutes): correctness against the float64
# reference, timings vs eager PyTorch / torch.compile, achieved GB/s vs copy bandwidth.
# Run from anywhere on the GPU machine (torch + triton preinstalled, no pip):
#     bash bench/gpu_check.sh            # results JSON in $OUT/gpu_check.json when OUT is set
#     bash bench/gpu_check.sh --dry-run  # tiny sizes on CPU, PyTorch path (no GPU needed)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
case " $* " in
  *" --dry-run "*) ;;
  *) unset TRITON_INTERPRET  # compiled kernels on the GPU
     command -v nvidia-smi >/dev/null 2>&1 && \
       nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader || true ;;
esac
PY="${PYTHON:-python}"
timeout -k 10 290 "$PY" bench/gpu_check.py "$@"
rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "gpu_check: killed at the 290 s limit (partial results, if any, in \$OUT/gpu_check.json)" >&2
fi
exit "$rc"
