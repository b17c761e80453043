r"""Outcome-based exploration: bonuses computed from final answers only. Pure numpy functions and one counter.

Song, Kempe, Munos 2025, "Outcome-based Exploration for LLM Reasoning"
([arXiv 2509.06941](https://huggingface.co/papers/2509.06941)), Sec. 3. For prompt x and the G responses of one group
(paper: n) with answers a_1..a_G, the policy is trained on the GRPO advantage plus c times a bonus:

$$
\hat A_i + c\,\tilde b_i, \qquad
b_{\mathrm{ucb}}(x, a) = \min\Bigl\{1, \sqrt{1 / N(x, a)}\Bigr\}, \qquad
b_{\mathrm{batch},i} = -\frac{1}{G} \sum_{j \ne i} \mathbf{1}\{a_i = a_j\}
$$

where N(x, a) counts how often answer a was sampled for x during training (historical exploration, with the
baselines of UCB-Mean and UCB-Con, see [`historical_bonus`]) and the batch bonus penalises answers repeated within
the group (batch exploration, [`batch_bonus`]). [`AnswerCounts`] holds N(x, a) across steps and checkpoints.
[`exploration_bonus`] puts it together; the verl glue (`verl_meds.verl.explore`) adds `c * bonus` to the advantages.
`docs/paper_map.md` lists the sources of each formula and the choices the paper leaves open.

Example:

```python
>>> import numpy as np
>>> from verl_meds.exploration import batch_bonus, ucb_bonus
>>> ucb_bonus(np.array([0, 1, 4, 16])).tolist()
[1.0, 1.0, 0.5, 0.25]
>>> batch_bonus(["sym:1/2", "sym:1/2", "sym:3", "sym:1/2"], ["g"] * 4).tolist()
[-0.5, -0.5, 0.0, -0.5]

```
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import metrics as M
from .answer import ANSWER_KEY_VERSION
from .config import EXPLORATION_BASELINES, ExplorationConfig
from .groups import group_rows

logger = logging.getLogger(__name__)

NO_ANSWER = "none:"
"""Outcome of a response without a final answer (no closed `\\boxed{}`): counted and penalised like any answer."""

COUNTS_STATE_VERSION = 1


def _check_keys(answer_keys: Sequence[str]) -> list[str]:
    keys = list(answer_keys)
    for key in keys:
        if not isinstance(key, str):
            raise ValueError(
                f"answer keys must be str (use NO_ANSWER={NO_ANSWER!r} for a response without an answer), got "
                f"{type(key).__name__} {key!r}."
            )
    return keys


def ucb_bonus(counts: np.ndarray) -> np.ndarray:
    r"""
    UCB-style bonus $b_{\mathrm{ucb}} = \min\{1, \sqrt{1/N}\}$ (arXiv 2509.06941, historical-exploration objective).

    Args:
        counts (`np.ndarray` of shape `(N,)`, int or float):
            N(x, a_i) of each response; 0 (an answer never seen) gives the cap 1.

    Returns:
        `np.ndarray` of shape `(N,)`, dtype float64: bonuses in (0, 1].

    Raises:
        ValueError: if a count is negative or not finite (the message names the first such value).
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)  # (N,)
    bad = ~np.isfinite(counts) | (counts < 0)
    if bad.any():
        raise ValueError(f"counts must be finite and >= 0, got {counts[bad][0]!r}.")
    bonus = np.ones_like(counts)
    seen = counts > 0
    bonus[seen] = np.minimum(1.0, np.sqrt(1.0 / counts[seen]))
    return bonus


