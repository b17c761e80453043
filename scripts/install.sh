#!/usr/bin/env bash
# Install verl_meds into ./.venv (created when missing). Safe to re-run: only what is missing is installed.
#
# torch is installed first and pinned (TORCH_VERSION, default 2.13.0): on CPU machines that version has a local
# CPU wheel, and any other version would pull a multi-GB CUDA build. GPU clusters set TORCH_VERSION to their build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
echo "[install] torch==${TORCH_VERSION}"
$PIP install -q "torch==${TORCH_VERSION}" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, sys; v=torch.__version__.split('+')[0]; sys.exit(0 if v=='${TORCH_VERSION}' else 1)" \
  || { echo "[install] torch ${TORCH_VERSION} is not installed" >&2; exit 1; }
echo "[install] verl_meds with extras [verl,test,plots]"
$PIP install -q -e ".[verl,test,plots]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import verl_meds, verl, hdbscan, math_verify; print('[install] ok: verl', verl.__version__)"
