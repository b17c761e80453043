#!/usr/bin/env bash
# Science round 2 (docs/results.md, second section): DAPO, MEDS and MEDS with answer keys at the budget where the
# pilot saw DAPO narrow, held-out pass@k to k = 64, then the report (table.md, results.json, passk.png, plots).
# Usage:
#   bash recipes/science/run_narrowing.sh [extra arguments of `python -m verl_meds.analysis.experiment run`]
# e.g. `--seeds 0 2 4` and `--seeds 1 3` in two shells to use two processes. Resumable: finished runs are skipped.
# Environment: OUT (default outputs/narrowing), CACHE (default .cache/tiny_cpu), STEPS, LR (the pre-registered
# budget), NICE (default 5).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/outputs/narrowing}
CACHE=${CACHE:-$ROOT/.cache/tiny_cpu}
STEPS=${STEPS:-60}
LR=${LR:-1e-4}
export VERL_MEDS_CPU=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
start=$(date +%s)
nice -n "${NICE:-5}" "$PY" -m verl_meds.analysis.experiment run --out "$OUT" --cache "$CACHE" \
  --methods dapo meds_dapo meds_answer --steps "$STEPS" --val-n 64 --train-problems 16 \
  --extra "actor_rollout_ref.actor.optim.lr=$LR" "$@" 2>&1 | tee -a "$OUT/experiment.log"
echo "total wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/experiment.log"
