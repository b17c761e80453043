"""One MEDS step on plain tensors for the reliability tests, through the product's `verl_meds.step.MEDSStep`.

`driver_step` calls the three stages the trainer's MEDS hook calls (`locate`, `penalties`, `shape`), then the
product's write-back (`shaped_token_scores`) and the registered `meds` estimator; only verl's TransferQueue and workers
are left out (the captured logit-lens values are given). The helpers build verl-shaped inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from verl_meds.config import MEDSConfig
from verl_meds.memory import ErrorMemory
from verl_meds.step import MEDSStep, response_digests, shaped_token_scores


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
    """One MEDS step as the trainer's MEDS hook runs it; `raw_values` is (N, L_sel) float, `memory` is updated."""
    from verl_meds.verl.advantage import compute_meds_outcome_advantage

    step = MEDSStep(config, memory=memory)
    prompt_lengths = torch.zeros(len(keys), dtype=torch.long)
    location = step.locate(responses, response_mask, prompt_lengths, tokenizer)
    raw = raw_values.to(torch.float32).clone()  # (N, L_sel)
    raw[~location.found] = float("nan")  # the worker leaves rows without an answer position at NaN
    out = step.penalties(keys, prompt_ids, response_digests(responses, response_mask), location, raw, correct)
    scores = outcome_scores(rewards, response_mask)
    row_rewards = torch.stack([s.sum() for s in scores]).float()  # (N,)
    shaped, shaping_metrics = step.shape(row_rewards, correct, out.penalties, group_ids)
    metrics = {**out.metrics, **shaping_metrics}
    token_scores = torch.zeros(response_mask.shape, dtype=torch.float32)  # (N, T)
    for n, score in enumerate(shaped_token_scores(scores, row_rewards, shaped)):
        token_scores[n, : score.numel()] = score
    advantages, _ = compute_meds_outcome_advantage(
        token_scores, response_mask.float(), np.array(group_ids, dtype=object)
    )
    valid = out.has_feature
    return StepResult(
        location.index,
        out.features,
        valid,
        out.cluster_sizes,
        out.penalties,
        row_rewards,
        shaped,
        token_scores,
        advantages,
        metrics,
    )
