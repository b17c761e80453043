"""Deterministic and order-independent memory updates.

(a) verl reorders a step's rows to balance its workers; the trainer visits them in `canonical_order` (prompt id,
    then rollout index), so any permutation of the same step gives the same penalties per row and a memory whose
    pickled state is byte-identical.
(b) Clustering uses no RNG: it leaves the global RNGs untouched, and the same inputs give the same labels, sizes and
    memory state in fresh interpreters with different hash seeds and different global RNG seeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from verl_meds.config import MEDSConfig
from verl_meds.memory import ErrorMemory
from verl_meds.shaping import penalty_from_cluster_sizes

ROOT = Path(__file__).resolve().parents[2]
F = 4


def make_step(step: int, prompts: list[str], rollouts: int = 8, seed: int = 0):
    """One step in verl's layout: rows grouped by prompt, keys `{uid}_{rollout}_0`, two recurring error modes."""
    rng = np.random.default_rng(seed + 1000 * step)
    prompt_ids, keys, rows, correct = [], [], [], []
    for g, prompt in enumerate(prompts):
        modes = np.random.default_rng([seed, zlib.crc32(prompt.encode())]).normal(size=(2, F))  # same every step
        uid = f"{rng.integers(1 << 62):x}-{g}"  # a fresh uid per step, as verl's uuid4
        for i in range(rollouts):
            prompt_ids.append(prompt)
            keys.append(f"{uid}_{i}_0")
            rows.append(modes[rng.integers(2)] + 1e-4 * rng.normal(size=F))  # within ClusterConfig's merge_distance
            correct.append(bool(rng.random() < 0.3))
    features = np.array(rows, dtype=np.float32)  # (N, F)
    features[rng.random(len(rows)) < 0.1] = np.nan  # missing answers
    return prompt_ids, keys, features, np.array(correct)


def memory_step(memory: ErrorMemory, prompt_ids, keys, features, correct) -> torch.Tensor:
    """The trainer's memory update (`MEDSTrainer._compute_old_log_prob`): canonical order in, penalties out (N,)."""
    from verl_meds.step import canonical_order

    valid = np.isfinite(features).all(axis=1)
    # rows of one prompt with the same rollout index are ordered by content (the trainer adds the response tokens)
    order = canonical_order(prompt_ids, keys, tiebreak=[row.tobytes() for row in features])
    sorted_sizes, _ = memory.step([prompt_ids[r] for r in order], features[order], valid[order], correct[order])
    sizes = np.empty_like(sorted_sizes)
    sizes[order] = sorted_sizes
    shaping = memory.config.shaping
    return penalty_from_cluster_sizes(torch.as_tensor(sizes), shaping.alpha, shaping.beta)


def run_permuted(config: MEDSConfig, steps, permutations) -> tuple[list[torch.Tensor], bytes]:
    """Feed each step with its rows permuted; return the penalties in the original row order and the state bytes."""
    memory = ErrorMemory(config)
    penalties = []
    for (prompt_ids, keys, features, correct), perm in zip(steps, permutations, strict=True):
        shuffled = ([prompt_ids[i] for i in perm], [keys[i] for i in perm], features[perm], correct[perm])
        p = memory_step(memory, *shuffled)
        unshuffled = torch.empty_like(p)
        unshuffled[torch.as_tensor(perm)] = p
        penalties.append(unshuffled)
    return penalties, pickle.dumps(memory.state_dict(), protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.requires_verl
@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"clustering": {"assignment": "knn"}, "memory": {"capacity": 12}},
        {"shaping": {"penalty_target": "both"}, "clustering": {"min_samples": 2}},
        {"clustering": {"method": "single"}},
    ],
    ids=["joint", "knn_capacity12", "both_min_samples2", "single"],
)
def test_permuted_steps_give_identical_penalties_and_state_bytes(sections):
    pytest.importorskip("verl")
    config = MEDSConfig.from_dict(sections)
    steps = [make_step(s, ["q7", "q1", "q10", "q3", "q2"]) for s in range(4)]
    sizes = [len(step[0]) for step in steps]
    reference_penalties, reference_state = run_permuted(config, steps, [np.arange(n) for n in sizes])
    assert any(bool((p > 0).any()) for p in reference_penalties), "the steps must produce some penalties"
    rng = np.random.default_rng(7)
    for trial in range(8):
        perms = [rng.permutation(n) for n in sizes]
        if trial == 0:
            perms = [np.arange(n)[::-1].copy() for n in sizes]  # fully reversed
        penalties, state = run_permuted(config, steps, perms)
        for a, b in zip(penalties, reference_penalties, strict=True):
            assert torch.equal(a, b)
        assert state == reference_state, f"trial {trial}: memory state differs under a permutation"


