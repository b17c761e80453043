"""Scale independence: the tiny CPU recipe with 1 and with 2 data-parallel workers (gloo) gives the same MEDS memory.

Both runs use the same seed and data, MEDS on DAPO, 4 prompts per step for 2 steps, and `rollout.top_k=1`, which
makes the rollouts greedy and so the same whatever replica or batch serves them (sampling at temperature 1 draws
from one RNG stream per rollout replica, so 1 and 2 replicas would see different responses and there would be
nothing to compare). Greedy answers of the warm-started model are mostly right, so `penalty_target=both` stores and
penalises right answers too (otherwise the memory could stay empty). The trainer's per-rollout dump (`meds_dump`)
records, for every (step, prompt, rollout), the response, its logit-lens features, |C| and the penalty.

What may differ: the features are computed by the actor workers during the log-prob recompute, and with 2 workers
each response sits in another micro-batch (other padding width and batch shape), so float32 results may differ in
the last bits. What must not: responses, cluster sizes and penalties; the memory's labels; its features up to that
rounding. The test writes what it measured to `dp_comparison.json` and prints it.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest
from verl_subprocess import RecipeRun, tiny_assets

from verl_meds.verl.checkpoint import read_memory_state

pytestmark = [pytest.mark.requires_verl, pytest.mark.slow]

STEPS = 2
COMMON = [
    "data.train_max_samples=4",
    "data.train_batch_size=4",
    "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.top_k=1",
    "algorithm.filter_groups.enable=false",
    "meds.shaping.penalty_target=both",  # greedy answers are mostly right: remember and penalise both outcomes
    "meds.shaping.alpha=0.01",  # penalties below the cap, so equal penalties mean equal |C| and not both capped
    "meds.shaping.beta=1.0",
    f"trainer.total_training_steps={STEPS}",
    f"trainer.save_freq={STEPS}",
    "meds_dump.enable=true",
    "meds_dump.responses=true",
]
FEATURE_ATOL = 1e-4  # logit-lens values are O(1); float32 reduction-order differences are ~1e-6


def _train(out, workers: int) -> tuple[dict, dict, float]:
    run = RecipeRun("meds_dapo", out, tiny_assets(), [*COMMON, f"trainer.n_gpus_per_node={workers}"], num_gpus=workers)
    started = time.monotonic()
    try:
        run.start()
        code = run.wait(timeout_seconds=1200)
        assert code == 0, run.log_tail()
    finally:
        run.cleanup()
    records = {}
    for line in (run.checkpoints / "analysis.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[(r["step"], r["prompt_id"], r["sample_index"])] = r
    state = read_memory_state(str(run.checkpoints / f"global_step_{STEPS}" / "meds_memory.pkl"))
    return records, state, time.monotonic() - started


def test_one_and_two_workers_give_the_same_memory(tmp_path):
    one, state_one, seconds_one = _train(tmp_path / "dp1", workers=1)
    two, state_two, seconds_two = _train(tmp_path / "dp2", workers=2)

    assert one.keys() == two.keys() and len(one) == STEPS * 4 * 8
    same_response = [one[k]["response"] == two[k]["response"] for k in one]
    with_features = [k for k in one if one[k]["features"] is not None and two[k]["features"] is not None]
    feature_diff = max(
        (float(np.max(np.abs(np.subtract(one[k]["features"], two[k]["features"])))) for k in with_features),
        default=0.0,
    )
    buffers_one = {(b["prompt_id"], b["outcome"]): b for b in state_one["buffers"]}
    buffers_two = {(b["prompt_id"], b["outcome"]): b for b in state_two["buffers"]}
    comparable = [k for k, b in buffers_one.items() if b["features"].shape == buffers_two.get(k, b)["features"].shape]
    diffs = [np.abs(buffers_one[k]["features"] - buffers_two[k]["features"]).max(initial=0.0) for k in comparable]
    memory_diff = float(max(diffs, default=0.0))
    report = {
        "rollouts": len(one),
        "responses_identical": sum(same_response),
        "features_compared": len(with_features),
        "features_bit_identical": sum(one[k]["features"] == two[k]["features"] for k in with_features),
        "max_abs_feature_diff": feature_diff,
        "memory_max_abs_feature_diff": memory_diff,
        "cluster_sizes_identical": sum(one[k]["cluster_size"] == two[k]["cluster_size"] for k in one),
        "penalties_identical": sum(one[k]["penalty"] == two[k]["penalty"] for k in one),
        "penalised_rollouts": sum(one[k]["penalty"] > 0 for k in one),
        "cluster_size_counts": dict(sorted(Counter(r["cluster_size"] for r in one.values()).items())),
        "memory_entries": [sum(len(b["features"]) for b in s["buffers"]) for s in (state_one, state_two)],
        "seconds": [round(seconds_one), round(seconds_two)],
    }
    (tmp_path / "dp_comparison.json").write_text(json.dumps(report, indent=1))
    print("1 vs 2 workers:", json.dumps(report))

    assert all(same_response), "greedy rollouts differ between 1 and 2 replicas; nothing else can be compared"
    assert report["features_compared"] > 0 and report["penalised_rollouts"] > 0 and report["memory_entries"][0] > 0
    assert feature_diff <= FEATURE_ATOL
    assert report["cluster_sizes_identical"] == len(one) and report["penalties_identical"] == len(one)
    assert buffers_one.keys() == buffers_two.keys()
    for key, buffer in buffers_one.items():
        np.testing.assert_array_equal(buffer["labels"], buffers_two[key]["labels"])
        np.testing.assert_allclose(buffer["features"], buffers_two[key]["features"], rtol=0, atol=FEATURE_ATOL)
