#!/usr/bin/env bash
# Issue 17's MRT question on one GPU, in one call: the MRT sweep on the validation set, then
# the configuration with the best validation BLEU against the teacher-forcing control on the
# test set (every seed: same updates, same batches; paired bootstrap), then scheduled
# sampling and self-distillation if time is left. All fine-tunes start from BASE and run
# STEPS updates; each stage has a time limit, so a slow device cuts configurations or seeds,
# never updates (every finished row is defined by updates and seed).
#
#   BASE=runs/eb_base bash experiments/gpu_exposure_bias.sh            # on the GPU machine
#   BASE=runs/eb_base bash experiments/gpu_exposure_bias.sh --dry-run  # CPU: 2 updates
#
# BASE: a teacher-forced run directory; config.json, tokenizer/, best/ and data/ are read
# (checkpoints/ is not, so a copy without it travels light: ~32 MB for rnn_small).
# STEPS: updates per fine-tune (sweep and test alike; default 500). CONFIGS: the sweep
# (default tf,mrt,mrt-mle0.3,mrt-beam-mle0.3). SEEDS: default 0,1,2.
# LIMIT_SWEEP/LIMIT_TEST/LIMIT_MORE: seconds per stage (default 300/200/60).
# WHEELS=DIR: wheels to install without an index (as in gpu_check.sh).
# Writes OUT_DIR (default runs/gpu_exposure_bias): exposure_bias_full.*, mrt_sweep_full.*,
# the stage logs, and TAR (default OUT_DIR/eb_results.tar.gz): the tables, plots, logs and
# every run's evaluation (eval_*.json, hypotheses, metrics), checkpoints left out, so the
# tables can be rebuilt elsewhere by rerunning the same exposure_bias.py commands on it.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
  *) echo "gpu_exposure_bias.sh: unknown option $1 (use --dry-run or nothing)" >&2; exit 2 ;;
esac
BASE=${BASE:?set BASE to a teacher-forced run directory (see --help)}
[[ -f $BASE/config.json && -d $BASE/best ]] || {
  echo "gpu_exposure_bias.sh: BASE=$BASE has no config.json or best/ (not a seqjax run)" >&2
  exit 2
}
OUT_DIR=${OUT_DIR:-runs/gpu_exposure_bias}
WORK=$OUT_DIR/work  # the tar below names its files relative to OUT_DIR
TAR=${TAR:-$OUT_DIR/eb_results.tar.gz}
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR" "$WORK"
EXTRA=()
if [[ $DRY == 1 ]]; then
  export JAX_PLATFORMS=cpu
  STEPS=${STEPS:-2}
  CONFIGS=${CONFIGS:-tf,mrt}
  SEEDS=${SEEDS:-0,1}
  EXTRA=(--eval-sentences 32)
else
  if [[ -n ${WHEELS:-} ]]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu_eb_site "$WHEELS"/*.whl || exit 1
    export PYTHONPATH=/tmp/gpu_eb_site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
STEPS=${STEPS:-500}
CONFIGS=${CONFIGS:-tf,mrt,mrt-mle0.3,mrt-beam-mle0.3}
SEEDS=${SEEDS:-0,1,2}
EB=($PY experiments/exposure_bias.py --full --base "$BASE" --work "$WORK" --out "$OUT_DIR"
  --ft-steps "$STEPS" --sweep-steps "$STEPS" --beam 0 --seeds "$SEEDS" "${EXTRA[@]}")

echo "| stage | exit code | seconds |" > "$OUT_DIR/steps.md"
echo "|---|---:|---:|" >> "$OUT_DIR/steps.md"
stage() {  # stage NAME SECONDS ARGS...: exposure_bias.py under a time limit; failures recorded
  local name=$1 limit=$2 t0=$SECONDS rc=0; shift 2
  echo "== $name (limit ${limit}s): ${EB[*]} $*"
  timeout "$limit" "${EB[@]}" "$@" > "$OUT_DIR/$name.log" 2>&1 || rc=$?
  echo "| $name | $rc | $((SECONDS - t0)) |" >> "$OUT_DIR/steps.md"
  grep -E "^\[sweep|^done|Error|error:" "$OUT_DIR/$name.log" | cut -c1-240 | tail -n 8
}

{
  date -u +%Y-%m-%dT%H:%M:%SZ
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
  $PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__,
jax.default_backend(), jax.devices())"
} > "$OUT_DIR/device.txt" 2>&1
cat "$OUT_DIR/device.txt"

stage sweep "${LIMIT_SWEEP:-300}" --mrt-sweep --only "$CONFIGS"
stage test "${LIMIT_TEST:-200}" --mrt-config best --only tf
if [[ ${LIMIT_MORE:-60} -gt 0 ]]; then
  stage more "${LIMIT_MORE:-60}" --mrt-config best --only tf,ss,distill
fi
cat "$OUT_DIR/steps.md"

# Everything but checkpoints, in one file (the device returns few files).
(cd "$OUT_DIR" && find . -path ./work -prune -o -type f ! -name "$(basename "$TAR")" -print;
 cd "$WORK" && find . \( -name 'eval_*.json' -o -name 'hyps_*' -o -name 'metrics.jsonl' \
   -o -name 'exposure_bias_train.json' -o -name config.json \) -printf 'work/%P\n') \
  | sed 's|^\./||' | sort -u > "$OUT_DIR/files.txt"
tar -czf "$TAR" -C "$OUT_DIR" -T "$OUT_DIR/files.txt"  # every name listed exists
echo "wrote $TAR ($(wc -l < "$OUT_DIR/files.txt") files)"
