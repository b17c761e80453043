"""Tests for the `meds` advantage estimator: parity with verl's own GRPO outcome advantage, and hand cases."""

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn  # noqa: E402

from verl_meds.verl.advantage import compute_meds_outcome_advantage  # noqa: E402

pytestmark = pytest.mark.requires_verl


def _batch(seed: int, n: int = 48, t: int = 9, binary: bool = False):
    """Outcome rewards the way verl stores them: the score on the last response token, zeros elsewhere.

    Returns `(token_level_rewards (n, t) float32, response_mask (n, t) float32, index (n,) object array of uids)`.
    Group sizes are drawn from 1..6, so singleton groups occur.
    """
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(1, 7)))
    sizes[-1] -= sum(sizes) - n
    sizes = [s for s in sizes if s > 0]
    uids = np.array([f"uid-{g}" for g, size in enumerate(sizes) for _ in range(size)], dtype=object)
    rng.shuffle(uids)  # groups need not be contiguous
    lengths = rng.integers(1, t + 1, size=n)  # (n,) response lengths
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)  # (n, t)
    if binary:
        scores = rng.choice([-1.0, 1.0], size=n)
    else:
        scores = rng.uniform(-2.0, 2.0, size=n)
    rewards = np.zeros((n, t), dtype=np.float32)
    rewards[np.arange(n), lengths - 1] = scores
    return torch.from_numpy(rewards), torch.from_numpy(mask), uids


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("binary", [False, True])
def test_matches_verl_grpo(seed, norm, binary):
    rewards, mask, index = _batch(seed, binary=binary)
    assert any((index == uid).sum() == 1 for uid in set(index)), "the batch must contain a singleton group"
    ours_adv, ours_ret = compute_meds_outcome_advantage(
        rewards.clone(), mask, index, epsilon=1e-6, norm_adv_by_std_in_grpo=norm
    )
    verl_adv, verl_ret = compute_grpo_outcome_advantage(
        rewards.clone(), mask, index, epsilon=1e-6, norm_adv_by_std_in_grpo=norm
    )
    assert ours_adv.shape == rewards.shape and ours_adv.dtype == torch.float32
    torch.testing.assert_close(ours_adv, verl_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_ret, verl_ret, atol=1e-6, rtol=0)


def test_matches_verl_grpo_with_integer_group_ids_and_other_epsilon():
    rewards, mask, index = _batch(5, n=30, t=4)
    codes = np.array([int(uid.split("-")[1]) for uid in index])  # (n,) int group ids
    ours, _ = compute_meds_outcome_advantage(rewards, mask, codes, epsilon=0.1)
    theirs, _ = compute_grpo_outcome_advantage(rewards.clone(), mask, codes, epsilon=0.1)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_hand_case():
    # group a: scores 1, 2, 3 -> mean 2, unbiased std 1; group b: one response -> mean 0, std 1.
    rewards = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [0.5, 0.0]])  # (4, 2); row sum is the score
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    index = np.array(["a", "a", "a", "b"], dtype=object)
    adv, ret = compute_meds_outcome_advantage(rewards, mask, index)
    scale = 1.0 / (1.0 + 1e-6)
    expected = torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0], [0.5, 0.0]]) * scale
    torch.testing.assert_close(adv, expected, atol=1e-7, rtol=0)
    assert torch.equal(adv, ret)
    adv_plain, _ = compute_meds_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(adv_plain, torch.tensor([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0], [0.5, 0.0]]))


def test_group_with_identical_scores_gets_exactly_zero():
    rewards = torch.tensor([[0.0, -1.0], [-1.0, 0.0], [0.0, -1.0]])
    mask = torch.ones(3, 2)
    adv, _ = compute_meds_outcome_advantage(rewards, mask, np.array(["u", "u", "u"], dtype=object))
    assert torch.equal(adv, torch.zeros(3, 2))


def test_inputs_are_not_modified_and_padding_stays_zero():
    rewards, mask, index = _batch(7)
    before = rewards.clone()
    adv, _ = compute_meds_outcome_advantage(rewards, mask, index)
    assert torch.equal(rewards, before)
    assert torch.all(adv[mask == 0] == 0)


