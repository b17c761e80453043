"""Checkpoint and resume under SIGKILL: the MEDS memory comes back bit for bit and training reaches its planned steps.

The tiny CPU recipe (MEDS on DAPO, one prompt per step, a checkpoint every step) runs as its own process with its own
Ray cluster (`verl_subprocess.RecipeRun`). After the checkpoint of step 1 is complete (its `meds_memory.pkl` and
verl's `latest_checkpointed_iteration.txt`) and step 1's metrics are logged, the whole process group is killed with
SIGKILL in the middle of step 2, and every leftover process of that Ray cluster after it. The same command then
resumes: the trainer writes `meds_memory_restored.json` with the SHA-256 of the state it restored, which must equal
the checksum stored in step 1's memory file, and the run must finish all 4 planned steps.
"""

from __future__ import annotations

import json
import pickle
import time

import pytest
from verl_subprocess import RecipeRun, tiny_assets

from verl_meds.verl.checkpoint import read_memory_state, state_digest

pytestmark = pytest.mark.requires_verl

PLANNED_STEPS = 4
ONE_PROMPT_STEPS = [
    "data.train_max_samples=1",  # the same problem every step: its errors repeat across the kill
    "data.train_batch_size=1",
    "actor_rollout_ref.actor.ppo_mini_batch_size=1",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "algorithm.filter_groups.enable=false",
    "trainer.save_freq=1",
    f"trainer.total_training_steps={PLANNED_STEPS}",
]
KILL_DELAY_SECONDS = 1.0  # after step 1's metrics line: step 2 is generating its rollouts


def _wait_for(predicate, run: RecipeRun, timeout_seconds: float, what: str) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not predicate():
        if run.proc.poll() is not None:
            pytest.fail(f"the run exited (code {run.proc.returncode}) before {what}:\n{run.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{run.log_tail()}")
        time.sleep(0.2)


def test_sigkill_mid_step_then_resume_restores_memory_bit_for_bit(tmp_path):
    from verl_meds.memory import ErrorMemory
    from verl_meds.verl.hooks.meds import RESTORE_RECORD

    run = RecipeRun("meds_dapo", tmp_path / "run", tiny_assets(), ONE_PROMPT_STEPS)
    memory_file = run.checkpoints / "global_step_1" / "meds_memory.pkl"
    timings = {}
    try:
        started = time.monotonic()
        run.start()
        _wait_for(
            lambda: memory_file.exists() and run.latest_checkpoint() == 1 and 1 in run.steps_logged(0),
            run,
            600,
            "the checkpoint of step 1",
        )
        timings["first_attempt_to_step_1"] = time.monotonic() - started
        time.sleep(KILL_DELAY_SECONDS)
        assert run.proc.poll() is None, "the run ended before it could be killed"
        killed_at = time.monotonic()
        leftovers = run.kill_run()
        timings["kill_and_cleanup"] = time.monotonic() - killed_at
        assert run.marked_pids() == [], "processes of the killed run are still alive"
        # The kill landed inside step 2: nothing of step 2 was logged or declared checkpointed.
        assert sorted(run.steps_logged(0)) == [1]
        assert run.latest_checkpoint() == 1

        with open(memory_file, "rb") as f:
            record = pickle.load(f)
        checkpointed = read_memory_state(str(memory_file))  # format, version and checksum verified
        num_entries = sum(len(b["features"]) for b in checkpointed["buffers"])
        assert num_entries > 0, "step 1 stored nothing; the resume would compare empty memories"

        started = time.monotonic()
        run.start()
        code = run.wait(timeout_seconds=900)
        timings["resume_attempt"] = time.monotonic() - started
        assert code == 0, run.log_tail()
    finally:
        run.cleanup()
    assert run.marked_pids() == []

    restored = json.loads((run.checkpoints / RESTORE_RECORD).read_text())
    assert restored["global_step"] == 1
    assert restored["sha256"] == record["sha256"], "the restored memory is not the checkpointed one"
    assert restored["num_entries"] == num_entries
    # The same digest computed here from the file's state: restore digest == file checksum == state digest.
    memory = ErrorMemory(_config_of(run))
    memory.load_state_dict(checkpointed)
    assert state_digest(memory) == record["sha256"]

    resumed = run.steps_logged(1)
    assert sorted(resumed) == list(range(2, PLANNED_STEPS + 1)), "training did not continue to the planned steps"
    assert run.latest_checkpoint() == PLANNED_STEPS
    # Training went on from the restored memory: the step-1 rows open the final buffers, bit for bit (FIFO, the
    # capacity of 256 is not reached in 4 steps).
    final = read_memory_state(str(run.checkpoints / f"global_step_{PLANNED_STEPS}" / "meds_memory.pkl"))
    final_buffers = {(b["prompt_id"], b["outcome"]): b["features"] for b in final["buffers"]}
    for buffer in checkpointed["buffers"]:
        rows = buffer["features"]
        grown = final_buffers[(buffer["prompt_id"], buffer["outcome"])]
        assert grown.shape[0] >= rows.shape[0] and grown[: rows.shape[0]].tobytes() == rows.tobytes()
    for step in resumed:
        assert "meds/penalty/mean" in resumed[step] and "meds/memory/num_entries" in resumed[step]
    print(f"timings (s): {timings}; leftover processes killed after the group kill: {len(leftovers)}")


def _config_of(run: RecipeRun):
    """The MEDS config of the run (the recipe's `meds` block as composed by Hydra)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from verl_subprocess import CONFIG_DIR

    from verl_meds.verl.hooks.meds import meds_config_from_trainer_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose("paper", overrides=["setup=tiny_cpu", "method=meds_dapo"])
    return meds_config_from_trainer_config(config)