def historical_bonus(
    counts: np.ndarray, group_ids: Sequence[Hashable], baseline: str = "constant", baseline_value: float = 0.5
) -> np.ndarray:
    r"""
    Historical-exploration bonus with its baseline (arXiv 2509.06941, UCB / UCB-Mean / UCB-Con).

    - `"none"` (UCB): $\tilde b_i = b_{\mathrm{ucb}}(x, a_i)$;
    - `"constant"` (UCB-Con): $\tilde b_i = b_{\mathrm{ucb}}(x, a_i) - b_0$;
    - `"mean"` (UCB-Mean):
      $\tilde b_i = b_{\mathrm{ucb}}(x, a_i) - \frac{1}{G-1} \sum_{j \ne i} b_{\mathrm{ucb}}(x, a_j)$
      over the G rows of the same group; a singleton group has no other row and gets 0.

    Args:
        counts (`np.ndarray` of shape `(N,)`, int):
            N(x, a_i) of each response (see [`ucb_bonus`]).
        group_ids (`Sequence[Hashable]` of length N):
            Group of each response (the G responses of one prompt in this step, e.g. verl's `uid`).
        baseline (`str`, *optional*, defaults to `"constant"`):
            `"none"`, `"mean"` or `"constant"`.
        baseline_value (`float`, *optional*, defaults to `0.5`):
            b_0 for `"constant"`.

    Returns:
        `np.ndarray` of shape `(N,)`, dtype float64, before the coefficient c.

    Raises:
        ValueError: on an unknown `baseline`, a negative or non-finite `baseline_value` or count, or a length mismatch.
    """
    if baseline not in EXPLORATION_BASELINES:
        raise ValueError(f"baseline must be one of {list(EXPLORATION_BASELINES)}, got {baseline!r}.")
    if not (isinstance(baseline_value, (int, float)) and np.isfinite(baseline_value) and baseline_value >= 0):
        raise ValueError(f"baseline_value must be a finite number >= 0, got {baseline_value!r}.")
    bonus = ucb_bonus(counts)  # (N,)
    if baseline == "none":
        return bonus
    if baseline == "constant":
        return bonus - float(baseline_value)
    shifted = np.zeros_like(bonus)  # (N,)
    for rows in group_rows(group_ids, bonus.shape[0]).values():
        if len(rows) < 2:
            continue  # a singleton group: no other row to compare with
        values = bonus[rows]
        others_mean = (values.sum() - values) / (len(rows) - 1)  # leave-one-out mean
        shifted[rows] = values - others_mean
    return shifted


def batch_bonus(answer_keys: Sequence[str], group_ids: Sequence[Hashable]) -> np.ndarray:
    r"""
    Batch-exploration bonus $-\frac{1}{G} \sum_{j \ne i} \mathbf{1}\{a_i = a_j\}$ (arXiv 2509.06941, batch
    exploration).

    Args:
        answer_keys (`Sequence[str]` of length N):
            Answer key of each response (`verl_meds.answer.answer_key`, [`NO_ANSWER`] for none).
        group_ids (`Sequence[Hashable]` of length N):
            Group of each response; G is the size of the row's group.

    Returns:
        `np.ndarray` of shape `(N,)`, dtype float64, in [-(G-1)/G, 0], before the coefficient c.

    Raises:
        ValueError: if a key is not a str or the lengths differ.
    """
    keys = _check_keys(answer_keys)
    bonus = np.zeros(len(keys), dtype=np.float64)  # (N,)
    for rows in group_rows(group_ids, len(keys)).values():
        same = Counter(keys[row] for row in rows)
        for row in rows:
            bonus[row] = (1 - same[keys[row]]) / len(rows)
    return bonus


