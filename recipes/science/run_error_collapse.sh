#!/usr/bin/env bash
# The error-collapse experiment of docs/results.md: every method x 5 seeds on the synthetic testbed, through real
# verl on CPU (one Ray cluster for all runs), then the measurements, the table and the plots. Usage:
#   bash recipes/science/run_error_collapse.sh [extra arguments of `python -m verl_meds.analysis.experiment run`]
# e.g. `--methods grpo meds_dapo --seeds 0 1`. Resumable: finished runs are skipped, failed ones are retried.
# Environment: OUT (default outputs/science), CACHE (synthetic data + tiny model, default .cache/tiny_cpu).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PY=${PY:-$ROOT/.venv/bin/python}
OUT=${OUT:-$ROOT/outputs/science}
CACHE=${CACHE:-$ROOT/.cache/tiny_cpu}
export VERL_MEDS_CPU=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
start=$(date +%s)
"$PY" -m verl_meds.analysis.experiment run --out "$OUT" --cache "$CACHE" "$@" 2>&1 | tee -a "$OUT/experiment.log"
echo "total wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/experiment.log"
