"""The ``meds`` advantage estimator: GRPO group normalisation over MEDS-shaped rewards.

The MEDS trainer (:mod:`verl_meds.verl.trainer`) writes the shaped reward into ``token_level_rewards`` before
verl calls the estimator, so the estimator itself is GRPO's outcome advantage (MEDS paper, Sec. 3: "the usual
group-normalised advantage"), computed by the core's vectorised :func:`verl_meds.shaping.grpo_advantages` with
verl's conventions: per-group mean and unbiased std, a singleton group has mean 0 and std 1,
``(score - mean) / (std + epsilon)`` with ``epsilon = 1e-6`` (or ``score - mean`` without std normalisation).
"""

from __future__ import annotations

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from verl_meds.shaping import grpo_advantages


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
            the row sum is the response's scalar reward.
        response_mask (`torch.Tensor` of shape `(N, T)`): 1 on response tokens.
        index (`np.ndarray` of shape `(N,)`): group id of each response (verl's per-step ``uid``).
        epsilon (`float`, *optional*, defaults to `1e-6`): added to the group std.
        norm_adv_by_std_in_grpo (`bool`, *optional*, defaults to `True`): divide by the group std.
        config: verl ``AlgoConfig`` (unused; accepted for the estimator signature).

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: advantages and returns, both `(N, T)` float, equal as in GRPO.
    """
    scores = token_level_rewards.sum(dim=-1)  # (N,)
    adv = grpo_advantages(scores, index, std_eps=epsilon, norm_by_std=norm_adv_by_std_in_grpo)  # (N,)
    adv = adv.to(token_level_rewards.dtype).unsqueeze(-1) * response_mask  # (N, T)
    return adv, adv
