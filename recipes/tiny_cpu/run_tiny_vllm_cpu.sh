#!/usr/bin/env bash
# The tiny CPU recipe with verl's vLLM async rollout instead of the hf rollout (docs/vllm-cpu.md). Usage:
#   bash scripts/install_vllm_cpu.sh                                  # once: creates .venv-vllm
#   bash recipes/tiny_cpu/run_tiny_vllm_cpu.sh [METHOD] [hydra overrides...]
# Same methods and environment variables as run_tiny_cpu.sh (OUT defaults to outputs/tiny_vllm_cpu/<method>). The
# model is the tiny model with 2 attention heads of size 32 (vLLM's CPU attention rejects size 16), cached as
# <CACHE>/model_seed<SEED>_vllm_cpu; the rollout settings are recipes/meds/config/rollout_engine/vllm_cpu.yaml.
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
PY=${PY:-$ROOT/.venv-vllm/bin/python}
if ! "$PY" -c "import vllm" >/dev/null 2>&1; then
  echo "no vLLM environment at $PY: run 'bash scripts/install_vllm_cpu.sh' first (or set PY)" >&2
  exit 2
fi
CACHE=${CACHE:-$ROOT/.cache/tiny_cpu}
OUT=${OUT:-$ROOT/outputs/tiny_vllm_cpu/$METHOD}
STEPS=${STEPS:-20}
SEED=${SEED:-0}
MODEL="$CACHE/model_seed${SEED}_vllm_cpu"
# CPU mode for verl_meds; vLLM's CPU platform and its KV cache (GiB) for the rollout server.
export VERL_MEDS_CPU=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
mkdir -p "$OUT"

if [ ! -f "$CACHE/data_seed$SEED/train.parquet" ]; then
  "$PY" -m data_prep.synthetic --out "$CACHE/data_seed$SEED" --n-train 2000 --n-test 64 --seed "$SEED"
fi
"$PY" -m data_prep.tiny_model --out "$MODEL" --seed "$SEED" --attention vllm_cpu

attempt=0
while [ -e "$OUT/metrics.$attempt.jsonl" ]; do attempt=$((attempt + 1)); done
export VERL_FILE_LOGGER_PATH="$OUT/metrics.$attempt.jsonl"

# Shared-memory segments before the run: those the run leaves behind unused are removed afterwards.
SHM_BEFORE="$OUT/.shm_before.json"
"$PY" -c "import json, sys; from verl_meds.verl.cpu.vllm_extension import shm_segments; json.dump(sorted(shm_segments()), sys.stdout)" \
  >"$SHM_BEFORE"
status=0
"$PY" -m verl_meds.verl.main \
  --config-path "$ROOT/recipes/meds/config" --config-name paper setup=tiny_cpu method="$METHOD" \
  +rollout_engine=vllm_cpu \
  data.train_files="$CACHE/data_seed$SEED/train.parquet" \
  data.val_files="$CACHE/data_seed$SEED/test.parquet" \
  actor_rollout_ref.model.path="$MODEL" \
  trainer.default_local_dir="$OUT/checkpoints" \
  trainer.total_training_steps="$STEPS" \
  "$@" || status=$?
"$PY" -c "import json, sys; from verl_meds.verl.cpu.vllm_extension import remove_stale_shm
removed = remove_stale_shm(set(json.load(open(sys.argv[1]))))
print(f'removed {len(removed)} shared-memory segments left by the vLLM server') if removed else None" "$SHM_BEFORE" || true
rm -f "$SHM_BEFORE"
[ "$status" = 0 ] || exit "$status"
"$PY" -m verl_meds.verl.summary "$OUT"
