"""Tests for `verl_meds.shaping`: penalty, shaping targets, NaN handling, GRPO advantages (loop vs vectorised)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_meds.shaping import (
    grpo_advantages,
    grpo_advantages_reference,
    penalty_from_cluster_sizes,
    shape_rewards,
)


def test_penalty_formula_and_saturation():
    sizes = torch.tensor([0, 1, 4, 6, 7, 1000])
    penalties = penalty_from_cluster_sizes(sizes, alpha=0.1, beta=0.2)
    assert penalties.dtype == torch.float32
    expected = [min(0.1 * math.log(size + 1), 0.2) for size in sizes.tolist()]
    assert torch.allclose(penalties, torch.tensor(expected))
    assert penalties[2].item() == pytest.approx(0.1609, abs=1e-4)
    # ln(7) * 0.1 = 0.1946 < 0.2 <= ln(8) * 0.1 = 0.2079: the cap is reached at |C| = 7 and stays there.
    assert penalties[3].item() < 0.2
    assert penalties[4].item() == pytest.approx(0.2) and penalties[5].item() == pytest.approx(0.2)
    assert torch.equal(penalty_from_cluster_sizes(sizes, alpha=0.0, beta=0.2), torch.zeros(6))
    assert penalty_from_cluster_sizes(torch.tensor([], dtype=torch.long), 0.1, 0.2).shape == (0,)


def test_penalty_rejects_bad_inputs():
    with pytest.raises(ValueError, match="cluster_sizes must be finite and >= 0"):
        penalty_from_cluster_sizes(torch.tensor([-1]), 0.1, 0.2)
    with pytest.raises(ValueError, match="alpha and beta must be >= 0"):
        penalty_from_cluster_sizes(torch.tensor([1]), -0.1, 0.2)


REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, -1.0])
CORRECT = torch.tensor([True, False, False, True, False])
PENALTIES = torch.tensor([0.1, 0.2, 0.0, 0.05, 0.1])


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("wrong", [1.0, -0.2, 0.0, 1.0, -1.1]),
        ("right", [1.0 / 1.1, 0.0, 0.0, 1.0 / 1.05, -1.0]),
        ("both", [1.0 / 1.1, -0.2, 0.0, 1.0 / 1.05, -1.1]),
        ("none", [1.0, 0.0, 0.0, 1.0, -1.0]),
    ],
)
def test_shape_rewards_targets(target, expected):
    shaped, metrics = shape_rewards(REWARDS, CORRECT, PENALTIES, target)
    assert torch.allclose(shaped, torch.tensor(expected))
    applied = {
        "wrong": [0, 0.2, 0, 0, 0.1],
        "right": [0.1, 0, 0, 0.05, 0],
        "both": [0.1, 0.2, 0, 0.05, 0.1],
        "none": [0, 0, 0, 0, 0],
    }[target]
    assert metrics["meds/penalty/mean"] == pytest.approx(sum(applied) / 5)
    assert metrics["meds/penalty/max"] == pytest.approx(max(applied))
    assert metrics["meds/frac_penalized"] == pytest.approx(sum(a > 0 for a in applied) / 5)
    assert metrics["meds/reward/raw_mean"] == pytest.approx(0.2)
    assert metrics["meds/reward/shaped_mean"] == pytest.approx(sum(expected) / 5)
    assert metrics["meds/rewards/nonfinite_frac"] == 0.0


def test_non_finite_rewards_stay_missing_and_are_counted():
    rewards = torch.tensor([float("nan"), float("inf"), 1.0, 0.0])
    correct = torch.tensor([False, True, True, False])
    shaped, metrics = shape_rewards(rewards, correct, torch.full((4,), 0.1), "both")
    assert torch.isnan(shaped[:2]).all()  # a reward that failed to compute is not turned into a wrong answer
    assert torch.allclose(shaped[2:], torch.tensor([1.0 / 1.1, -0.1]))
    assert metrics["meds/rewards/nonfinite_frac"] == 0.5
    assert metrics["meds/frac_penalized"] == 0.5  # no penalty on the missing rows
    assert metrics["meds/reward/raw_mean"] == pytest.approx(0.5)
    assert metrics["meds/reward/shaped_mean"] == pytest.approx((1.0 / 1.1 - 0.1) / 2)


def test_shape_rewards_validation():
    with pytest.raises(ValueError, match="target must be one of"):
        shape_rewards(REWARDS, CORRECT, PENALTIES, "all")
    with pytest.raises(ValueError, match="same shape"):
        shape_rewards(REWARDS, CORRECT[:3], PENALTIES, "wrong")
    with pytest.raises(ValueError, match="penalties must be finite and >= 0"):
        shape_rewards(REWARDS, CORRECT, -PENALTIES, "wrong")


@pytest.mark.parametrize("norm_by_std", [True, False])
@pytest.mark.parametrize(("num_rows", "num_groups", "seed"), [(8, 2, 0), (33, 5, 1), (64, 64, 2), (100, 7, 3)])
def test_grpo_vectorised_matches_reference(num_rows, num_groups, seed, norm_by_std):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(num_rows, generator=generator)
    group_ids = np.array([f"uid-{g}" for g in torch.randint(0, num_groups, (num_rows,), generator=generator)])
    fast = grpo_advantages(scores, group_ids, std_eps=1e-6, norm_by_std=norm_by_std)
    slow = grpo_advantages_reference(scores, group_ids, std_eps=1e-6, norm_by_std=norm_by_std)
    assert fast.dtype == scores.dtype and fast.shape == (num_rows,)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    binary = (scores > 0).float()
    torch.testing.assert_close(
        grpo_advantages(binary, group_ids, norm_by_std=norm_by_std),
        grpo_advantages_reference(binary, group_ids, norm_by_std=norm_by_std),
        atol=1e-5,
        rtol=1e-5,
    )


def test_grpo_degenerate_groups():
    scores = torch.tensor([0.7, -0.2, -0.2, -0.2, 1.0, 3.0])
    advantages = grpo_advantages(scores, [0, 1, 1, 1, 2, 2])
    assert advantages[0].item() == pytest.approx(0.7 / (1 + 1e-6))  # singleton: mean 0, std 1 (verl's rule)
    assert advantages[1:4].tolist() == [0.0, 0.0, 0.0]  # identical scores: exactly 0
    std = torch.tensor([1.0, 3.0]).std().item()
    assert advantages[4:].tolist() == pytest.approx([-1.0 / (std + 1e-6), 1.0 / (std + 1e-6)])
    # Group ids may be a tensor; group order does not matter.
    assert torch.equal(grpo_advantages(scores, torch.tensor([5, 9, 9, 9, 1, 1])), advantages)
    with pytest.raises(ValueError, match="valid must have the shape"):
        grpo_advantages(torch.zeros(2), [0, 0], valid=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="group_ids must have length N=2"):
        grpo_advantages(torch.zeros(2), [0])


def test_parity_with_recipe_formula():
    """The recipe: p' = -coef * min(ln(1 + |C|), C); wrong r + p', right r / (1 - p'); then GRPO."""
    coef, cap = 0.1, 2.0
    sizes = torch.tensor([0, 3, 10, 1, 0, 2, 50, 0])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    correct = rewards > 0
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    recipe_penalty = -coef * torch.clamp(torch.log1p(sizes.double()), max=cap)
    recipe_scores = torch.where(correct, rewards.double() / (1 - recipe_penalty), rewards.double() + recipe_penalty)
    recipe_advantages = grpo_advantages_reference(recipe_scores, groups)

    penalties = penalty_from_cluster_sizes(sizes, alpha=coef, beta=coef * cap)
    shaped, _ = shape_rewards(rewards, correct, penalties, "both")
    torch.testing.assert_close(shaped.double(), recipe_scores, atol=1e-6, rtol=0)
    torch.testing.assert_close(grpo_advantages(shaped, groups).double(), recipe_advantages, atol=1e-5, rtol=0)


def test_grpo_rows_without_reward_are_left_out():
    nan = float("nan")
    # A reward that failed to compute: advantage 0, statistics from the valid rows [1, 0, 0] only.
    advantages = grpo_advantages(torch.tensor([1.0, nan, 0.0, 0.0]), [0] * 4)
    assert advantages.tolist() == pytest.approx([1.1547, 0.0, -0.5774, -0.5774], abs=1e-4)
    # A fully masked response: the same through `valid`.
    valid = torch.tensor([True, False, True, True])
    advantages = grpo_advantages(torch.tensor([0.0, 1.0, 1.0, 0.0]), [0] * 4, valid=valid)
    assert advantages.tolist() == pytest.approx([-0.5774, 0.0, 1.1547, -0.5774], abs=1e-4)
    # A group with no valid row gives zeros; other groups are untouched.
    advantages = grpo_advantages(torch.tensor([nan, float("inf"), 1.0, 0.0]), [0, 0, 1, 1])
    assert advantages[:2].tolist() == [0.0, 0.0]
    assert advantages[2:].tolist() == pytest.approx([0.7071, -0.7071], abs=1e-4)


@settings(max_examples=150, deadline=None)
@given(
    scores=st.lists(
        st.one_of(st.floats(-5, 5, allow_nan=False), st.just(float("nan")), st.just(float("-inf"))),
        min_size=1,
        max_size=24,
    ),
    groups=st.lists(st.integers(0, 4), min_size=24, max_size=24),
    masked=st.lists(st.booleans(), min_size=24, max_size=24),
    norm_by_std=st.booleans(),
)
def test_grpo_invalid_rows_are_as_if_never_generated(scores, groups, masked, norm_by_std):
    """For any mix of NaN / infinite / masked rows: invalid rows get 0, the others get exactly the advantage of the
    valid rows alone (dropped from the batch), and fast and reference agree."""
    n = len(scores)
    values = torch.tensor(scores, dtype=torch.float32)
    group_ids = groups[:n]
    valid = ~torch.tensor(masked[:n])
    out = grpo_advantages(values, group_ids, norm_by_std=norm_by_std, valid=valid)
    assert torch.isfinite(out).all()
    counted = torch.isfinite(values) & valid
    assert out[~counted].abs().sum() == 0
    rows = torch.nonzero(counted).flatten().tolist()
    if rows:
        alone = grpo_advantages(values[rows], [group_ids[r] for r in rows], norm_by_std=norm_by_std)
        torch.testing.assert_close(out[rows], alone, atol=1e-6, rtol=0)
    reference = grpo_advantages_reference(values, group_ids, norm_by_std=norm_by_std, valid=valid)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
