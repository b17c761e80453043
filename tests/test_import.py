"""Importing `verl_meds` must not pull in training frameworks or plotting libraries."""

import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("verl", "ray", "matplotlib")
REPO_ROOT = Path(__file__).resolve().parents[1]


def test_import_leaves_frameworks_out():
    code = (
        "import sys, verl_meds\n"
        f"loaded = [name for name in {FORBIDDEN!r} if name in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == "", f"import verl_meds loaded {result.stdout.strip()}"


def test_public_api_is_exported():
    import verl_meds

    for name in verl_meds.__all__:
        assert getattr(verl_meds, name) is not None, name
    assert verl_meds.NOISE == -1
    for letter in ("| B |", "| G |", "| N |", "| T |", "| L |", "| D |", "| F |", "| M |", "| K |"):
        assert letter in verl_meds.__doc__, letter