@pytest.mark.requires_verl
@pytest.mark.parametrize("groups", [2, 3])
def test_one_prompt_in_several_groups_of_a_step_is_order_independent(groups):
    """Dynamic sampling can concatenate generation batches of one prompt: rows (p, i) of its groups tie on
    (prompt id, rollout index) and must be ordered by content, not by verl's batch order (found by this suite)."""
    pytest.importorskip("verl")
    parts = [make_step(0, ["p", "q"], seed=g + 1) for g in range(groups)]
    step = (
        sum((p[0] for p in parts), []),
        sum((p[1] for p in parts), []),
        np.concatenate([p[2] for p in parts]),
        np.concatenate([p[3] for p in parts]),
    )
    n = len(step[0])
    reference_penalties, reference_state = run_permuted(MEDSConfig(), [step, step], [np.arange(n)] * 2)
    rng = np.random.default_rng(groups)
    for _ in range(6):
        perms = [rng.permutation(n) for _ in range(2)]
        penalties, state = run_permuted(MEDSConfig(), [step, step], perms)
        assert state == reference_state
        for a, b in zip(penalties, reference_penalties, strict=True):
            assert torch.equal(a, b)


@pytest.mark.requires_verl
def test_canonical_order_rejects_mismatched_lengths():
    pytest.importorskip("verl")
    from verl_meds.step import canonical_order

    with pytest.raises(ValueError, match="lengths differ"):
        canonical_order(["p", "p"], ["u_0_0", "u_1_0"], tiebreak=[b""])
    with pytest.raises(ValueError, match="lengths differ"):
        canonical_order(["p"], ["u_0_0", "u_1_0"])


# ------------------------------------------------------------------------------------------------ (b) no RNG

DETERMINISM_SCRIPT = """
import hashlib, json, pickle, random, sys
import numpy as np

seed = int(sys.argv[1])
random.seed(seed)
np.random.seed(seed)
try:
    import torch
    torch.manual_seed(seed)
except ImportError:
    pass
sys.path.insert(0, sys.argv[2])
from test_determinism import clustering_digest
print(json.dumps(clustering_digest()))
"""


def clustering_digest() -> dict[str, str]:
    """SHA-256 of the labels and sizes of several fits and of a memory's state, on fixed inputs with ties."""
    from verl_meds.clustering import cluster_sizes_for_new, fit_labels
    from verl_meds.config import ClusterConfig

    rng = np.random.default_rng(123)
    centres = rng.normal(size=(4, F))
    blobs = centres[rng.integers(4, size=60)] + 0.05 * rng.normal(size=(60, F))  # (60, F)
    X = np.concatenate([blobs, np.tile(centres[:1], (6, 1))])  # (66, F): six exact duplicates
    X[::17] = np.round(X[::17], 1)  # rounded rows: equal distances, i.e. ties in the tree
    X = X.astype(np.float32)
    out = {}
    for name, cfg in {
        "default": ClusterConfig(),
        "min_samples3": ClusterConfig(min_samples=3),
        "manhattan_raw": ClusterConfig(metric="manhattan", l2_normalize=False),
        "no_single": ClusterConfig(allow_single_cluster=False),
    }.items():
        labels = fit_labels(X, cfg)
        sizes, labels_all = cluster_sizes_for_new(X[:40], X[40:], cfg)
        knn_sizes, _ = cluster_sizes_for_new(X[:40], X[40:], ClusterConfig(assignment="knn", metric=cfg.metric))
        blob = labels.astype(np.int64).tobytes() + sizes.tobytes() + labels_all.astype(np.int64).tobytes()
        out[name] = hashlib.sha256(blob + knn_sizes.tobytes()).hexdigest()
    memory = ErrorMemory(MEDSConfig.from_dict({"memory": {"capacity": 20}}))
    for s in range(5):
        ids = [f"p{i % 3}" for i in range(48)]
        rows = centres[rng.integers(4, size=48)] + 0.05 * rng.normal(size=(48, F))
        sizes, _ = memory.step(ids, rows.astype(np.float32), np.ones(48, bool), rng.random(48) < 0.2)
        out[f"memory_sizes_{s}"] = hashlib.sha256(sizes.tobytes()).hexdigest()
    out["memory_state"] = hashlib.sha256(pickle.dumps(memory.state_dict(), protocol=4)).hexdigest()
    return out


def test_clustering_leaves_the_global_rngs_alone():
    np.random.seed(5)
    random.seed(5)
    torch.manual_seed(5)
    before = (pickle.dumps(np.random.get_state()), random.getstate(), torch.get_rng_state().clone())
    clustering_digest()
    after = (pickle.dumps(np.random.get_state()), random.getstate(), torch.get_rng_state())
    assert before[0] == after[0], "numpy's global RNG was used"
    assert before[1] == after[1], "python's random was used"
    assert torch.equal(before[2], after[2]), "torch's global RNG was used"


def test_same_inputs_same_labels_across_processes():
    here = clustering_digest()
    procs = []
    for seed, hash_seed in ((1, "0"), (2, "12345")):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(DETERMINISM_SCRIPT), str(seed), str(Path(__file__).parent)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=env,
            )
        )
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
        assert json.loads(stdout.strip().splitlines()[-1]) == here
