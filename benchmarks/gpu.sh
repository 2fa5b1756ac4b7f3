#!/usr/bin/env bash
# Run convscope's attribution, features, tracking and scale benchmarks on a CUDA GPU and print
# their figures (issue 14, item 7). One prepared script, to run as is on a machine with a GPU:
#
#     benchmarks/gpu.sh              # full sizes
#     benchmarks/gpu.sh --quick      # each benchmark's --quick sizes (a few minutes in all)
#
# Environment: PYTHON (default .venv/bin/python, else python3), DEVICE (default cuda; cpu for
# a dry run of the script itself),
# OUT (a folder: each benchmark's output is also written there as <name>.txt, the scale
# figures as scale.json; default a new temporary folder), BENCH_TIMEOUT (seconds per
# benchmark, default 600), MODELS (bench_scale's --models; default its six models).
# A benchmark that has no --device option yet is reported as skipped, not run on the CPU.
# Exit status: 0 when every benchmark ran and passed, 1 when one failed or was skipped, 2 when
# there is no CUDA device.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
QUICK=()
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=(--quick) ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown argument $arg (use --quick or nothing)" >&2; exit 2 ;;
    esac
done
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-$(mktemp -d -t convscope-gpu-XXXXXX)}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
mkdir -p "$OUT"
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1

if ! "$PYTHON" - "$DEVICE" <<'EOF'
import sys
import torch
dev = sys.argv[1]
if dev == "cpu":  # a dry run of this script on a machine without a GPU
    sys.exit(print(f"device cpu (a dry run), torch {torch.__version__}"))
if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA "
             "device: run this on a machine with an NVIDIA GPU and its driver.")
d = torch.device(dev)
print(f"device {dev}: {torch.cuda.get_device_name(d)}, "
      f"{torch.cuda.get_device_properties(d).total_memory / 2**30:.0f} GiB, "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF
then
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv,noheader
echo "figures also under $OUT"

declare -A STATUS
run() {  # run NAME SCRIPT ARGS...: with --device, tee'd into $OUT/NAME.txt
    local name=$1 script=$2; shift 2
    if ! grep -qE -- '"--device"|add_device_arg' "$script"; then
        echo "== $name: SKIPPED: $script has no --device option yet"
        STATUS[$name]="skipped (no --device option)"
        return
    fi
    echo "== $name: $PYTHON $script --device $DEVICE $*"
    local t0=$SECONDS
    timeout "$BENCH_TIMEOUT" "$PYTHON" "$script" --device "$DEVICE" "$@" 2>&1 \
        | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    if [[ $rc -eq 0 ]]; then
        STATUS[$name]="ok, $((SECONDS - t0)) s"
    elif [[ $rc -eq 124 ]]; then
        STATUS[$name]="timed out after ${BENCH_TIMEOUT} s"
    else
        STATUS[$name]="failed (exit $rc)"
    fi
}

run attribution benchmarks/bench_explain.py "${QUICK[@]}"
run scorecam benchmarks/bench_scorecam.py "${QUICK[@]}"
run features benchmarks/bench_features.py "${QUICK[@]}"
run tracking benchmarks/bench_tracking.py --overhead "${QUICK[@]}"
SCALE=(--json "$OUT/scale.json" "${QUICK[@]}")
[[ -n "${MODELS:-}" ]] && SCALE+=(--models "$MODELS")
run scale benchmarks/bench_scale.py "${SCALE[@]}"

echo
echo "== summary ($DEVICE)"
rc=0
for name in attribution scorecam features tracking scale; do
    echo "$name: ${STATUS[$name]}"
    [[ ${STATUS[$name]} == ok* ]] || rc=1
done
exit $rc
