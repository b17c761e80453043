"""End-to-end: 2 real steps of `meds_dapo` with verl's vLLM async rollout on CPU (docs/vllm-cpu.md).

The run is a separate process in the vLLM environment (`.venv-vllm`, from `scripts/install_vllm_cpu.sh`; another
interpreter with `VERL_MEDS_VLLM_PYTHON`), on the tiny model with 2 attention heads of size 32, with the recipe
option `+rollout_engine=vllm_cpu`. The test checks what the hf-rollout test checks (features captured, penalties,
memory checkpoint) and that the policy's weights reached vLLM:

- the weights vLLM loaded at each sync are bit-identical to the actor's: the first sync to the model folder, the
  sync after step 2 to the actor's checkpoint of step 2 (digests of the tensors, written by the worker extension);
- vLLM served them: its sampling log-probs agree with the ones the FSDP actor recomputes (the engine starts from
  random weights, so a sync that did not load would show differences of order 1).

A second run shows that the silent hang is gone: with verl's stock worker extension, whose load fails on vLLM's
repacked CPU layers and then leaves verl's sender waiting forever, the run ends with the stage watchdog's error
naming the weight sync.

Skipped, with the reason, when the vLLM environment is missing. Shared-memory segments the runs leave in /dev/shm
are removed afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from verl_inprocess import ROOT
from verl_subprocess import RecipeRun

pytestmark = [pytest.mark.requires_verl, pytest.mark.slow]

VLLM_PYTHON = Path(os.environ.get("VERL_MEDS_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
RUN_TIMEOUT_S = 1800
"""A 2-step run took about 4 minutes on 2 busy cores; the bound leaves room for a much busier machine."""
LOGPROB_ATOL = 1e-3
"""vLLM vs FSDP log-prob difference allowed (measured ~3e-6 in float32; random weights give differences near 1)."""


def vllm_environment_problem() -> str | None:
    """Why the vLLM environment cannot run, or `None` when it can."""
    if not VLLM_PYTHON.exists():
        return f"no vLLM environment at {VLLM_PYTHON}: run scripts/install_vllm_cpu.sh (or set VERL_MEDS_VLLM_PYTHON)"
    probe = subprocess.run(
        [str(VLLM_PYTHON), "-c", "import vllm, verl, verl_meds"],
        env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if probe.returncode != 0:
        return f"the vLLM environment at {VLLM_PYTHON} does not import vllm, verl and verl_meds: {probe.stderr[-500:]}"
    return None


def actor_checkpoint_tensors(path: Path) -> list:
    """The actor's weights in a verl checkpoint of 1 worker (DTensors of one shard), by HF name."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    return [(name, t.to_local() if hasattr(t, "to_local") else t) for name, t in state.items()]


def model_folder_tensors(folder: Path) -> list:
    from safetensors.torch import load_file

    return list(load_file(str(folder / "model.safetensors")).items())


@pytest.fixture(scope="module")
def vllm_env():
    problem = vllm_environment_problem()
    if problem:
        pytest.skip(problem)


def run_log(run: RecipeRun, chars: int = 6000) -> str:
    """The end of the run's log (readable after `RecipeRun.cleanup`)."""
    return (run.out / f"run.{run.attempt}.log").read_text(errors="replace")[-chars:]


def run_in_vllm_env(out: Path, assets: dict, overrides: list[str], timeout_s: float) -> tuple[RecipeRun, int]:
    """One recipe run with the vLLM interpreter; returns the run and its exit code. Leftover segments are removed."""
    from verl_meds.verl.cpu.vllm_extension import remove_stale_shm, segments_in_use, shm_segments

    shm_before = shm_segments()
    run = RecipeRun("meds_dapo", out, assets, ["+rollout_engine=vllm_cpu", *overrides])
    run.args[0] = str(VLLM_PYTHON)
    try:
        run.start()
        code = run.wait(timeout_s)
    finally:
        run.cleanup()
        remove_stale_shm(shm_before)
    assert not (shm_segments() - shm_before - segments_in_use()), "shared-memory segments left behind"
    return run, code


