"""Scale independence: the tiny CPU recipe with 1 worker and with 2 data-parallel workers (gloo) on 2 nodes gives the
same MEDS memory, padded or packed.

The module starts one Ray cluster of two logical nodes on this machine (`verl_inprocess.ray_cluster`), each with
one logical GPU, and trains the reference once: 1 worker, padded sequences (the CPU recipe's default). The 2-worker
runs use `trainer.nnodes=2` and `trainer.n_gpus_per_node=1`, so verl's resource pool puts one worker on each node
(the test checks that the placement groups landed on two nodes), and are compared with that reference:

- packed (`use_remove_padding=true`) with dynamic batch sizes (`use_dynamic_bsz=true`, token budgets small enough
  that each worker's share of a step is cut into several micro-batches): the feature capture reads packed hidden
  states, a GPU run's usual path. This run is also the multi-node check (MEDS metrics, memory checkpoint).
- padded (`slow`): the same with fixed micro-batches; with the packed run it tells a packing fault from a
  data-parallel one.

All runs use the same seed and data, MEDS on DAPO, 4 prompts per step for 2 steps, and `rollout.top_k=1`, which
makes the rollouts greedy and so the same whatever replica or batch serves them (sampling at temperature 1 draws
from one RNG stream per rollout replica, so 1 and 2 replicas would see different responses and there would be
nothing to compare). Greedy answers of the warm-started model are mostly right, so `penalty_target=both` stores and
penalises right answers too (otherwise the memory could stay empty). The trainer's per-rollout dump (`meds_dump`)
records, for every (step, prompt, rollout), the response, its logit-lens features, |C| and the penalty.

What may differ: the features are computed by the actor workers during the log-prob recompute, and with 2 workers,
packing or dynamic batches each response sits in another micro-batch (other padding width, batch shape or packed
neighbours), so float32 results may differ in the last bits. What must not: responses, cluster sizes and penalties;
the memory's labels; its features up to that rounding. Each test writes what it measured to `<name>_comparison.json`
and prints it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import verl_inprocess
from verl_subprocess import tiny_assets

from verl_meds.verl.checkpoint import read_memory_state

pytestmark = pytest.mark.requires_verl

STEPS = 2
PROMPTS = 4
ROLLOUTS = 8  # tiny_cpu: rollout.n
COMMON = [
    f"data.train_max_samples={PROMPTS}",
    f"data.train_batch_size={PROMPTS}",
    "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
    "actor_rollout_ref.rollout.top_k=1",
    "algorithm.filter_groups.enable=false",
    "meds.shaping.penalty_target=both",  # greedy answers are mostly right: remember and penalise both outcomes
    "meds.shaping.alpha=0.01",  # penalties below the cap, so equal penalties mean equal |C| and not both capped
    "meds.shaping.beta=1.0",
    f"trainer.save_freq={STEPS}",
    "meds_dump.enable=true",
    "meds_dump.responses=true",
]
TWO_NODES = ["trainer.nnodes=2", "trainer.n_gpus_per_node=1"]
TOKENS_PER_MICRO_BATCH = 256
"""Dynamic batches' token budget per worker: above the longest possible sequence (64 prompt + 48 response tokens),
below what a worker holds (per step 16 sequences of about 46 tokens for the log-prob pass, 8 per PPO mini-batch),
so every pass runs more than one packed micro-batch."""
PACKED = [
    "actor_rollout_ref.model.use_remove_padding=true",
    "actor_rollout_ref.actor.use_dynamic_bsz=true",
    f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={TOKENS_PER_MICRO_BATCH}",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
    f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={TOKENS_PER_MICRO_BATCH}",
]
FEATURE_ATOL = 1e-4  # logit-lens values are O(1); float32 reduction-order differences are ~1e-6
MEDS_METRICS = ("meds/penalty/mean", "meds/frac_penalized", "meds/memory/num_entries", "meds/features/missing_frac")


@dataclass
class Run:
    """What one run left: the dump by (step, prompt id, rollout), the step-2 memory, the metrics, the seconds."""

    records: dict[tuple, dict]
    state: dict
    metrics: dict[int, dict]
    seconds: float
    checkpoints: Path


def _train(out: Path, extra: list[str]) -> Run:
    started = time.monotonic()
    metrics = verl_inprocess.train("meds_dapo", out, tiny_assets(), STEPS, [*COMMON, *extra])
    seconds = time.monotonic() - started
    checkpoints = out / "checkpoints"
    records = {}
    for line in (checkpoints / "analysis.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[(r["step"], r["prompt_id"], r["sample_index"])] = r
    state = read_memory_state(str(checkpoints / f"global_step_{STEPS}" / "meds_memory.pkl"))
    return Run(records, state, metrics, seconds, checkpoints)


@pytest.fixture(scope="module")
def cluster():
    """Two logical nodes on this machine, one logical GPU each; yields their Ray node ids."""
    with verl_inprocess.ray_cluster(gpus_per_node=[1, 1]) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory) -> Run:
    """1 worker, padded: the run every other one is compared with."""
    return _train(tmp_path_factory.mktemp("dp1") / "run", [])


def _placement_groups() -> set[str]:
    import ray

    return set(ray.util.placement_group_table())


def _nodes_used(placement_groups_before: set[str]) -> list[str]:
    """Node of each worker bundle of the placement groups created since ``placement_groups_before``."""
    import ray

    return [
        node
        for pg_id, info in ray.util.placement_group_table().items()
        if pg_id not in placement_groups_before
        for node in info["bundles_to_node_id"].values()
    ]


def _compare(name: str, one: Run, two: Run, out: Path) -> dict:
    """Compare two runs' dumps and memories, write ``<name>_comparison.json``, assert they agree."""
    assert one.records.keys() == two.records.keys() and len(one.records) == STEPS * PROMPTS * ROLLOUTS
    a, b = one.records, two.records
    same_response = [a[k]["response"] == b[k]["response"] for k in a]
    with_features = [k for k in a if a[k]["features"] is not None and b[k]["features"] is not None]
    feature_diff = max(
        (float(np.max(np.abs(np.subtract(a[k]["features"], b[k]["features"])))) for k in with_features), default=0.0
    )
    buffers_one = {(x["prompt_id"], x["outcome"]): x for x in one.state["buffers"]}
    buffers_two = {(x["prompt_id"], x["outcome"]): x for x in two.state["buffers"]}
    comparable = [k for k, x in buffers_one.items() if x["features"].shape == buffers_two.get(k, x)["features"].shape]
    diffs = [np.abs(buffers_one[k]["features"] - buffers_two[k]["features"]).max(initial=0.0) for k in comparable]
    report = {
        "rollouts": len(a),
        "responses_identical": sum(same_response),
        "features_compared": len(with_features),
        "features_bit_identical": sum(a[k]["features"] == b[k]["features"] for k in with_features),
        "max_abs_feature_diff": feature_diff,
        "memory_max_abs_feature_diff": float(max(diffs, default=0.0)),
        "cluster_sizes_identical": sum(a[k]["cluster_size"] == b[k]["cluster_size"] for k in a),
        "penalties_identical": sum(a[k]["penalty"] == b[k]["penalty"] for k in a),
        "penalised_rollouts": sum(a[k]["penalty"] > 0 for k in a),
        "cluster_size_counts": dict(sorted(Counter(r["cluster_size"] for r in a.values()).items())),
        "memory_entries": [sum(len(x["features"]) for x in s["buffers"]) for s in (one.state, two.state)],
        "seconds": [round(one.seconds), round(two.seconds)],
    }
    (out / f"{name}_comparison.json").write_text(json.dumps(report, indent=1))
    print(f"1 worker padded vs {name}:", json.dumps(report))

    assert all(same_response), "greedy rollouts differ between 1 and 2 replicas; nothing else can be compared"
    assert report["features_compared"] > 0 and report["penalised_rollouts"] > 0 and report["memory_entries"][0] > 0
    assert feature_diff <= FEATURE_ATOL
    assert report["cluster_sizes_identical"] == len(a) and report["penalties_identical"] == len(a)
    assert buffers_one.keys() == buffers_two.keys()
    for key, buffer in buffers_one.items():
        np.testing.assert_array_equal(buffer["labels"], buffers_two[key]["labels"])
        np.testing.assert_allclose(buffer["features"], buffers_two[key]["features"], rtol=0, atol=FEATURE_ATOL)
    return report


