"""Metric names (`meds/<group>/<stat>`, `explore/<stat>`) and reducers that are safe on empty input.

Core functions return `(output, metrics: dict[str, float])`; only the integrations send metrics to a logger.
[`METRIC_DESCRIPTIONS`] holds the one-line description of every name, the source of `docs/metrics.md`.

Example:

```python
>>> from verl_meds.metrics import safe_max, safe_mean
>>> safe_mean([]), safe_mean([1, 2]), safe_max([])
(0.0, 1.5, 0.0)

```
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

MEMORY_NUM_PROMPTS = "meds/memory/num_prompts"
MEMORY_NUM_ENTRIES = "meds/memory/num_entries"
MEMORY_TRUNCATED_PROMPTS = "meds/memory/truncated_prompts"
FEATURES_MISSING_FRAC = "meds/features/missing_frac"
CLUSTER_SIZE_MEAN = "meds/cluster_size/mean"
CLUSTER_SIZE_MAX = "meds/cluster_size/max"
CLUSTERS_PER_PROMPT_MEAN = "meds/clusters/per_prompt_mean"
CLUSTERS_LARGEST_WRONG_SHARE_MEAN = "meds/clusters/largest_wrong_share_mean"
PENALTY_MEAN = "meds/penalty/mean"
PENALTY_MAX = "meds/penalty/max"
FRAC_PENALIZED = "meds/frac_penalized"
REWARD_RAW_MEAN = "meds/reward/raw_mean"
REWARD_SHAPED_MEAN = "meds/reward/shaped_mean"
REWARDS_NONFINITE_FRAC = "meds/rewards/nonfinite_frac"

# Outcome-based exploration (verl_meds.exploration), group `explore/`.
EXPLORE_BONUS_MEAN = "explore/bonus_mean"
EXPLORE_BONUS_MIN = "explore/bonus_min"
EXPLORE_BONUS_MAX = "explore/bonus_max"
EXPLORE_ACTIVE_FRAC = "explore/active_frac"
EXPLORE_DISTINCT_ANSWERS = "explore/distinct_answers"
EXPLORE_NO_ANSWER_FRAC = "explore/no_answer_frac"
EXPLORE_NEW_ANSWER_FRAC = "explore/new_answer_frac"
EXPLORE_COUNTS_NUM_PROMPTS = "explore/counts/num_prompts"
EXPLORE_COUNTS_NUM_ANSWERS = "explore/counts/num_answers"

METRIC_DESCRIPTIONS: dict[str, str] = {
    MEMORY_NUM_PROMPTS: "Distinct prompt ids with at least one stored entry (any outcome), after this step.",
    MEMORY_NUM_ENTRIES: "Stored feature vectors over all prompts and outcomes, after this step.",
    MEMORY_TRUNCATED_PROMPTS: "Distinct prompt ids that have ever had entries dropped by the FIFO capacity.",
    FEATURES_MISSING_FRAC: "Fraction of this step's rollouts with no usable feature (no answer token or non-finite).",
    CLUSTER_SIZE_MEAN: "Mean cluster size |C| over this step's assigned rollouts (usable, tracked outcome).",
    CLUSTER_SIZE_MAX: "Largest cluster size |C| among this step's assigned rollouts.",
    CLUSTERS_PER_PROMPT_MEAN: "Mean number K of non-noise clusters of wrong responses, over prompts updated now.",
    CLUSTERS_LARGEST_WRONG_SHARE_MEAN: (
        "Per prompt updated this step: largest wrong cluster size / number of wrong entries clustered; averaged."
    ),
    PENALTY_MEAN: "Mean penalty actually applied, over all rollouts (0 for rollouts that are not targeted).",
    PENALTY_MAX: "Largest penalty actually applied this step.",
    FRAC_PENALIZED: "Fraction of rollouts whose reward was changed by a penalty > 0.",
    REWARD_RAW_MEAN: "Mean raw reward over the finite rewards.",
    REWARD_SHAPED_MEAN: "Mean shaped reward over the finite rewards.",
    REWARDS_NONFINITE_FRAC: (
        "Fraction of rollouts whose raw reward was NaN or inf (no penalty, advantage 0, out of the group statistics)."
    ),
    EXPLORE_BONUS_MEAN: "Outcome exploration: mean of c * bonus added to the rollouts' advantages (0 where gated).",
    EXPLORE_BONUS_MIN: "Outcome exploration: smallest c * bonus of the step (negative: a repeated answer penalised).",
    EXPLORE_BONUS_MAX: "Outcome exploration: largest c * bonus of the step.",
    EXPLORE_ACTIVE_FRAC: "Outcome exploration: fraction of rollouts not gated off (their group is not all correct).",
    EXPLORE_DISTINCT_ANSWERS: "Outcome exploration: distinct answer keys per group (no answer counts as one), mean.",
    EXPLORE_NO_ANSWER_FRAC: "Outcome exploration: fraction of rollouts without a final answer (outcome NO_ANSWER).",
    EXPLORE_NEW_ANSWER_FRAC: "Historical exploration: fraction of rollouts whose answer the prompt never had before.",
    EXPLORE_COUNTS_NUM_PROMPTS: "Historical exploration: prompts with counted answers N(x, a), after this step.",
    EXPLORE_COUNTS_NUM_ANSWERS: "Historical exploration: distinct (prompt, answer) pairs counted, after this step.",
}


def _as_float_array(values: Iterable[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()
    return np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64).reshape(-1)


def safe_mean(values: Iterable[float] | np.ndarray | torch.Tensor) -> float:
    """
    Mean of `values` as a python float; `0.0` when there are none.

    Args:
        values (`Iterable[float]`, `np.ndarray` or `torch.Tensor`):
            Values of any shape; they are flattened.

    Returns:
        `float`: the mean, or `0.0` for empty input.
    """
    array = _as_float_array(values)
    return float(array.mean()) if array.size else 0.0


def safe_max(values: Iterable[float] | np.ndarray | torch.Tensor) -> float:
    """
    Maximum of `values` as a python float; `0.0` when there are none.

    Args:
        values (`Iterable[float]`, `np.ndarray` or `torch.Tensor`):
            Values of any shape; they are flattened.

    Returns:
        `float`: the maximum, or `0.0` for empty input.
    """
    array = _as_float_array(values)
    return float(array.max()) if array.size else 0.0


def safe_frac(count: float, total: float) -> float:
    """`count / total` as a python float; `0.0` when `total` is 0."""
    return float(count) / float(total) if total else 0.0
