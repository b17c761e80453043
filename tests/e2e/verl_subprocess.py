"""Run the tiny CPU recipe as a separate process with its own Ray cluster, and clean that cluster up afterwards.

Used by the e2e tests that must kill a run (`test_resume_sigkill.py`), which a run inside the test process
(`verl_inprocess.py`) cannot survive.

Isolation: the run starts in its own session (process group), with `ray.init(address="local", _temp_dir=<short
private folder>)`, so it never joins another test's cluster, and with the environment variable `RUN_MARKER_ENV` set
to a fresh tag. Ray's GCS, raylet and workers inherit that variable from the driver, which is how `kill_run` finds
every process of this run (and only those), including the ones that outlive a SIGKILL of the process group.
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

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "recipes" / "meds" / "config"
RUN_MARKER_ENV = "VERL_MEDS_TEST_RUN"


def tiny_assets() -> dict[str, Path]:
    """Synthetic task and tiny warm-started model, cached where the quick-start recipe caches them."""
    from data_prep.assets import tiny_cpu_assets

    return tiny_cpu_assets()


class RecipeRun:
    """One `python -m verl_meds.verl.main ... setup=tiny_cpu` process; see the module docstring."""

    def __init__(self, method: str, out: Path, assets: dict[str, Path], overrides: list[str], num_gpus: int = 1):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.checkpoints = self.out / "checkpoints"
        self.marker = uuid.uuid4().hex
        self.ray_dir = tempfile.mkdtemp(prefix="vm", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        self.args = [
            sys.executable,
            "-m",
            "verl_meds.verl.main",
            "--config-path",
            str(CONFIG_DIR),
            "--config-name",
            "paper",
            "setup=tiny_cpu",
            f"method={method}",
            f"data.train_files={assets['train']}",
            f"data.val_files={assets['val']}",
            f"actor_rollout_ref.model.path={assets['model']}",
            f"trainer.default_local_dir={self.checkpoints}",
            "trainer.val_before_train=false",
            "trainer.test_freq=-1",
            "+ray_kwargs.ray_init.address=local",
            f"+ray_kwargs.ray_init._temp_dir={self.ray_dir}",
            f"ray_kwargs.ray_init.num_gpus={num_gpus}",
            f"hydra.run.dir={self.out / 'hydra'}",
            "hydra.output_subdir=null",
            *overrides,
        ]
        self.proc: subprocess.Popen | None = None
        self.log = None
        self.attempt = -1

    def metrics_path(self, attempt: int) -> Path:
        return self.out / f"metrics.{attempt}.jsonl"

    def start(self) -> None:
        """Start a new attempt (the same command; verl resumes from the latest checkpoint by itself)."""
        self.attempt += 1
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "VERL_FILE_LOGGER_PATH")}
        env.update(
            {
                "VERL_MEDS_CPU": "1",
                "OMP_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "VERL_FILE_LOGGER_PATH": str(self.metrics_path(self.attempt)),
                RUN_MARKER_ENV: self.marker,
            }
        )
        if self.log is not None:
            self.log.close()
        self.log = open(self.out / f"run.{self.attempt}.log", "wb")  # noqa: SIM115 - closed by start()/cleanup()
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log_tail(self, chars: int = 6000) -> str:
        self.log.flush()
        return (self.out / f"run.{self.attempt}.log").read_text(errors="replace")[-chars:]

    def wait(self, timeout_seconds: float) -> int:
        """Wait for the attempt to finish; returns its exit code (the run is killed on timeout)."""
        try:
            return self.proc.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            self.kill_run()
            raise
        finally:
            self.log.flush()

    def steps_logged(self, attempt: int) -> dict[int, dict]:
        """Metrics verl's file logger wrote in one attempt, by step."""
        path = self.metrics_path(attempt)
        steps = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line being written
                    continue
                steps[int(record["step"])] = record["data"]
        return steps

    def latest_checkpoint(self) -> int | None:
        path = self.checkpoints / "latest_checkpointed_iteration.txt"
        try:
            return int(path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def marked_pids(self) -> list[int]:
        """Every live process whose environment carries this run's marker."""
        needle = f"{RUN_MARKER_ENV}={self.marker}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:  # gone, or not ours to read
                continue
        return pids

    def kill_run(self, timeout_seconds: float = 60.0) -> list[int]:
        """SIGKILL the attempt's process group, then every leftover process of this run; returns what was left."""
        leftovers: list[int] = []
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            pids = self.marked_pids()
            if not pids:
                break
            leftovers = sorted(set(leftovers) | set(pids))
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        self.log.flush()
        return leftovers

    def cleanup(self) -> None:
        """Kill whatever of this run is still alive and remove its Ray folder."""
        self.kill_run()
        if self.log is not None:
            self.log.close()
        shutil.rmtree(self.ray_dir, ignore_errors=True)
