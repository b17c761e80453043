"""The `meds` advantage estimator: GRPO group normalisation over MEDS-shaped rewards.

The MEDS trainer (`verl_meds.verl.trainer`) writes the shaped reward into `token_level_rewards` before
verl calls the estimator, so the estimator itself is GRPO's outcome advantage (MEDS paper, Sec. 3: "the usual
group-normalised advantage"), computed by the core's vectorised `verl_meds.shaping.grpo_advantages` with
verl's conventions: per-group mean and unbiased std, a singleton group has mean 0 and std 1,
`(score - mean) / (std + epsilon)` with `epsilon = 1e-6` (or `score - mean` without std normalisation).

Two differences from verl's `grpo`, both about rows that carry no outcome: a row whose reward is NaN or infinite
(a reward that failed to compute) and a row whose `response_mask` is all zero get advantage 0 and are left out of
their group's mean and std, so they move no other row's advantage. On every other input the result equals verl's
`grpo` (tested in `tests/verl/test_advantage.py`).

verl hands a registered estimator its algorithm options only through `config` (its `compute_advantage` passes
`norm_adv_by_std_in_grpo` as a keyword to the built-in `grpo` alone), so the switch is read from there.
"""

from __future__ import annotations

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from verl_meds.shaping import grpo_advantages


def _norm_by_std(config, default: bool) -> bool:
    """`config.norm_adv_by_std_in_grpo` (verl `AlgoConfig` or a mapping) when set, else `default`."""
    if config is None:
        return default
    value = config.get("norm_adv_by_std_in_grpo", None) if hasattr(config, "get") else None
    if value is None:
        value = getattr(config, "norm_adv_by_std_in_grpo", None)
    if value is None:
        return default
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"algorithm.norm_adv_by_std_in_grpo must be a bool, got {type(value).__name__} {value!r}.")
    return bool(value)


@register_adv_est("meds")
def compute_meds_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    norm_adv_by_std_in_grpo: bool = True,
    config=None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO outcome advantage of the (already shaped) rewards, broadcast over response tokens.

    Args:
        token_level_rewards (`torch.Tensor` of shape `(N, T)`, float): shaped reward placed on the response tokens;
            the row sum is the response's scalar reward (NaN or infinite: no reward, advantage 0).
        response_mask (`torch.Tensor` of shape `(N, T)`): 1 on response tokens (a row of zeros: advantage 0).
        index (`np.ndarray` of shape `(N,)`): group id of each response (verl's per-step `uid`).
        epsilon (`float`, *optional*, defaults to `1e-6`): added to the group std.
        norm_adv_by_std_in_grpo (`bool`, *optional*, defaults to `True`): divide by the group std; used when
            `config` does not set `norm_adv_by_std_in_grpo` (`False`: Dr. GRPO).
        config: verl `AlgoConfig` (or a mapping); its `norm_adv_by_std_in_grpo` decides when present, since
            that is where verl passes the user's `algorithm.norm_adv_by_std_in_grpo`.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: advantages and returns, both `(N, T)` in the dtype of
        `token_level_rewards`, finite, equal as in GRPO.

    Raises:
        ValueError: if `config.norm_adv_by_std_in_grpo` is not a bool.
    """
    norm = _norm_by_std(config, norm_adv_by_std_in_grpo)
    mask = response_mask.to(token_level_rewards.dtype)  # (N, T)
    scores = token_level_rewards.sum(dim=-1)  # (N,)
    has_tokens = response_mask.bool().any(dim=-1)  # (N,)
    adv = grpo_advantages(scores, index, std_eps=epsilon, norm_by_std=norm, valid=has_tokens)  # (N,)
    adv = adv.to(token_level_rewards.dtype).unsqueeze(-1) * mask  # (N, T)
    return adv, adv
