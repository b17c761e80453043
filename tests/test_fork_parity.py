"""Fork-parity mode reproduces the authors' algorithm (order and formulas), with or without their clustering faults.

The reference is `verl_meds.authors.AuthorsProcedure`, a plain re-statement of the authors' per-step procedure
(contrib `hdbscan`, one response at a time); the product runs it through `ErrorMemory` and `verl_meds.shaping`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from verl_meds.authors import AuthorsProcedure
from verl_meds.config import MEDSConfig
from verl_meds.memory import ErrorMemory
from verl_meds.shaping import penalty_from_cluster_sizes, shape_rewards


def _steps(seed: int, num_steps: int = 6, prompts: int = 3, group: int = 8, dim: int = 4):
    """Features from a few modes per prompt, with exact repeats, so every branch (clusters, noise, ties) occurs."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(prompts, 3, dim)) * 3
    for _ in range(num_steps):
        pids, feats, correct = [], [], []
        for p in range(prompts):
            for _ in range(group):
                mode = rng.integers(0, 4)
                if mode == 3:
                    x = np.full(dim, 1.0)  # an exactly repeated error
                else:
                    x = centres[p, mode] + rng.normal(scale=0.05, size=dim)
                pids.append(f"p{p}")
                feats.append(x)
                correct.append(bool(rng.random() < 0.3))
        correct = np.array(correct)
        rewards = np.where(correct, 1.0, -1.0)
        yield pids, np.array(feats, dtype=np.float32), correct, rewards


@pytest.mark.parametrize("faults", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fork_parity_matches_authors_procedure(seed, faults):
    alpha = 0.1
    config = MEDSConfig.from_dict({"fork_parity": True, "reproduce_fork_faults": faults, "shaping": {"alpha": alpha}})
    memory = ErrorMemory(config)
    reference = AuthorsProcedure(alpha=alpha, faults=faults)
    nonzero = 0
    for pids, feats, correct, rewards in _steps(seed):
        sizes, _ = memory.step(pids, feats, np.ones(len(pids), dtype=bool), correct)
        penalties = penalty_from_cluster_sizes(torch.as_tensor(sizes), config.shaping.alpha, config.shaping.beta)
        shaped, _ = shape_rewards(
            torch.as_tensor(rewards, dtype=torch.float32),
            torch.as_tensor(correct),
            penalties,
            config.shaping.penalty_target,
        )
        ref_penalties, ref_shaped = reference.step(pids, feats, correct, rewards)
        np.testing.assert_allclose(penalties.numpy(), ref_penalties, atol=1e-6)
        np.testing.assert_allclose(shaped.numpy(), ref_shaped, atol=1e-6)
        nonzero += int((ref_penalties > 0).sum())
    assert nonzero > 0, "the fixture never produced a penalty"


def test_fork_parity_sets_the_authors_settings():
    config = MEDSConfig.from_dict({"fork_parity": True})
    assert config.clustering.assignment == "knn" and config.clustering.knn_k == 3
    assert config.clustering.min_cluster_size == 2 and config.clustering.min_samples == 1
    assert config.features.final_norm is False
    assert config.shaping.penalty_target == "both"
    assert config.shaping.beta == pytest.approx(2 * config.shaping.alpha)
    assert config.clustering.allow_single_cluster is True  # faults stay off unless asked for
    faulty = MEDSConfig.from_dict({"fork_parity": True, "reproduce_fork_faults": True})
    assert faulty.clustering.allow_single_cluster is False


def test_fork_faults_need_parity_mode():
    with pytest.raises(ValueError, match="reproduce_fork_faults"):
        MEDSConfig.from_dict({"reproduce_fork_faults": True})


def test_faults_change_results_on_repeated_errors():
    """Five identical wrong answers across two steps: penalised without the faults, never with them."""
    feats = np.tile(np.array([[1.0, 2.0, 3.0]], dtype=np.float32), (5, 1))
    results = {}
    for faults in (False, True):
        memory = ErrorMemory(MEDSConfig.from_dict({"fork_parity": True, "reproduce_fork_faults": faults}))
        ones, wrong = np.ones(5, dtype=bool), np.zeros(5, dtype=bool)
        memory.step(["p"] * 5, feats, ones, wrong)
        sizes, _ = memory.step(["p"] * 5, feats, ones, wrong)
        results[faults] = sizes
    assert (results[False] == 5).all()
    # With the faults, the five are noise; a noise vote is charged the number of noise points (5).
    assert (results[True] == 5).all()
