"""Per-step time of the tiny CPU recipe, MEDS on DAPO vs DAPO, with the breakdown of what MEDS adds.

Usage (default: 2 runs of each method, 8 steps each, alternating D M M D; about 8-10 minutes on 2 cores):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_step.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_step.py --runs 1 --steps 5      # shorter
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_step.py --frozen                # identical rollouts
    .venv/bin/python benchmarks/bench_step.py --analyze OUT   # re-read the runs saved by an earlier `--out OUT`

Both methods run the recipe of `recipes/tiny_cpu/run_tiny_cpu.sh` (`paper setup=tiny_cpu method=dapo|meds_dapo`:
8 prompts x 8 rollouts per step, dynamic sampling on accuracy) with the same data, model, seeds and config, in one
Ray cluster (as `tests/e2e/test_tiny_cpu.py` does), without validation and checkpoints so that only training steps
are timed. Step 1 of every run (warm-up) is left out; the figures are medians over the remaining steps of all runs.
`--frozen` sets the learning rate to 0, so both methods see the same policy, and `--no-dynamic-sampling` turns
dynamic sampling off for both: then the work per step is the same and the raw step ratio isolates MEDS's cost.

What MEDS adds, from verl's per-step `timing_s/*` metrics (the `meds_*` timers are written by
`verl_meds.verl.hooks.meds.MEDSHook`):

- `meds_prepare`: answer positions before the log-prob recompute (driver);
- feature capture inside the workers' log-prob forward: not timed directly; estimated as MEDS's `old_log_prob`
  minus its driver-side `meds_*` parts, minus DAPO's `old_log_prob` per token times MEDS's tokens
  (`benchmarks/bench_features.py` measures it directly);
- `meds_features`: reading the features back (driver);
- `meds_memory`: memory update, clustering and penalties (`ErrorMemory.step`);
- `meds_shaping`: shaped rewards, inside `adv`.

Printed ratios MEDS / DAPO: the raw median step time (it also moves with how many generation rounds dynamic
sampling needed and with response lengths, which differ once the two policies differ), the step time without
generation per token, and the cost ratio (DAPO's median step + MEDS's added work) / DAPO's median step, once with
the directly timed parts only and once with the estimated capture added. The capture estimate is a difference of
two noisy medians: a 90 % bootstrap interval over the timed steps is printed with it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipes" / "meds" / "config"
METHODS = {"dapo": "dapo", "meds": "meds_dapo"}
MEDS_PARTS = ("meds_prepare", "meds_features", "meds_memory", "meds_shaping")
STAGES = ("step", "gen", "reward", "old_log_prob", "adv", "update_actor", "update_weights")


# ----------------------------------------------------------------------------------------------- running


def assets() -> dict[str, Path]:
    """The recipe's cached synthetic task and tiny warm-started model (built on first use)."""
    sys.path.insert(0, str(ROOT))
    from data_prep.assets import tiny_cpu_assets

    return tiny_cpu_assets()


