r"""GRPO with entropy advantage: the baseline of Cheng et al. 2025 ("Reasoning with Exploration: an Entropy
Perspective", https://huggingface.co/papers/2506.14758), as compared against in the MEDS paper's Table 1.

Each response token's advantage gets an entropy bonus, clipped so it can never flip the advantage's sign:

$$
A'_t = A_t + \min\big(\alpha \cdot H_t^{\mathrm{detach}},\; |A_t| / \kappa\big), \qquad \alpha = 0.4,\ \kappa = 2
$$

`H_t` is the policy's token entropy, detached (a constant for the gradient). It is the entropy verl already
computes during the log-prob recompute (`old_log_prob` stage), i.e. the entropy of the policy that the update
starts from; with one PPO epoch that is the current policy of the first mini-batch. The bonus is applied to the
per-token advantages after verl's estimator, before the policy loss
(`verl_meds.verl.hooks.entropy.EntropyAdvantageHook`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class EntropyAdvantageConfig:
    """
    Parameters:
        enable (`bool`, *optional*, defaults to `False`):
            Add the entropy bonus to the advantages.
        alpha (`float`, *optional*, defaults to `0.4`):
            Entropy coefficient (Cheng et al. 2025), >= 0.
        kappa (`float`, *optional*, defaults to `2.0`):
            Clip divisor: the bonus is at most `|A| / kappa`; > 0.
    """

    enable: bool = False
    alpha: float = 0.4
    kappa: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.enable, bool):
            raise ValueError(f"entropy_advantage.enable must be a bool, got {self.enable!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise ValueError(f"entropy_advantage.alpha must be a number >= 0, got {self.alpha!r}")
        if not (isinstance(self.kappa, (int, float)) and self.kappa > 0):
            raise ValueError(f"entropy_advantage.kappa must be a number > 0, got {self.kappa!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> EntropyAdvantageConfig:
        """Build from a plain dict; unknown keys raise `ValueError` listing the valid ones."""
        d = dict(d or {})
        unknown = sorted(set(d) - {"enable", "alpha", "kappa"})
        if unknown:
            raise ValueError(f"unknown entropy_advantage keys {unknown}; valid keys: ['alpha', 'enable', 'kappa']")
        return cls(**d)


def entropy_advantage(
    advantages: torch.Tensor, entropy: torch.Tensor, response_mask: torch.Tensor, alpha: float, kappa: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Add the clipped entropy bonus to per-token advantages (Cheng et al. 2025, Eq. for the shaped advantage).

    Args:
        advantages (`torch.Tensor` of shape `(N, T)`, float): per-token advantages from the estimator.
        entropy (`torch.Tensor` of shape `(N, T)`, float): per-token policy entropy in nats (detached here).
        response_mask (`torch.Tensor` of shape `(N, T)`): 1 on response tokens; other tokens are left unchanged.
        alpha (`float`): entropy coefficient.
        kappa (`float`): clip divisor.

    Returns:
        `tuple`: the shaped advantages `(N, T)` and metrics `entropy_adv/bonus_mean`, `entropy_adv/bonus_max`
        and `entropy_adv/clipped_frac` (fraction of response tokens where the `|A|/kappa` bound was active).
        Non-finite entropies get no bonus.
    """
    mask = response_mask.to(torch.bool)
    h = torch.nan_to_num(entropy.detach().float(), nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0.0)
    raw = alpha * h
    bound = advantages.detach().abs().float() / kappa
    bonus = torch.minimum(raw, bound) * mask  # (N, T)
    shaped = advantages + bonus.to(advantages.dtype)
    n = int(mask.sum())
    metrics = {
        "entropy_adv/bonus_mean": float(bonus[mask].mean()) if n else 0.0,
        "entropy_adv/bonus_max": float(bonus[mask].max()) if n else 0.0,
        "entropy_adv/clipped_frac": float((bound[mask] < raw[mask]).float().mean()) if n else 0.0,
    }
    return shaped, metrics
