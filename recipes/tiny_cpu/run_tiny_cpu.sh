#!/usr/bin/env bash
# Tiny CPU recipe: build the synthetic task and the tiny warm-started model (cached), train with real verl on CPU,
# then print a summary. Usage:
#   bash recipes/tiny_cpu/run_tiny_cpu.sh [METHOD] [hydra overrides...]
# METHOD is a file of recipes/meds/config/method/ (meds_dapo, dapo, grpo, grpo_entropy, meds_grpo, meds_single,
# meds_all, meds_all_diff, meds_half_diff); `meds` is short for meds_dapo (the paper's main setting).
# Environment: OUT (output folder, default outputs/tiny_cpu/<method>), CACHE (default .cache/tiny_cpu),
#              STEPS (training steps, default 20), SEED (data and model seed, default 0).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
METHOD=${1:-meds}
shift || true
[ "$METHOD" = meds ] && METHOD=meds_dapo
if [ ! -f "$ROOT/recipes/meds/config/method/$METHOD.yaml" ]; then
  echo "unknown method '$METHOD'; expected one of: $(ls "$ROOT/recipes/meds/config/method" | sed 's/.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
PY=${PY:-$ROOT/.venv/bin/python}
CACHE=${CACHE:-$ROOT/.cache/tiny_cpu}
OUT=${OUT:-$ROOT/outputs/tiny_cpu/$METHOD}
STEPS=${STEPS:-20}
SEED=${SEED:-0}
export VERL_MEDS_CPU=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

if [ ! -f "$CACHE/data_seed$SEED/train.parquet" ]; then
  "$PY" -m data_prep.synthetic --out "$CACHE/data_seed$SEED" --n-train 2000 --n-test 64 --seed "$SEED"
fi
"$PY" -m data_prep.tiny_model --out "$CACHE/model_seed$SEED" --seed "$SEED"

# verl's file logger truncates its file on open: give every attempt (first run, each resume) its own file.
attempt=0
while [ -e "$OUT/metrics.$attempt.jsonl" ]; do attempt=$((attempt + 1)); done
export VERL_FILE_LOGGER_PATH="$OUT/metrics.$attempt.jsonl"

"$PY" -m verl_meds.verl.main \
  --config-path "$ROOT/recipes/meds/config" --config-name paper setup=tiny_cpu method="$METHOD" \
  data.train_files="$CACHE/data_seed$SEED/train.parquet" \
  data.val_files="$CACHE/data_seed$SEED/test.parquet" \
  actor_rollout_ref.model.path="$CACHE/model_seed$SEED" \
  trainer.default_local_dir="$OUT/checkpoints" \
  trainer.total_training_steps="$STEPS" \
  "$@"

"$PY" -m verl_meds.verl.summary "$OUT"
