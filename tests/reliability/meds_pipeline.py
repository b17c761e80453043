"""The MEDS driver step of `verl_meds.verl.trainer.MEDSTrainer`, without Ray and TransferQueue, for the tests.

`driver_step` runs one training step's MEDS work in the trainer's order on plain tensors:

1. `locate_answer_tokens` on the padded responses (N, T) and their mask;
2. the raw logit-lens values (N, L_sel) as the worker returns them (NaN where a row has no answer token), then
   `finalize_features` and `valid = has_answer & finite`;
3. `ErrorMemory.step` on the rows in `canonical_order` (prompt id, rollout index, content), sizes mapped back;
4. `penalty_from_cluster_sizes`, `shape_rewards` on the row sums of verl's token-level scores, the shaped reward
   written back onto the last response token, and the registered `meds` estimator.

Only the glue that moves tensors in and out of TransferQueue is left out; every function called is the one the
trainer calls. The one exception is the write-back of step 4, which the trainer does inline in
`MEDSTrainer._compute_shaped_advantage`: `token_scores_fn` uses `verl_meds.verl.trainer.shaped_token_scores` once
that function exists (the fix proposed for non-finite rewards) and a line-for-line copy of the inline code until then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verl_meds.answer import locate_answer_tokens
from verl_meds.config import MEDSConfig
from verl_meds.features import finalize_features
from verl_meds.memory import ErrorMemory
from verl_meds.shaping import penalty_from_cluster_sizes, shape_rewards


class CharTokenizer:
    """One token per Unicode code point (id = `ord(char)`); a marker is always split over several tokens."""

    pad_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [ord(char) for char in text]

    def decode(self, token_ids: list[int]) -> str:
        return "".join(chr(int(token_id)) for token_id in token_ids)


def pad_rows(rows: list[list[int]], width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists (cut to `width`) into ids and mask of shape `(N, width)`, as verl stores responses."""
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, T)
    for n, row in enumerate(rows):
        row = row[:width]
        if row:
            ids[n, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[n, : len(row)] = 1
    return ids, mask


def outcome_scores(rewards: torch.Tensor, response_mask: torch.Tensor) -> list[torch.Tensor]:
    """verl's per-response token-level scores: the reward on the last response token, zeros elsewhere."""
    scores = []
    for reward, length in zip(rewards.tolist(), response_mask.sum(dim=1).tolist(), strict=True):
        score = torch.zeros(int(length), dtype=torch.float32)
        if length:
            score[-1] = reward
        scores.append(score)
    return scores


def _inline_token_scores(
    scores: list[torch.Tensor], rewards: torch.Tensor, shaped: torch.Tensor
) -> list[torch.Tensor]:
    """Copy of the write-back in `MEDSTrainer._compute_shaped_advantage` (verl_meds @f4c3407), kept verbatim."""
    shaped_scores = []
    for score, old, new in zip(scores, rewards, shaped, strict=True):
        score = score.clone().float()
        if score.numel():
            score[-1] += new - old  # verl puts the outcome reward on the last response token
        shaped_scores.append(score)
    return shaped_scores


def token_scores_fn():
    """The trainer's write-back of shaped rewards onto token-level scores (see the module docstring)."""
    from verl_meds.verl import trainer

    return getattr(trainer, "shaped_token_scores", _inline_token_scores)


@dataclass
class StepResult:
    answer_index: torch.Tensor  # (N,) long, -1 = no answer
    features: np.ndarray  # (N, F) float32
    valid: np.ndarray  # (N,) bool
    cluster_sizes: np.ndarray  # (N,) int64, row order of the batch
    penalties: torch.Tensor  # (N,) float32
    rewards: torch.Tensor  # (N,) raw row sums
    shaped: torch.Tensor  # (N,)
    token_scores: torch.Tensor  # (N, T) shaped token-level rewards
    advantages: torch.Tensor  # (N, T)
    metrics: dict[str, float]


def driver_step(
    memory: ErrorMemory,
    config: MEDSConfig,
    prompt_ids: list[str],
    keys: list[str],
    group_ids: list[str],
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    tokenizer,
    raw_values: torch.Tensor,
    rewards: torch.Tensor,
    correct: np.ndarray,
) -> StepResult:
    """One MEDS step as `MEDSTrainer` runs it (see the module docstring); `raw_values` is (N, L_sel) float."""
    from verl_meds.verl.advantage import compute_meds_outcome_advantage
    from verl_meds.verl.trainer import canonical_order, content_tiebreak

    answer_index = locate_answer_tokens(responses, response_mask, tokenizer)  # (N,)
    has_answer = answer_index >= 0
    raw = raw_values.to(torch.float32).clone()  # (N, L_sel)
    raw[~has_answer] = float("nan")  # the worker leaves rows without an answer position at NaN
    features = finalize_features(raw, config.features.diff).numpy()  # (N, F)
    valid = has_answer.numpy() & np.isfinite(features).all(axis=1)
    order = canonical_order(prompt_ids, keys, tiebreak=content_tiebreak(responses, response_mask, features))
    sorted_sizes, metrics = memory.step(
        [prompt_ids[r] for r in order], features[order].astype(np.float32), valid[order], correct[order]
    )
    sizes = np.empty_like(sorted_sizes)
    sizes[order] = sorted_sizes
    shaping = config.shaping
    penalties = penalty_from_cluster_sizes(torch.as_tensor(sizes), shaping.alpha, shaping.beta)  # (N,)
    metrics = dict(metrics)
    metrics["meds/features/answer_found_frac"] = float(has_answer.float().mean()) if len(prompt_ids) else 0.0

    scores = outcome_scores(rewards, response_mask)
    row_rewards = torch.stack([s.sum() for s in scores]).float()  # (N,)
    shaped, shaping_metrics = shape_rewards(row_rewards, torch.as_tensor(correct), penalties, shaping.penalty_target)
    metrics.update(shaping_metrics)
    token_scores = torch.zeros(response_mask.shape, dtype=torch.float32)  # (N, T)
    for n, score in enumerate(token_scores_fn()(scores, row_rewards, shaped)):
        token_scores[n, : score.numel()] = score
    advantages, _ = compute_meds_outcome_advantage(
        token_scores, response_mask.float(), np.array(group_ids, dtype=object)
    )
    return StepResult(
        answer_index, features, valid, sizes, penalties, row_rewards, shaped, token_scores, advantages, metrics
    )
