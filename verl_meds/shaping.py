r"""Penalty from cluster size, reward shaping, and GRPO group-normalised advantages. Pure tensor functions.

MEDS paper (reward shaping equation), for a response in a cluster of size |C|:

$$
p = \min\bigl(\alpha \ln(|C| + 1),\ \beta\bigr), \qquad
\tilde r = \begin{cases} r - p & \text{wrong response} \\ r / (1 + p) & \text{right response (if targeted)}
\end{cases}
$$

then the GRPO advantage $A_i = (\tilde r_i - \mathrm{mean}_g \tilde r) / (\mathrm{std}_g \tilde r + \epsilon)$
over the G responses of the same prompt ([Shao et al. 2024](https://huggingface.co/papers/2402.03300)).

Parity with the authors' recipe: it writes the penalty as `p' = -coef * min(ln(1 + |C|), C)` and uses `r + p'` for
wrong and `r / (1 - p')` for right responses; with `alpha = coef` and `beta = coef * C` this is the same formula.

Example:

```python
>>> import torch
>>> from verl_meds.shaping import grpo_advantages, penalty_from_cluster_sizes, shape_rewards
>>> penalties = penalty_from_cluster_sizes(torch.tensor([0, 4, 100]), alpha=0.1, beta=0.2)
>>> [round(p, 4) for p in penalties.tolist()]
[0.0, 0.1609, 0.2]
>>> shaped, _ = shape_rewards(torch.zeros(3), torch.zeros(3, dtype=torch.bool), penalties, target="wrong")
>>> [round(s, 4) for s in shaped.tolist()]
[0.0, -0.1609, -0.2]

```
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

from . import metrics as M
from .config import PENALTY_TARGETS
from .groups import group_codes, group_rows


def penalty_from_cluster_sizes(cluster_sizes: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    r"""
    Penalty $p = \min(\alpha \ln(|C| + 1), \beta)$ for each response (MEDS paper, reward shaping equation).

    Args:
        cluster_sizes (`torch.Tensor` of shape `(N,)`, int or float):
            Cluster size |C| of each response (0 for noise, invalid or untracked responses).
        alpha (`float`):
            Penalty scale, >= 0.
        beta (`float`):
            Penalty cap, >= 0.

    Returns:
        `torch.Tensor` of shape `(N,)`, dtype float32: penalties in `[0, beta]`.

    Raises:
        ValueError: if `alpha` or `beta` is negative or a cluster size is negative or not finite.
    """
    if not (alpha >= 0 and beta >= 0):
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha!r}, beta={beta!r}.")
    sizes = torch.as_tensor(cluster_sizes).to(torch.float32)  # (N,)
    if not bool(torch.isfinite(sizes).all()) or bool((sizes < 0).any()):
        raise ValueError("cluster_sizes must be finite and >= 0.")
    return torch.clamp(alpha * torch.log1p(sizes), max=beta)


def shape_rewards(
    rewards: torch.Tensor, correct: torch.Tensor, penalties: torch.Tensor, target: str
) -> tuple[torch.Tensor, dict[str, float]]:
    """
    Apply penalties to the rewards of the targeted responses.

    Wrong responses (when `target` is "wrong" or "both") get `r - p`; right responses (when `target` is "right" or
    "both") get `r / (1 + p)`, which keeps the sign of `r` (the recipe's form); `"none"` changes nothing. A NaN or
    infinite raw reward (a reward that failed to compute) stays NaN in the shaped rewards, gets no penalty, is left
    out of the reward means and is counted in `meds/rewards/nonfinite_frac`; [`grpo_advantages`] then gives that row
    advantage 0 and leaves it out of its group's statistics, so it is never mistaken for a wrong answer.

    Args:
        rewards (`torch.Tensor` of shape `(N,)`, float):
            Raw outcome rewards (unitless, e.g. 1 right / 0 wrong, or DAPO's +1 / -1).
        correct (`torch.Tensor` of shape `(N,)`, bool):
            Whether each response was graded correct.
        penalties (`torch.Tensor` of shape `(N,)`, float):
            Penalties from [`penalty_from_cluster_sizes`], finite and >= 0.
        target (`str`):
            One of `"wrong"`, `"right"`, `"both"`, `"none"`.

    Returns:
        `tuple[torch.Tensor, dict[str, float]]`: shaped rewards of shape `(N,)` (dtype of `rewards` if floating,
        else float32; NaN exactly where the raw reward is not finite) and the metrics `meds/penalty/mean`,
        `meds/penalty/max`, `meds/frac_penalized`, `meds/reward/raw_mean`, `meds/reward/shaped_mean` (both over the
        finite rewards), `meds/rewards/nonfinite_frac`.

    Raises:
        ValueError: on an unknown `target`, mismatched shapes, or negative / non-finite penalties.
    """
    if target not in PENALTY_TARGETS:
        raise ValueError(f"target must be one of {list(PENALTY_TARGETS)}, got {target!r}.")
    rewards = torch.as_tensor(rewards)
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.float32)
    correct = torch.as_tensor(correct, device=rewards.device).to(torch.bool)
    penalties = torch.as_tensor(penalties, device=rewards.device).to(rewards.dtype)
    if rewards.dim() != 1 or correct.shape != rewards.shape or penalties.shape != rewards.shape:
        raise ValueError(
            f"rewards, correct and penalties must have the same shape (N,), got {tuple(rewards.shape)}, "
            f"{tuple(correct.shape)} and {tuple(penalties.shape)}."
        )
    if not bool(torch.isfinite(penalties).all()) or bool((penalties < 0).any()):
        raise ValueError("penalties must be finite and >= 0.")
    finite = torch.isfinite(rewards)  # (N,)
    nan = torch.full_like(rewards, float("nan"))
    penalize_wrong = finite & ~correct if target in ("wrong", "both") else torch.zeros_like(correct)
    penalize_right = finite & correct if target in ("right", "both") else torch.zeros_like(correct)
    shaped = torch.where(penalize_wrong, rewards - penalties, rewards)
    shaped = torch.where(penalize_right, rewards / (1.0 + penalties), shaped)
    shaped = torch.where(finite, shaped, nan)  # (N,)
    applied = torch.where(penalize_wrong | penalize_right, penalties, torch.zeros_like(penalties))  # (N,)
    num_rows = rewards.shape[0]
    metrics = {
        M.PENALTY_MEAN: M.safe_mean(applied),
        M.PENALTY_MAX: M.safe_max(applied),
        M.FRAC_PENALIZED: M.safe_frac(int((applied > 0).sum()), num_rows),
        M.REWARD_RAW_MEAN: M.safe_mean(rewards[finite]),
        M.REWARD_SHAPED_MEAN: M.safe_mean(shaped[finite]),
        M.REWARDS_NONFINITE_FRAC: M.safe_frac(int((~finite).sum()), num_rows),
    }
    return shaped, metrics


def _check_scores(scores: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`scores` as a float tensor (N,) and the rows that count: finite and, when given, `valid`."""
    scores = torch.as_tensor(scores)
    if not scores.is_floating_point():
        scores = scores.to(torch.float32)
    if scores.dim() != 1:
        raise ValueError(f"scores must have shape (N,), got {tuple(scores.shape)}.")
    counted = torch.isfinite(scores)  # (N,)
    if valid is not None:
        valid = torch.as_tensor(valid, device=scores.device)
        if valid.shape != scores.shape:
            raise ValueError(f"valid must have the shape of scores {tuple(scores.shape)}, got {tuple(valid.shape)}.")
        counted = counted & valid.to(torch.bool)
    return scores, counted


def grpo_advantages(
    scores: torch.Tensor,
    group_ids: Sequence[Hashable] | np.ndarray | torch.Tensor,
    std_eps: float = 1e-6,
    norm_by_std: bool = True,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""
    GRPO outcome advantage per response, vectorised; same convention as verl's `compute_grpo_outcome_advantage`.

    Per group g: $A_i = (s_i - \mu_g) / (\sigma_g + \epsilon)$ with $\sigma_g$ the unbiased (Bessel-corrected)
    standard deviation, or $A_i = s_i - \mu_g$ when `norm_by_std` is False. A singleton group uses $\mu = 0$ and
    $\sigma = 1$ (verl's rule), so its advantage is $s / (1 + \epsilon)$, not 0. A group with identical scores gets
    advantage 0 (exactly 0 for float32 scores: their group sums are exact in float64). Statistics are computed in
    float64 and cast back to the dtype of `scores`.

    Rows that do not count (a NaN or infinite score: a reward that failed to compute; or `valid` False, e.g. a
    fully masked response) get advantage 0 and are left out of their group's statistics: the other rows get
    exactly what verl's GRPO gives them when the row was never generated (so a group left with one counted row is
    a singleton group). A group with no counted row gets zeros. The result is always finite.

    Args:
        scores (`torch.Tensor` of shape `(N,)`, float):
            Sequence-level scores (shaped rewards); non-finite entries mark rows that do not count.
        group_ids (`Sequence[Hashable]`, `np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Group of each response (e.g. verl's `uid`); any hashable values.
        std_eps (`float`, *optional*, defaults to `1e-6`):
            Added to the standard deviation (verl's value).
        norm_by_std (`bool`, *optional*, defaults to `True`):
            Divide by the group standard deviation (`False`: Dr. GRPO, https://huggingface.co/papers/2503.20783).
        valid (`torch.Tensor` of shape `(N,)`, bool, *optional*):
            Rows that count; all finite rows when omitted.

    Returns:
        `torch.Tensor` of shape `(N,)`, dtype of `scores`, finite.

    Raises:
        ValueError: if `scores` is not 1-D, or `group_ids` or `valid` has another length.
    """
    scores, counted = _check_scores(scores, valid)
    codes = torch.tensor(group_codes(group_ids, scores.shape[0]), dtype=torch.long, device=scores.device)  # (N,)
    num_groups = int(codes.max()) + 1 if codes.numel() else 0
    weight = counted.to(torch.float64)  # (N,)
    values = torch.where(counted, scores.to(torch.float64), torch.zeros_like(weight))  # (N,)
    counts = torch.zeros(num_groups, dtype=torch.float64, device=scores.device).index_add_(0, codes, weight)
    sums = torch.zeros_like(counts).index_add_(0, codes, values)  # (num_groups,)
    means = sums / torch.clamp(counts, min=1)
    squares = torch.zeros_like(counts).index_add_(0, codes, weight * (values - means[codes]) ** 2)
    stds = torch.sqrt(squares / torch.clamp(counts - 1, min=1))
    singleton = counts == 1
    means = torch.where(singleton, torch.zeros_like(means), means)
    stds = torch.where(singleton, torch.ones_like(stds), stds)
    centred = values - means[codes]  # (N,)
    advantages = centred / (stds[codes] + std_eps) if norm_by_std else centred
    return torch.where(counted, advantages, torch.zeros_like(advantages)).to(scores.dtype)


def grpo_advantages_reference(
    scores: torch.Tensor,
    group_ids: Sequence[Hashable] | np.ndarray | torch.Tensor,
    std_eps: float = 1e-6,
    norm_by_std: bool = True,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Loop-over-groups reference for [`grpo_advantages`], written like verl's `compute_grpo_outcome_advantage`.

    Uses `torch.mean` and `torch.std` (unbiased) on the counted rows of each group in the dtype of `scores`; rows
    that do not count get 0. Slow; for tests.

    Args:
        scores (`torch.Tensor` of shape `(N,)`, float):
            Sequence-level scores, finite.
        group_ids (`Sequence[Hashable]`, `np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Group of each response.
        std_eps (`float`, *optional*, defaults to `1e-6`):
            Added to the standard deviation.
        norm_by_std (`bool`, *optional*, defaults to `True`):
            Divide by the group standard deviation.
        valid (`torch.Tensor` of shape `(N,)`, bool, *optional*):
            Rows that count; all finite rows when omitted.

    Returns:
        `torch.Tensor` of shape `(N,)`, dtype of `scores`.
    """
    scores, counted = _check_scores(scores, valid)
    members = group_rows(group_ids, scores.shape[0], rows=torch.nonzero(counted).flatten().tolist())
    advantages = torch.zeros_like(scores)
    for rows in members.values():
        group = scores[rows]
        if len(rows) == 1:
            mean, std = torch.tensor(0.0, dtype=scores.dtype), torch.tensor(1.0, dtype=scores.dtype)
        else:
            mean, std = torch.mean(group), torch.std(group)
        advantages[rows] = (group - mean) / (std + std_eps) if norm_by_std else group - mean
    return advantages