def test_meds_dapo_with_the_vllm_rollout(vllm_env, tmp_path, monkeypatch):
    from data_prep.assets import tiny_cpu_assets
    from verl_meds.verl.checkpoint import read_memory_state
    from verl_meds.verl.cpu.vllm_extension import SYNC_LOG_ENV, weights_digest

    assets = tiny_cpu_assets(attention="vllm_cpu")
    out = tmp_path / "vllm"
    sync_log = tmp_path / "vllm_syncs.jsonl"
    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv(SYNC_LOG_ENV, str(sync_log))
    # The hf-rollout test's batch (tests/e2e/test_tiny_cpu.py): one problem repeated, so answers repeat and MEDS
    # penalises them within 2 steps.
    overrides = [
        "trainer.total_training_steps=2",
        "data.train_max_samples=1",
        "data.train_batch_size=1",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "algorithm.filter_groups.enable=false",
        "trainer.save_freq=1",
        "meds.shaping.penalty_target=both",
    ]
    run, code = run_in_vllm_env(out, assets, overrides, RUN_TIMEOUT_S)
    assert code == 0, f"run failed ({code}):\n{run_log(run)}"

    steps = run.steps_logged(0)
    assert sorted(steps) == [1, 2], run_log(run)
    # What the hf-rollout e2e test checks.
    for step in (1, 2):
        keys = steps[step]
        for name in (
            "meds/penalty/mean",
            "meds/frac_penalized",
            "meds/memory/num_entries",
            "meds/features/missing_frac",
        ):
            assert name in keys, f"{name} not logged at step {step}"
    assert steps[1]["meds/features/missing_frac"] < 1.0, "no feature was captured"
    assert all(steps[s]["meds/features/located_in_reward"] == 1.0 for s in (1, 2)), "answers located on the driver"
    assert max(steps[s]["meds/penalty/max"] for s in (1, 2)) > 0.0
    assert steps[2]["meds/memory/num_entries"] >= steps[1]["meds/memory/num_entries"] > 0
    memory_file = out / "checkpoints" / "global_step_2" / "meds_memory.pkl"
    assert memory_file.exists() and (out / "checkpoints" / "global_step_1" / "meds_memory.pkl").exists()
    state = read_memory_state(str(memory_file))
    assert sum(len(b["features"]) for b in state["buffers"]) == steps[2]["meds/memory/num_entries"]

    # The weights reached vLLM: what it loaded is the actor's, bit for bit ...
    syncs = [json.loads(line) for line in sync_log.read_text().splitlines()]
    assert [s["sync"] for s in syncs] == [0, 1, 2], syncs  # before step 1, after step 1, after step 2
    initial = model_folder_tensors(Path(assets["model"]))
    assert all(s["tensors"] == len(initial) for s in syncs)
    assert syncs[0]["digest"] == weights_digest(initial)
    step2 = actor_checkpoint_tensors(out / "checkpoints" / "global_step_2" / "actor" / "model_world_size_1_rank_0.pt")
    assert syncs[2]["digest"] == weights_digest(step2)
    assert len({s["digest"] for s in syncs}) == 3, "the weights did not change between syncs"
    # ... and it served them: its sampling log-probs are the actor's.
    for step in (1, 2):
        assert steps[step]["training/rollout_probs_diff_valid"] == 1
        assert steps[step]["training/rollout_probs_diff_max"] < LOGPROB_ATOL, steps[step]
    # Step time and weight-sync time, for docs/vllm-cpu.md.
    for step in (1, 2):
        print(  # noqa: T201 - measurement shown with -s
            f"vllm step {step}: timing_s/step {steps[step].get('timing_s/step'):.1f}, "
            f"timing_s/gen {steps[step].get('timing_s/gen', float('nan')):.1f}, "
            f"timing_s/update_weights {steps[step].get('timing_s/update_weights', float('nan')):.2f}"
        )


def test_a_failing_weight_load_ends_the_run_with_the_stage_named(vllm_env, tmp_path, monkeypatch):
    """verl's own extension cannot load into vLLM's repacked CPU layers (docs/vllm-cpu.md, blocker 5); its sender
    then waits forever. The stage watchdog turns that into an error naming the weight sync."""
    from data_prep.assets import tiny_cpu_assets

    monkeypatch.setenv("VLLM_TARGET_DEVICE", "cpu")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    stock = "verl.workers.rollout.vllm_rollout.utils.vLLMColocateWorkerExtension"
    overrides = [
        "trainer.total_training_steps=2",
        f"actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls={stock}",
        "actor_rollout_ref.rollout.custom.stage_watchdog.weight_sync_s=60",
    ]
    run, code = run_in_vllm_env(tmp_path / "stock", tiny_cpu_assets(attention="vllm_cpu"), overrides, RUN_TIMEOUT_S)
    log = run_log(run, 2_000_000)
    assert code != 0, log[-3000:]
    assert "'Parameter' object has no attribute 'weight_loader'" in log, log[-3000:]
    assert "StageTimeoutError" in log and (
        "stage 'weight sync (FSDP actor -> rollout server)' did not finish within 60 s" in log
    ), log[-3000:]
    assert run.steps_logged(0) == {}
