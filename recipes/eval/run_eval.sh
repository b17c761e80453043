#!/usr/bin/env bash
# Evaluate one checkpoint the way the MEDS paper does (n samples at temperature 1.0, pass@1 and pass@k), on the
# paper's five benchmarks by default. Usage:
#   bash recipes/eval/run_eval.sh MODEL [METHOD] [extra `verl-meds-eval run` arguments...]
# MODEL is a Hugging Face folder / hub id or a verl checkpoint (`.../global_step_N`, merged automatically).
# Environment: BENCHMARKS (default "aime24 amc23 math500 minerva_math olympiadbench"), N (samples per problem,
#   default 128), MAX_NEW_TOKENS (default 3072), LIMIT (first N problems of each benchmark, default all),
#   DATA_DIR (raw benchmark copies, default ../shared/data; missing files come from the hub),
#   DATA_OUT (parquet cache, default outputs/eval/data), OUT (default outputs/eval/<METHOD>).
# Re-running the same command resumes. Compare methods afterwards with
#   verl-meds-eval compare --summary GRPO=outputs/eval/grpo/summary.json --summary MEDS=... --out outputs/eval/table
# Tiny CPU example (the model the tiny recipe trains from; a few minutes):
#   BENCHMARKS=math500 LIMIT=4 N=8 MAX_NEW_TOKENS=48 bash recipes/eval/run_eval.sh .cache/tiny_cpu/model_seed0 tiny
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
if [ $# -lt 1 ]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
MODEL=$1
METHOD=${2:-$(basename "${MODEL%/}")}
shift $(( $# >= 2 ? 2 : 1 ))
PY=${PY:-$ROOT/.venv/bin/python}
BENCHMARKS=${BENCHMARKS:-"aime24 amc23 math500 minerva_math olympiadbench"}
N=${N:-128}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-3072}
DATA_DIR=${DATA_DIR:-$ROOT/../shared/data}
DATA_OUT=${DATA_OUT:-$ROOT/outputs/eval/data}
OUT=${OUT:-$ROOT/outputs/eval/$METHOD}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false

# 1. Benchmarks as verl parquet (once; full files, so LIMIT never changes the cached data).
args=()
for name in $BENCHMARKS; do
  if [ ! -f "$DATA_OUT/$name.parquet" ]; then
    "$PY" -m data_prep.benchmarks --data-dir "$DATA_DIR" --out-dir "$DATA_OUT" --benchmarks "$name"
  fi
  args+=(--benchmark "$name=$DATA_OUT/$name.parquet")
done
[ -n "${LIMIT:-}" ] && args+=(--limit "$LIMIT")

# 2. Sample, grade, summarise: samples.jsonl, summary.json, table.md/.tex, pass_at_k.png under $OUT.
"$PY" -m verl_meds.eval run --model "$MODEL" --method "$METHOD" --out "$OUT" --n "$N" \
  --max-new-tokens "$MAX_NEW_TOKENS" "${args[@]}" "$@"
