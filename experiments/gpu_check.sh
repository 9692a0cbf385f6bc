#!/usr/bin/env bash
# One GPU check, ready to run on a machine with an NVIDIA GPU (issue 19): installs the CUDA
# build of jaxlib and the peers, then runs bench_decode.py, bench_train.py --dtype bfloat16
# (with the PyTorch training peer on CUDA) and bench_vs_peers.py (HF PyTorch on CUDA; CT2
# on CUDA when it can translate there), each under its own time limit so the whole check
# ends within ~8 minutes, and gathers everything into one results file,
# $OUT_DIR/gpu_check.md (default runs/gpu_check/; plus each benchmark's JSON).
#
#   bash experiments/gpu_check.sh            # on the GPU machine, from the repository root
#   bash experiments/gpu_check.sh --dry-run  # on a CPU: no installs, the smallest sizes
#
# --dry-run runs the same three benchmarks with tiny shapes on JAX's CPU backend (peers
# only if torch, transformers and ctranslate2 are already installed), so the plumbing is
# tested without a GPU (tests/test_gpu_check.py).
# On a GPU box with no package index, WHEELS=DIR installs the wheels in DIR (no resolver)
# and an image that already holds a CUDA jax and seqjax's dependencies skips the install.
# LIMIT_DECODE/LIMIT_TRAIN/LIMIT_PEERS (seconds) override the per-benchmark time limits.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
  *) echo "gpu_check.sh: unknown option $1 (use --dry-run or nothing)" >&2; exit 2 ;;
esac
OUT_DIR=${OUT_DIR:-runs/gpu_check}  # not results/gpu_check: that holds the committed H200 run
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
  # Wheels carried to a machine that cannot reach a package index (WHEELS=dir): unpacked
  # into a private site dir, with no dependency resolution, ahead of the image's packages.
  if [[ -n ${WHEELS:-} ]]; then
    step wheels 120 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/gpu_check_site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  # An image that already has a CUDA jaxlib and the peers (an offline GPU box) is used as it
  # is; otherwise install the CUDA wheel of jaxlib first, then the peers.
  if $PY -c "import jax, flax, optax, orbax.checkpoint, sacrebleu, sentencepiece, grain, rich
assert jax.default_backend() == 'gpu'" > "$OUT_DIR/preinstalled.log" 2>&1; then
    echo "| install | skipped: the image has a CUDA jax and seqjax's dependencies | 0 |" \
      >> "$OUT_DIR/steps.md"
  else
    step install 240 bash -c "$PY -m pip install -q -e '.[gpu,experiments]' && \
      $PY -m pip install -q torch 'transformers>=5.0,<6' 'safetensors>=0.4,<1' \
      'ctranslate2>=4.5,<5'"
  fi
  DECODE=(--model base --batches 1,16,64 --repeats 5)
  # One batch per model: each cell compiles the step (~45 s for base on an H200, measured);
  # two batches of both models outran 150 s there.
  TRAIN=(--models small,base --batches 256 --dtype bfloat16 --repeats 5 --gemm-repeats 1 \
    --torch --torch-device cuda)
  PEERS=(--device cuda --repeats 3)
  LIMITS=(${LIMIT_DECODE:-120} ${LIMIT_TRAIN:-200} ${LIMIT_PEERS:-180})
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
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax',
optax.__version__, jax.default_backend(), jax.devices())" >> "$OUT_DIR/device.txt" 2>&1 || true

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
