"""Fork-parity mode reproduces the authors' algorithm (order and formulas), with or without their clustering faults.

The reference below is an independent re-statement of the authors' per-step procedure, written from its
description (STYLE.md, "Existing MEDS recipe"; issue 3): memory keyed by (prompt, correctness), never trimmed;
contrib ``hdbscan`` with ``min_cluster_size=2, min_samples=1`` on L2-normalised features; each new response is
assigned by a 3-nearest-neighbour vote over the labels of the previous fit, then the history is refitted with the
new responses; penalty ``p = -alpha * min(ln(1 + |C|), 2)``; a wrong answer gets ``r + p``, a right one
``r / (1 - p)``. Their three clustering faults: identical repeated errors come back as noise (no single cluster
allowed); a response whose vote is noise is charged the number of noise points; a tied vote goes to noise.
"""

from __future__ import annotations

import math

import hdbscan
import numpy as np
import pytest
import torch

from verl_meds.config import MEDSConfig
from verl_meds.memory import ErrorMemory
from verl_meds.shaping import penalty_from_cluster_sizes, shape_rewards


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1.0), x)


class AuthorsProcedure:
    """The authors' per-step procedure, re-stated; ``faults`` keeps their three clustering faults."""

    def __init__(self, alpha: float, faults: bool, k: int = 3, cap: float = 2.0):
        self.alpha, self.faults, self.k, self.cap = alpha, faults, k, cap
        self.history: dict[tuple, np.ndarray] = {}
        self.labels: dict[tuple, np.ndarray] = {}

    def _fit(self, x: np.ndarray) -> np.ndarray:
        if len(x) < 2:
            return np.full(len(x), -1)
        model = hdbscan.HDBSCAN(min_cluster_size=2, min_samples=1, allow_single_cluster=not self.faults)
        return model.fit_predict(x.astype(np.float64))

    def _vote(self, x: np.ndarray, hist: np.ndarray, labels: np.ndarray) -> int:
        d = np.linalg.norm(hist - x, axis=1)
        nearest = labels[np.argsort(d, kind="stable")[: self.k]]
        values, counts = np.unique(nearest, return_counts=True)
        top = values[counts == counts.max()]
        if len(top) == 1:
            return int(top[0])
        if self.faults:
            return -1  # fault: a tie goes to noise
        non_noise = [v for v in nearest if v != -1 and v in top]
        return int(non_noise[0]) if non_noise else -1

    def step(self, prompt_ids, features, correct, rewards) -> tuple[np.ndarray, np.ndarray]:
        feats = _normalise(np.asarray(features, dtype=np.float64))
        penalties = np.zeros(len(prompt_ids))
        keys = [(p, bool(c)) for p, c in zip(prompt_ids, correct, strict=True)]
        for key in dict.fromkeys(keys):
            rows = [i for i, k in enumerate(keys) if k == key]
            hist = self.history.get(key, np.zeros((0, feats.shape[1])))
            labels = self.labels.get(key, np.zeros(0, dtype=int))
            for i in rows:
                if len(hist) == 0:
                    size = 0
                else:
                    label = self._vote(feats[i], hist, labels)
                    if label == -1:
                        size = int((labels == -1).sum()) if self.faults else 0
                    else:
                        size = int((labels == label).sum())
                penalties[i] = -self.alpha * min(math.log(1 + size), self.cap)
            self.history[key] = np.concatenate([hist, feats[rows]], axis=0)
            self.labels[key] = self._fit(self.history[key])
        shaped = np.array(
            [r + p if not c else r / (1 - p) for r, p, c in zip(rewards, penalties, correct, strict=True)]
        )
        return -penalties, shaped


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
