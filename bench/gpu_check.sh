#!/usr/bin/env bash
# One prepared GPU check of the Triton kernels (< 5 minutes): first the ahead-of-time compile check
# of every dispatchable kernel configuration for this GPU's architecture (python -m kernels.aot;
# stops here, with its table, if one does not compile or does not fit), then correctness against
# the float64 reference, timings vs eager PyTorch / torch.compile, achieved GB/s vs copy bandwidth.
# Run from anywhere on the GPU machine (torch + triton preinstalled, no pip):
#     bash bench/gpu_check.sh            # results JSON in $OUT/gpu_check.json (+ $OUT/aot.json) when OUT is set
#     bash bench/gpu_check.sh --dry-run  # tiny sizes on CPU, PyTorch path (no GPU needed, no compile check)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
case " $* " in
  *" --dry-run "*) ;;
  *) unset TRITON_INTERPRET  # compiled kernels on the GPU
     command -v nvidia-smi >/dev/null 2>&1 && \
       nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader || true
     arch=$("$PY" -c 'import torch; M, m = torch.cuda.get_device_capability(); print(10 * M + m)' 2>/dev/null) || arch=""
     if [ -n "$arch" ]; then
       echo "== ahead-of-time compile check, sm_$arch (python -m kernels.aot)"
       timeout -k 10 300 "$PY" -m kernels.aot --arch "$arch" --quiet ${OUT:+--json "$OUT/aot.json"}
       rc=$?
       if [ "$rc" != 0 ]; then
         echo "gpu_check: stopped before timing: kernels.aot exit $rc (table / message above)" >&2
         exit "$rc"
       fi
     fi ;;
esac
timeout -k 10 290 "$PY" bench/gpu_check.py "$@"
rc=$?
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "gpu_check: killed at the 290 s limit (partial results, if any, in \$OUT/gpu_check.json)" >&2
fi
exit "$rc"
