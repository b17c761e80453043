#!/usr/bin/env bash
# One row of the MEDS paper's Tables 1 and 2 on one setup:
#   bash recipes/meds/run_paper.sh <setup> <method> [hydra overrides...]
# setups: recipes/meds/config/setup/*.yaml (tiny_cpu, smollm2_cpu, qwen3_1p7b, qwen25_math_7b, qwen3_8b)
# methods: recipes/meds/config/method/*.yaml (grpo, dapo, grpo_entropy, meds_dapo, meds_grpo, meds_single,
#          meds_all, meds_all_diff, meds_half_diff)
# GPU setups read MEDS_TRAIN_FILE / MEDS_VAL_FILE (default ~/data/meds/unified_math_train.parquet and
# ~/data/meds/aime24_test.parquet, written by `python -m data_prep.qwen_math`) and MEDS_MODEL_PATH (default: hub id).
# verl's metrics go to $OUT/metrics.<attempt>.jsonl (OUT defaults to outputs/<setup>/<method>); the run summary
# (validation accuracy, the first steps' answer-found fraction and clip ratio, penalties) is printed at the end.
# For the CPU setups, recipes/tiny_cpu/run_tiny_cpu.sh and recipes/smollm2_cpu/run_smollm2_cpu.sh also build the
# data and the model first (here, pass data.* and actor_rollout_ref.model.path yourself).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SETUP=${1:?usage: run_paper.sh <setup> <method> [overrides...]}
METHOD=${2:?usage: run_paper.sh <setup> <method> [overrides...]}
shift 2
PY=${PY:-$ROOT/.venv/bin/python}
[ -f "$ROOT/recipes/meds/config/setup/$SETUP.yaml" ] || { echo "unknown setup '$SETUP'" >&2; exit 2; }
[ -f "$ROOT/recipes/meds/config/method/$METHOD.yaml" ] || { echo "unknown method '$METHOD'" >&2; exit 2; }
case "$SETUP" in *_cpu) export VERL_MEDS_CPU=1 OMP_NUM_THREADS=1 ;; esac
OUT=${OUT:-$ROOT/outputs/$SETUP/$METHOD}
mkdir -p "$OUT"
# verl's file logger truncates its file on open: give every attempt (first run, each resume) its own file.
attempt=0
while [ -e "$OUT/metrics.$attempt.jsonl" ]; do attempt=$((attempt + 1)); done
export VERL_FILE_LOGGER_PATH="$OUT/metrics.$attempt.jsonl"
"$PY" -m verl_meds.verl.main --config-path "$ROOT/recipes/meds/config" --config-name paper \
  setup="$SETUP" method="$METHOD" "$@"
"$PY" -m verl_meds.verl.summary "$OUT"