def compose(method: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose("paper", overrides=["setup=tiny_cpu", f"method={method}", *overrides])


def train(method: str, out: Path, files: dict[str, Path], steps: int, extra: list[str]) -> dict[int, dict]:
    """One verl run of the recipe; returns verl's per-step metrics."""
    from verl_meds.verl.main import run
    from verl_meds.verl.summary import read_metrics

    out.mkdir(parents=True, exist_ok=True)
    os.environ["VERL_FILE_LOGGER_PATH"] = str(out / "metrics.0.jsonl")
    overrides = [
        f"data.train_files={files['train']}",
        f"data.val_files={files['val']}",
        f"actor_rollout_ref.model.path={files['model']}",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        f"trainer.total_training_steps={steps}",
        "trainer.val_before_train=false",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.resume_mode=disable",
        *extra,
    ]
    run(compose(METHODS[method], overrides))
    return read_metrics(str(out))


# ----------------------------------------------------------------------------------------------- analysis


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def tokens_per_sequence(metrics: dict) -> float:
    return float(metrics.get("prompt_length/mean", 0.0)) + float(metrics.get("response_length/mean", 0.0))


def step_rows(runs: list[dict[int, dict]], skip_first: bool = True) -> list[dict]:
    """Timed training steps of `runs` (step 1 of each run left out), with the derived per-step quantities."""
    rows = []
    for steps in runs:
        timed = sorted(step for step, metrics in steps.items() if "timing_s/step" in metrics)
        for step in timed[1:] if skip_first else timed:
            metrics = steps[step]
            row = {name: float(metrics.get(f"timing_s/{name}", 0.0)) for name in (*STAGES, *MEDS_PARTS)}
            row["tokens"] = tokens_per_sequence(metrics)
            driver = row["meds_prepare"] + row["meds_features"] + row["meds_memory"]
            row["log_prob_forward"] = row["old_log_prob"] - driver  # the workers' part of old_log_prob
            rows.append(row)
    return rows


def capture_estimate(dapo: list[dict], meds: list[dict]) -> float:
    """MEDS's log-prob forward beyond DAPO's at the same number of tokens (median seconds per step)."""
    dapo_forward_per_token = median([r["log_prob_forward"] / r["tokens"] for r in dapo if r["tokens"] > 0])
    return median([r["log_prob_forward"] - dapo_forward_per_token * r["tokens"] for r in meds])


def bootstrap_interval(dapo: list[dict], meds: list[dict], samples: int = 2000, seed: int = 0) -> tuple:
    """90 % bootstrap intervals (steps resampled) of the capture estimate and of the full cost ratio."""
    import random

    rng = random.Random(seed)
    captures, ratios = [], []
    for _ in range(samples):
        d = [rng.choice(dapo) for _ in dapo]
        m = [rng.choice(meds) for _ in meds]
        capture = capture_estimate(d, m)
        timed = sum(median([r[name] for r in m]) for name in MEDS_PARTS)
        dapo_step = median([r["step"] for r in d])
        captures.append(capture)
        ratios.append((dapo_step + max(timed + capture, 0.0)) / dapo_step)
    captures.sort()
    ratios.sort()
    low, high = int(0.05 * samples), int(0.95 * samples) - 1
    return (captures[low], captures[high]), (ratios[low], ratios[high])


def summarise(dapo: list[dict], meds: list[dict]) -> dict:
    """Medians per stage and method, the MEDS breakdown, and the ratios."""
    names = (*STAGES, *MEDS_PARTS, "tokens", "log_prob_forward")
    stats = {
        method: {name: median([r[name] for r in rows]) for name in names}
        for method, rows in (("dapo", dapo), ("meds", meds))
    }
    capture = capture_estimate(dapo, meds)
    added = {name: stats["meds"][name] for name in MEDS_PARTS}
    timed_total = sum(added.values())
    added["capture (estimated)"] = capture
    added_total = sum(added.values())
    capture_interval, ratio_interval = bootstrap_interval(dapo, meds)
    no_gen = {
        method: median([(r["step"] - r["gen"]) / r["tokens"] for r in rows if r["tokens"] > 0])
        for method, rows in (("dapo", dapo), ("meds", meds))
    }
    return {
        "stats": stats,
        "added": added,
        "added_total": added_total,
        "ratio_raw": stats["meds"]["step"] / stats["dapo"]["step"],
        "ratio_no_gen_per_token": no_gen["meds"] / no_gen["dapo"],
        "ratio_cost": (stats["dapo"]["step"] + max(added_total, 0.0)) / stats["dapo"]["step"],
        "ratio_timed": (stats["dapo"]["step"] + timed_total) / stats["dapo"]["step"],
        "timed_total": timed_total,
        "capture_interval": capture_interval,
        "ratio_interval": ratio_interval,
        "steps": {"dapo": len(dapo), "meds": len(meds)},
    }


def report(summary: dict) -> None:
    stats = summary["stats"]
    print(f"\nMedian seconds per step ({summary['steps']['dapo']} DAPO steps, {summary['steps']['meds']} MEDS steps)")
    print(f"{'stage':<22} {'DAPO':>8} {'MEDS':>8}")
    for name in (*STAGES, "tokens"):
        print(f"{name:<22} {stats['dapo'][name]:>8.3f} {stats['meds'][name]:>8.3f}")
    dapo_step = stats["dapo"]["step"]
    print("\nWhat MEDS adds per step (median seconds; share of DAPO's median step)")
    for name, seconds in summary["added"].items():
        print(f"  {name:<22} {seconds:>8.4f}  {seconds / dapo_step:>7.2%}")
        if name == MEDS_PARTS[-1]:
            timed = summary["timed_total"]
            print(f"  {'timed parts':<22} {timed:>8.4f}  {timed / dapo_step:>7.2%}")
    low, high = summary["capture_interval"]
    print(f"  {'total':<22} {summary['added_total']:>8.4f}  {summary['added_total'] / dapo_step:>7.2%}")
    print(f"  (capture estimate, 90 % bootstrap interval: {low:.4f} .. {high:.4f} s)")
    print("\nRatios MEDS / DAPO")
    print(f"  raw median step time:                     {summary['ratio_raw']:.3f}")
    print(f"  step time without generation, per token:  {summary['ratio_no_gen_per_token']:.3f}")
    print(f"  cost ratio, timed MEDS parts only:        {summary['ratio_timed']:.3f}")
    low, high = summary["ratio_interval"]
    print(
        f"  cost ratio, with the estimated capture:   {summary['ratio_cost']:.3f}   (target <= 1.02; 90 % interval "
        f"{low:.3f} .. {high:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="runs per method (alternating D M M D ...)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per run (step 1 is not counted)")
    parser.add_argument("--frozen", action="store_true", help="learning rate 0: both methods keep the same policy")
    parser.add_argument("--no-dynamic-sampling", action="store_true", help="algorithm.filter_groups.enable=false")
    parser.add_argument("--out", default=None, help="folder for the runs' metrics (default: a temporary folder)")
    parser.add_argument("--analyze", default=None, help="only re-read the runs saved in this --out folder")
    args = parser.parse_args()
    if args.analyze:
        analyze(Path(args.analyze))
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    extra = []
    if args.frozen:
        extra.append("actor_rollout_ref.actor.optim.lr=0.0")
    if args.no_dynamic_sampling:
        extra.append("algorithm.filter_groups.enable=false")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, load average "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.runs} runs x {args.steps} steps per method; "
        f"extra overrides: {extra or 'none'}"
    )
    import ray

    from verl_meds.verl import cpu

    files = assets()
    env = cpu.enable_cpu_mode()
    ray.init(num_cpus=16, num_gpus=1, runtime_env={"env_vars": env}, include_dashboard=False)
    order = []
    for pair in range(args.runs):
        order += ["dapo", "meds"] if pair % 2 == 0 else ["meds", "dapo"]
    results: dict[str, list[dict[int, dict]]] = {"dapo": [], "meds": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out) if args.out else Path(tmp)
        try:
            for index, method in enumerate(order):
                start = time.perf_counter()
                steps = train(method, base / f"{index}_{method}", files, args.steps, extra)
                results[method].append(steps)
                print(
                    f"  run {index + 1}/{len(order)} {method}: {len(steps)} steps logged in "
                    f"{time.perf_counter() - start:.0f} s (load {os.getloadavg()[0]:.2f})",
                    flush=True,
                )
        finally:
            ray.shutdown()
    report(summarise(step_rows(results["dapo"]), step_rows(results["meds"])))
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def analyze(folder: Path) -> None:
    """Report on the runs saved under `folder` by `--out` (sub-folders `<index>_<method>`)."""
    from verl_meds.verl.summary import read_metrics

    results: dict[str, list[dict[int, dict]]] = {"dapo": [], "meds": []}
    for run in sorted(folder.iterdir(), key=lambda path: int(path.name.split("_")[0])):
        results[run.name.split("_", 1)[1]].append(read_metrics(str(run)))
    print(f"runs in {folder}: {len(results['dapo'])} DAPO, {len(results['meds'])} MEDS")
    report(summarise(step_rows(results["dapo"]), step_rows(results["meds"])))


if __name__ == "__main__":
    main()