def test_registered_under_meds():
    assert get_adv_estimator_fn("meds") is compute_meds_outcome_advantage


def _through_verl(estimator: str, rewards, mask, index, algo_overrides: dict):
    """Advantages as verl's trainer computes them: `compute_advantage` with the algorithm options from the config."""
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage
    from verl.utils.config import omega_conf_to_dataclass

    algo = omega_conf_to_dataclass(
        OmegaConf.create({"_target_": "verl.trainer.config.AlgoConfig", "adv_estimator": estimator, **algo_overrides}),
        AlgoConfig,
    )
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards.clone(), "response_mask": mask.clone()},
        non_tensors={"uid": np.asarray(index, dtype=object)},
    )
    out = compute_advantage(
        data,
        adv_estimator=estimator,
        norm_adv_by_std_in_grpo=algo.norm_adv_by_std_in_grpo,
        config=algo,
    )
    return out.batch["advantages"]


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("seed", [0, 3])
def test_norm_switch_reaches_meds_through_verl(norm, seed):
    """`algorithm.norm_adv_by_std_in_grpo` reaches a registered estimator only inside `config`: it must be honoured
    there, so `meds` equals verl's `grpo` for both settings (Dr. GRPO when off)."""
    rewards, mask, index = _batch(seed)
    ours = _through_verl("meds", rewards, mask, index, {"norm_adv_by_std_in_grpo": norm})
    theirs = _through_verl("grpo", rewards, mask, index, {"norm_adv_by_std_in_grpo": norm})
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_dr_grpo_hand_case_through_verl():
    rewards = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    mask = torch.ones(4, 1)
    adv = _through_verl("meds", rewards, mask, ["g"] * 4, {"norm_adv_by_std_in_grpo": False})
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_config_switch_must_be_a_bool():
    rewards, mask, index = _batch(1)
    with pytest.raises(ValueError, match="norm_adv_by_std_in_grpo must be a bool"):
        compute_meds_outcome_advantage(rewards, mask, index, config={"norm_adv_by_std_in_grpo": "no"})


def test_failed_reward_and_masked_response_are_left_out():
    nan = float("nan")
    rewards = torch.tensor([[0.0, 1.0], [0.0, nan], [0.0, 0.0], [0.0, 0.0]])
    mask = torch.ones(4, 2)
    adv, _ = compute_meds_outcome_advantage(rewards, mask, np.array(["g"] * 4, dtype=object))
    torch.testing.assert_close(adv[:, 0], torch.tensor([1.1547, 0.0, -0.5774, -0.5774]), atol=1e-4, rtol=0)
    rewards = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    mask = torch.tensor([[1.0], [1.0], [0.0], [1.0]])
    adv, _ = compute_meds_outcome_advantage(rewards, mask, np.array(["g"] * 4, dtype=object))
    torch.testing.assert_close(adv[:, 0], torch.tensor([-0.5774, 1.1547, 0.0, -0.5774]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("norm", [True, False])
def test_rows_without_outcome_are_as_if_never_generated(seed, norm):
    """Any NaN / inf reward and any fully masked row: advantage 0 there, and on the other rows exactly verl's `grpo`
    of the batch without those rows."""
    rewards, mask, index = _batch(seed)
    rng = np.random.default_rng(100 + seed)
    n = rewards.shape[0]
    broken = rng.random(n) < 0.3
    kind = rng.integers(0, 3, size=n)
    for row in np.flatnonzero(broken):
        if kind[row] == 0:
            rewards[row, -1] = float("nan")
        elif kind[row] == 1:
            rewards[row, 0] = float("inf")
        else:
            mask[row] = 0.0
    ours, _ = compute_meds_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    assert torch.isfinite(ours).all() and torch.all(ours[broken] == 0)
    keep = np.flatnonzero(~broken)
    theirs, _ = compute_grpo_outcome_advantage(
        rewards[keep].clone(), mask[keep], index[keep], norm_adv_by_std_in_grpo=norm
    )
    torch.testing.assert_close(ours[keep], theirs, atol=1e-6, rtol=0)
