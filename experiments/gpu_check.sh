#!/usr/bin/env bash
# One GPU check, ready to run on a machine with an NVIDIA GPU (issue 19): installs the CUDA
# build of jaxlib and the peers, then runs bench_decode.py, bench_train.py --dtype bfloat16
# and bench_vs_peers.py (HF PyTorch on CUDA; CT2 on CUDA when its wheel sees the GPU),
# each under its own time limit so the whole check ends within ~8 minutes, and gathers
# everything into one results file, $OUT_DIR/gpu_check.md (plus each benchmark's JSON).
#
#   bash experiments/gpu_check.sh            # on the GPU machine, from the repository root
#   bash experiments/gpu_check.sh --dry-run  # on a CPU: no installs, the smallest sizes
#
# --dry-run runs the same three benchmarks with tiny shapes on JAX's CPU backend (peers
# only if torch, transformers and ctranslate2 are already installed), so the plumbing is
# tested without a GPU (tests/test_gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
  *) echo "gpu_check.sh: unknown option $1 (use --dry-run or nothing)" >&2; exit 2 ;;
esac
OUT_DIR=${OUT_DIR:-experiments/results/gpu_check}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
REPORT="$OUT_DIR/gpu_check.md"

step() {  # step NAME SECONDS CMD...: run with a time limit; a failure is recorded, not fatal
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS rc=0
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1 || rc=$?
  echo "| $name | $rc | $((SECONDS - t0)) |" >> "$OUT_DIR/steps.md"
  tail -n 3 "$OUT_DIR/$name.log"
}

echo "| step | exit code | seconds |" > "$OUT_DIR/steps.md"
echo "|---|---:|---:|" >> "$OUT_DIR/steps.md"

if [[ $DRY == 0 ]]; then
  # The CUDA wheel of jaxlib first, then the CUDA build of torch that pip resolves by default.
  step install 240 bash -c "$PY -m pip install -q -e '.[gpu,experiments]' && \
    $PY -m pip install -q torch 'transformers>=5.0,<6' 'safetensors>=0.4,<1' 'ctranslate2>=4.5,<5'"
  DECODE=(--model base --batches 1,16,64 --repeats 5)
  TRAIN=(--models small,base --dtype bfloat16 --repeats 5)
  PEERS=(--device cuda --repeats 3)
  LIMITS=(120 90 150)
else
  export JAX_PLATFORMS=cpu
  DECODE=(--model tiny --batches 1 --new-tokens 4 --src-len 4 --repeats 1)
  TRAIN=(--models tiny --batches 2 --src-len 8 --tgt-len 8 --dtype bfloat16 --repeats 1 \
    --warmup 1 --gemm-repeats 1)
  PEERS=(--batches 1 --methods greedy --new-tokens 4 --src-len 4 --repeats 1)
  LIMITS=(120 120 300)
fi

if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    > "$OUT_DIR/device.txt" 2>&1 || true
else
  echo "no nvidia-smi (no GPU)" > "$OUT_DIR/device.txt"
fi
$PY -c "import jax; print('jax', jax.__version__, jax.default_backend(), jax.devices())" \
  >> "$OUT_DIR/device.txt" 2>&1 || true

step bench_decode "${LIMITS[0]}" $PY experiments/bench_decode.py "${DECODE[@]}" \
  --out "$OUT_DIR/bench_decode"
step bench_train "${LIMITS[1]}" $PY experiments/bench_train.py "${TRAIN[@]}" \
  --out "$OUT_DIR/bench_train"
if $PY -c "import torch, transformers, ctranslate2" 2>/dev/null; then
  step bench_vs_peers "${LIMITS[2]}" $PY experiments/bench_vs_peers.py "${PEERS[@]}" \
    --out "$OUT_DIR/bench_vs_peers"
else
  echo "| bench_vs_peers | skipped: torch/transformers/ctranslate2 not installed | 0 |" \
    >> "$OUT_DIR/steps.md"
fi

{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%M:%SZ)$([[ $DRY == 1 ]] && echo ', dry run on CPU'))"
  echo
  echo '```'; cat "$OUT_DIR/device.txt"; echo '```'
  echo
  cat "$OUT_DIR/steps.md"
  for b in bench_decode bench_train bench_vs_peers; do
    if [[ -f "$OUT_DIR/$b.md" ]]; then echo; echo "## $b"; echo; cat "$OUT_DIR/$b.md"; fi
  done
} > "$REPORT"
echo "wrote $REPORT"
