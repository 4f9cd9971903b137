#!/usr/bin/env bash
# The device check of issue 17, as one prepared script (under 5 minutes on one GPU):
#   (1) bench_scale (a): streamed pinv / analytic on the seed model, N = 1e4, 1e5, 1e6,
#       time per output and peak RSS, with the model on the device;
#   (2) bench_analytic: nninv pinv / analytic against the floor, on the device;
#   (3) bench_cnn_device: optimize on bench_optimize's small CNN for 10,000 targets on the
#       device, against a CPU run of --cpu-n of them in the same process.
# Each step runs under its own time limit and the script goes on after a failed step;
# the exit status is 0 only when every step met its targets.
#
# Usage: benchmarks/gpu_check.sh [--device cuda] [--n 10000] [--sizes 10000,100000,1000000]
#                                [--min-rows 1e6] [--cpu-n 64] [--threads 8]
# Check it on a CPU with small sizes, e.g.
#   benchmarks/gpu_check.sh --device cpu --n 64 --sizes 2000,20000 --min-rows 2e4 --cpu-n 8
# benchmarks/_cache (git-ignored) holds the CNN bench_optimize trained; carry it to the
# device machine, else the CNN is trained there first (3 epochs).
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda N=10000 SIZES=10000,100000,1000000 MIN_ROWS=1e6 CPU_N=64 THREADS=8
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --n) N=$2; shift 2 ;;
    --sizes) SIZES=$2; shift 2 ;;
    --min-rows) MIN_ROWS=$2; shift 2 ;;
    --cpu-n) CPU_N=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python}
"$PY" - <<EOF || exit 2
import torch
d = torch.device("$DEVICE")
if d.type == "cuda" and not torch.cuda.is_available():
    raise SystemExit("gpu_check.sh: --device cuda but torch sees no CUDA device")
print("torch", torch.__version__, "device", d,
      torch.cuda.get_device_name(d) if d.type == "cuda" else "(CPU)")
EOF

status=0
step() {
  local limit=$1; shift
  echo
  echo "=== $* (limit ${limit} s)"
  local t0=$SECONDS
  timeout "$limit" "$PY" "$@"
  local rc=$?
  echo "=== rc $rc, $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || status=1
}

step 120 benchmarks/bench_scale.py --device "$DEVICE" --no-ray --sizes "$SIZES" \
  --repeats 3 --min-rows "$MIN_ROWS" --threads "$THREADS"
step 60 benchmarks/bench_analytic.py --device "$DEVICE" --n "$N" --repeats 15 \
  --components 5 --threads "$THREADS"
step 100 benchmarks/bench_cnn_device.py --device "$DEVICE" --n "$N" --cpu-n "$CPU_N" \
  --threads "$THREADS"
exit $status