def test_two_packed_workers_on_two_nodes_give_the_same_memory(cluster, reference, tmp_path):
    """Packed sequences, dynamic batch sizes, one worker per node: the same features, |C|, penalties and memory as
    the padded single worker; the MEDS metrics and the memory checkpoint of a multi-node run are complete."""
    before = _placement_groups()
    packed = _train(tmp_path / "packed", [*TWO_NODES, *PACKED])
    assert sorted(_nodes_used(before)) == sorted(cluster), "the 2 workers did not run on 2 different nodes"
    _compare("packed_two_nodes", reference, packed, tmp_path)

    assert sorted(packed.metrics) == list(range(1, STEPS + 1))
    for step, logged in packed.metrics.items():
        for name in MEDS_METRICS:
            assert name in logged, f"{name} not logged at step {step}"
            assert logged[name] == pytest.approx(reference.metrics[step][name], abs=1e-6), name
    assert packed.metrics[STEPS]["meds/memory/num_entries"] == sum(len(b["features"]) for b in packed.state["buffers"])
    assert packed.metrics[1]["meds/features/missing_frac"] < 1.0
    assert (packed.checkpoints / "latest_checkpointed_iteration.txt").read_text().strip() == str(STEPS)


@pytest.mark.slow
def test_two_padded_workers_on_two_nodes_give_the_same_memory(cluster, reference, tmp_path):
    _compare("padded_two_nodes", reference, _train(tmp_path / "padded", TWO_NODES), tmp_path)