class AnswerCounts:
    """
    N(x, a): how many times each answer key was sampled for each prompt, over all training steps so far.

    Plain python state (a dict of `collections.Counter`), picklable, with `state_dict` / `load_state_dict` for verl
    checkpoints. It grows with the number of distinct (prompt, answer) pairs, not with the number of steps (the
    paper reports fewer than 50 distinct answers per question even after many samples).
    """

    def __init__(self) -> None:
        self._counts: dict[str, Counter[str]] = {}

    @property
    def num_prompts(self) -> int:
        """Prompts with at least one counted answer."""
        return len(self._counts)

    @property
    def num_answers(self) -> int:
        """Distinct (prompt, answer) pairs counted."""
        return sum(len(counter) for counter in self._counts.values())

    def count(self, prompt_id: str, answer_key: str) -> int:
        """N(x, a) of one prompt id and answer key (0 when never seen)."""
        counter = self._counts.get(str(prompt_id))
        return int(counter[answer_key]) if counter is not None else 0

    def lookup(self, prompt_ids: Sequence[str], answer_keys: Sequence[str]) -> np.ndarray:
        """
        N(x_i, a_i) of each row.

        Args:
            prompt_ids (`Sequence[str]` of length N): stable prompt id of each response.
            answer_keys (`Sequence[str]` of length N): answer key of each response.

        Returns:
            `np.ndarray` of shape `(N,)`, dtype int64.

        Raises:
            ValueError: if the lengths differ or a key is not a str.
        """
        keys = _check_keys(answer_keys)
        if len(prompt_ids) != len(keys):
            raise ValueError(f"prompt_ids and answer_keys lengths differ: {len(prompt_ids)} and {len(keys)}.")
        return np.array([self.count(p, k) for p, k in zip(prompt_ids, keys, strict=True)], dtype=np.int64)

    def update(self, prompt_ids: Sequence[str], answer_keys: Sequence[str]) -> None:
        """Add one to N(x_i, a_i) for every row (the result does not depend on the row order)."""
        keys = _check_keys(answer_keys)
        if len(prompt_ids) != len(keys):
            raise ValueError(f"prompt_ids and answer_keys lengths differ: {len(prompt_ids)} and {len(keys)}.")
        for prompt_id, key in zip(prompt_ids, keys, strict=True):
            self._counts.setdefault(str(prompt_id), Counter())[key] += 1

    def state_dict(self) -> dict[str, Any]:
        """
        Plain python snapshot.

        Returns:
            `dict`: `version` (int), `answer_key_version` (int, `verl_meds.answer.ANSWER_KEY_VERSION`) and `counts`
            (dict prompt id -> dict answer key -> int, in insertion order).
        """
        return {
            "version": COUNTS_STATE_VERSION,
            "answer_key_version": ANSWER_KEY_VERSION,
            "counts": {prompt: dict(counter) for prompt, counter in self._counts.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """
        Replace the counts with a snapshot from [`state_dict`]; nothing changes if the snapshot is rejected.

        Raises:
            ValueError: if the version or the answer-key version differ, or a count is not an integer >= 1.
        """
        if state.get("version") != COUNTS_STATE_VERSION:
            raise ValueError(
                f"AnswerCounts state version {state.get('version')!r} is not supported; expected "
                f"{COUNTS_STATE_VERSION}."
            )
        if state.get("answer_key_version") != ANSWER_KEY_VERSION:
            raise ValueError(
                f"AnswerCounts state has answer keys of version {state.get('answer_key_version')!r}, but this "
                f"verl_meds makes version {ANSWER_KEY_VERSION}; stored keys would not match new ones."
            )
        counts: dict[str, Counter[str]] = {}
        for prompt, answers in state.get("counts", {}).items():
            counter: Counter[str] = Counter()
            for key, value in answers.items():
                if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(
                        f"count of prompt {prompt!r}, answer {key!r} must be an integer >= 1, got {value!r}."
                    )
                counter[key] = value
            counts[str(prompt)] = counter
        self._counts = counts


def exploration_bonus(
    config: ExplorationConfig,
    counts: AnswerCounts,
    prompt_ids: Sequence[str],
    answer_keys: Sequence[str],
    group_ids: Sequence[Hashable],
    correct: np.ndarray,
) -> tuple[np.ndarray, dict[str, float]]:
    r"""
    The term $c\,\tilde b_i$ added to each response's advantage, and the step's metrics; updates `counts`.

    `config.method` selects historical ([`historical_bonus`] of N(x, a)) or batch ([`batch_bonus`]) exploration.
    With `config.skip_all_correct`, every row of a group whose responses are all correct gets 0. The historical
    counts are read before this step's answers are added (`config.count_current_step=False`) or after; they are
    updated in both cases. Batch exploration reads and changes no counts.

    Args:
        config (`ExplorationConfig`):
            The exploration options.
        counts (`AnswerCounts`):
            N(x, a) so far; updated in place (historical method only).
        prompt_ids (`Sequence[str]` of length N):
            Stable prompt id of each response.
        answer_keys (`Sequence[str]` of length N):
            Answer key of each response ([`NO_ANSWER`] for none).
        group_ids (`Sequence[Hashable]` of length N):
            Group of each response within this step (verl's `uid`).
        correct (`np.ndarray` of shape `(N,)`, bool):
            Whether each response was graded correct.

    Returns:
        `tuple[np.ndarray, dict[str, float]]`: the scaled bonus of shape `(N,)`, float64, and the metrics
        `explore/*` (see `verl_meds.metrics.METRIC_DESCRIPTIONS`).

    Raises:
        ValueError: if the lengths differ or a key is not a str.
    """
    keys = _check_keys(answer_keys)
    num_rows = len(keys)
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    if len(prompt_ids) != num_rows or correct.shape != (num_rows,):
        raise ValueError(
            f"prompt_ids, answer_keys and correct must have length N={num_rows}, got {len(prompt_ids)} and "
            f"{correct.shape}."
        )
    groups = list(group_rows(group_ids, num_rows).values())
    seen_before = counts.lookup(prompt_ids, keys) if config.method == "historical" else None  # (N,)
    if config.method == "historical":
        if config.count_current_step:
            counts.update(prompt_ids, keys)
            raw = historical_bonus(counts.lookup(prompt_ids, keys), group_ids, config.baseline, config.baseline_value)
        else:
            raw = historical_bonus(seen_before, group_ids, config.baseline, config.baseline_value)
            counts.update(prompt_ids, keys)
    else:
        raw = batch_bonus(keys, group_ids)
    gated = np.zeros(num_rows, dtype=bool)  # (N,)
    if config.skip_all_correct:
        for rows in groups:
            if correct[rows].all():
                gated[rows] = True
    bonus = np.where(gated, 0.0, config.bonus_coef * raw)  # (N,)
    active = ~gated
    metrics = {
        M.EXPLORE_BONUS_MEAN: M.safe_mean(bonus),
        M.EXPLORE_BONUS_MIN: float(bonus.min()) if num_rows else 0.0,
        M.EXPLORE_BONUS_MAX: M.safe_max(bonus),
        M.EXPLORE_ACTIVE_FRAC: M.safe_frac(int(active.sum()), num_rows),
        M.EXPLORE_DISTINCT_ANSWERS: M.safe_mean([len({keys[row] for row in rows}) for rows in groups]),
        M.EXPLORE_NO_ANSWER_FRAC: M.safe_frac(sum(key == NO_ANSWER for key in keys), num_rows),
    }
    if seen_before is not None:
        metrics[M.EXPLORE_NEW_ANSWER_FRAC] = M.safe_frac(int((seen_before == 0).sum()), num_rows)
        metrics[M.EXPLORE_COUNTS_NUM_PROMPTS] = float(counts.num_prompts)
        metrics[M.EXPLORE_COUNTS_NUM_ANSWERS] = float(counts.num_answers)
    return bonus, metrics


def apply_bonus_to_advantages(
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    bonus: torch.Tensor,
    answer_index: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""
    Add each response's exploration term to its per-token advantages: $A_{i,t} + c\,\tilde b_i\,m_{i,t}$.

    $m_{i,t}$ is 1 on response tokens before the final answer and 0 from the answer's first token on (the paper
    masks the final-answer tokens out of the exploration gradient); with `answer_index=None`, or where it is -1,
    every response token gets the term. Padding (mask 0) is left unchanged.

    Args:
        advantages (`torch.Tensor` of shape `(N, T)`, float):
            Per-token advantages from verl's estimator.
        response_mask (`torch.Tensor` of shape `(N, T)`):
            1 on response tokens, 0 on padding.
        bonus (`torch.Tensor` of shape `(N,)`, float):
            $c\,\tilde b_i$ of each response (see [`exploration_bonus`]).
        answer_index (`torch.Tensor` of shape `(N,)`, int, *optional*):
            Index along T of each response's first answer token (`verl_meds.answer.locate_answer_tokens`), -1 for
            none.

    Returns:
        `torch.Tensor` of shape `(N, T)`, dtype of `advantages`.

    Raises:
        ValueError: if the shapes do not match or a bonus is not finite.
    """
    if advantages.dim() != 2 or response_mask.shape != advantages.shape:
        raise ValueError(
            f"advantages and response_mask must both have shape (N, T), got {tuple(advantages.shape)} and "
            f"{tuple(response_mask.shape)}."
        )
    num_rows, num_tokens = advantages.shape
    bonus = torch.as_tensor(bonus, dtype=torch.float32).reshape(-1)  # (N,)
    if bonus.shape != (num_rows,):
        raise ValueError(f"bonus must have shape ({num_rows},), got {tuple(bonus.shape)}.")
    if not bool(torch.isfinite(bonus).all()):
        raise ValueError("bonus must be finite.")
    token_mask = response_mask.to(torch.bool)  # (N, T)
    if answer_index is not None:
        answer_index = torch.as_tensor(answer_index, dtype=torch.long).reshape(-1).cpu()  # (N,)
        if answer_index.shape != (num_rows,):
            raise ValueError(f"answer_index must have shape ({num_rows},), got {tuple(answer_index.shape)}.")
        cut = torch.where(answer_index >= 0, answer_index, torch.full_like(answer_index, num_tokens))  # (N,)
        before_answer = torch.arange(num_tokens).unsqueeze(0) < cut.unsqueeze(1)  # (N, T)
        token_mask = token_mask & before_answer.to(token_mask.device)
    term = bonus.to(advantages.device).unsqueeze(1) * token_mask  # (N, T)
    return advantages + term.to(advantages.dtype)
