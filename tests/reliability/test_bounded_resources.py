"""Bounded resources: a simulated 100-epoch MEDS run keeps the memory and its checkpoint under their caps.

32 prompts x 16 rollouts per step, one step per epoch (the dataset is the 32 prompts), 100 epochs. Each prompt has
three error modes and one right-answer mode, blobs in F = 4 dimensions whose centres drift a little every epoch,
so stored rows keep changing and HDBSCAN keeps finding clusters. `penalty_target="both"` fills the wrong and the
right buffer of every prompt. What `verl_meds.memory` documents and this test checks:

- every buffer holds at most `MemoryConfig.capacity` rows (FIFO), so entries <= prompts x 2 x capacity;
- the checkpoint written by `verl_meds.verl.checkpoint.save_memory` is bounded by the same count (F float32 values
  and one int64 label per entry, plus a fixed overhead per buffer) and stops growing once every buffer is full;
- the truncation warning is logged once ("This is logged once; see meds/memory/truncated_prompts"), and the metric
  `meds/memory/truncated_prompts` counts every prompt whose history was cut.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from verl_meds.config import MEDSConfig
from verl_meds.memory import ErrorMemory
from verl_meds.verl.checkpoint import memory_path, save_memory

NUM_PROMPTS, ROLLOUTS, EPOCHS, F = 32, 16, 100, 4
CAPACITY = 48
PER_BUFFER_OVERHEAD_BYTES = 400  # pickled dict keys, prompt id, outcome, numpy array headers
FIXED_OVERHEAD_BYTES = 4096  # record, version, fingerprint, truncated prompt ids


def drifting_blobs(seed: int = 0):
    """Yield (prompt_ids, features (N, F) float32, correct (N,)) for one step per epoch."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(NUM_PROMPTS, 4, F))  # 3 error modes + 1 right-answer mode per prompt
    drift = 0.02 * rng.normal(size=(NUM_PROMPTS, 4, F))
    mode_probs = np.array([0.35, 0.25, 0.1, 0.3])
    prompt_ids = [f"prompt-{p}" for p in range(NUM_PROMPTS) for _ in range(ROLLOUTS)]
    for epoch in range(EPOCHS):
        modes = rng.choice(4, size=(NUM_PROMPTS, ROLLOUTS), p=mode_probs)  # (B, G)
        current = centres + epoch * drift  # (B, 4, F)
        rows = current[np.arange(NUM_PROMPTS)[:, None], modes] + 0.05 * rng.normal(size=(NUM_PROMPTS, ROLLOUTS, F))
        yield prompt_ids, rows.reshape(-1, F).astype(np.float32), (modes == 3).reshape(-1)


def checkpoint_bound(num_buffers: int, capacity: int) -> int:
    """Largest allowed file size for `num_buffers` buffers of `capacity` rows."""
    per_entry = F * 4 + 8  # float32 features + int64 label
    return FIXED_OVERHEAD_BYTES + num_buffers * (PER_BUFFER_OVERHEAD_BYTES + capacity * per_entry)


def test_hundred_epochs_stay_under_caps(tmp_path, caplog):
    config = MEDSConfig.from_dict({"memory": {"capacity": CAPACITY}, "shaping": {"penalty_target": "both"}})
    memory = ErrorMemory(config)
    path = memory_path(str(tmp_path / "global_step"))
    sizes_by_epoch: dict[int, int] = {}
    max_buffer_rows = 0
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="verl_meds.memory"):
        for epoch, (prompt_ids, features, correct) in enumerate(drifting_blobs()):
            cluster_sizes, metrics = memory.step(prompt_ids, features, np.ones(len(prompt_ids), bool), correct)
            assert memory.num_entries <= NUM_PROMPTS * 2 * CAPACITY
            assert metrics["meds/memory/num_entries"] == memory.num_entries
            assert cluster_sizes.max() <= CAPACITY + ROLLOUTS - 1
            for prompt in {prompt_ids[0], prompt_ids[-1]}:
                for outcome in ("wrong", "right"):
                    rows = memory.entries(prompt, outcome).shape[0]
                    max_buffer_rows = max(max_buffer_rows, rows)
                    assert rows <= CAPACITY
            if epoch % 10 == 9 or epoch < 5:
                sizes_by_epoch[epoch] = save_memory(memory, path, global_step=epoch + 1)
    elapsed = time.perf_counter() - started

    state = memory.state_dict()
    assert len(state["buffers"]) == NUM_PROMPTS * 2
    assert all(len(buffer["features"]) <= CAPACITY for buffer in state["buffers"])
    assert max_buffer_rows == CAPACITY, "the run never reached the cap; the test does not test truncation"
    assert memory.num_entries == NUM_PROMPTS * 2 * CAPACITY
    bound = checkpoint_bound(NUM_PROMPTS * 2, CAPACITY)
    assert max(sizes_by_epoch.values()) <= bound, (sizes_by_epoch, bound)
    # Once every buffer is full (by epoch ~20) the file no longer grows.
    assert sizes_by_epoch[99] == sizes_by_epoch[49] == sizes_by_epoch[29]
    assert sizes_by_epoch[0] < sizes_by_epoch[29]
    # Truncation: one warning for the whole run, every prompt counted in the metric.
    warnings = [r for r in caplog.records if "MemoryConfig.capacity" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert f"capacity={CAPACITY}" in warnings[0].getMessage()
    assert metrics["meds/memory/truncated_prompts"] == NUM_PROMPTS
    assert sorted(state["truncated_prompt_ids"]) == sorted(set(prompt_ids))
    print(f"100 epochs x {NUM_PROMPTS * ROLLOUTS} rollouts in {elapsed:.1f}s; checkpoint bytes {sizes_by_epoch}")


def test_truncation_warning_is_logged_once_per_memory_not_per_prompt(caplog):
    """Several prompts over capacity in one step and in later steps: still a single warning; a fresh memory (for
    example after a resume) warns again once."""
    config = MEDSConfig.from_dict({"memory": {"capacity": 2}})
    features = np.arange(3 * 5 * F, dtype=np.float32).reshape(15, F)
    prompt_ids = [p for p in ("a", "b", "c") for _ in range(5)]
    with caplog.at_level(logging.WARNING, logger="verl_meds.memory"):
        memory = ErrorMemory(config)
        for _ in range(3):
            _, metrics = memory.step(prompt_ids, features, np.ones(15, bool), np.zeros(15, bool))
        assert metrics["meds/memory/truncated_prompts"] == 3
        resumed = ErrorMemory(config)
        resumed.load_state_dict(memory.state_dict())
        resumed.step(prompt_ids, features, np.ones(15, bool), np.zeros(15, bool))
    messages = [r.getMessage() for r in caplog.records if "MemoryConfig.capacity" in r.getMessage()]
    assert len(messages) == 2, messages


@pytest.mark.parametrize("capacity", [1, 5])
def test_tiny_capacity_keeps_the_newest_rows(capacity):
    config = MEDSConfig.from_dict({"memory": {"capacity": capacity}})
    memory = ErrorMemory(config)
    history = []  # every wrong row of prompt-0, in the order the memory saw them
    for step, (prompt_ids, features, correct) in enumerate(drifting_blobs(seed=1)):
        memory.step(prompt_ids, features, np.ones(len(prompt_ids), bool), correct)
        history.append(features[(~correct) & (np.array(prompt_ids) == "prompt-0")])
        if step == 4:
            break
    history = np.concatenate(history)
    assert history.shape[0] > capacity
    np.testing.assert_array_equal(memory.entries("prompt-0", "wrong"), history[-capacity:])  # newest, oldest first
