r"""Held-out pass@k curves (k = 1..n) of one run, and their intervals over problems and over seeds.

A run's final validation gives, for each of P held-out problems, n samples of which c are correct. Its pass@k
curve is the problem mean of the unbiased estimator (Chen et al. 2021,
[arXiv 2107.03374](https://huggingface.co/papers/2107.03374); `verl_meds.eval.passk`),

$$
\text{pass@}k = \frac{1}{P} \sum_{p=1}^{P} \Big( 1 - \binom{n_p - c_p}{k} \Big/ \binom{n_p}{k} \Big),
\qquad k = 1, \dots, \min_p n_p .
$$

Two kinds of interval are used, and the report says which:

- **over seeds** (`curve_over_seeds`): the two-sided Student-t interval of the per-seed curves, k by k; the
  paired version (`paired_curve_difference`) takes the per-seed differences against a baseline with the same seed.
- **over problems** (`bootstrap_curve`): a percentile bootstrap that resamples the P problems with replacement,
  for a single run (the start model is validated once). It reflects which problems were drawn, not training noise.

Example:

```python
>>> from verl_meds.analysis.passk_curves import passk_curve
>>> passk_curve([4, 4], [0, 2]).round(4).tolist()  # problem 1 never solved; problem 2: 1 - C(2,k)/C(4,k)
[0.25, 0.4167, 0.5, 0.5]

```
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from verl_meds.eval.passk import check_counts, pass_at_k

__all__ = [
    "bootstrap_curve",
    "curve_over_seeds",
    "load_problem_counts",
    "paired_curve_difference",
    "passk_curve",
    "t_interval",
]


def load_problem_counts(val_file: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """
    Per-problem sample and correct counts from one verl validation dump (`<step>.jsonl`, one row per sample).

    A sample is correct when its `acc` (else `score`) is above 0.5, as in the experiment's other measures.

    Args:
        val_file (`str` or `os.PathLike`): a `trainer.validation_data_dir` file with `input` and `acc`/`score`.

    Returns:
        `tuple[list[str], np.ndarray, np.ndarray]`: the problems (prompt text, sorted), n and c as int64 arrays of
        shape `(P,)`.
    """
    n: dict[str, int] = defaultdict(int)
    c: dict[str, int] = defaultdict(int)
    for line in Path(val_file).read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        n[row["input"]] += 1
        c[row["input"]] += int(float(row.get("acc", row.get("score", 0.0))) > 0.5)
    problems = sorted(n)
    return (
        problems,
        np.array([n[p] for p in problems], dtype=np.int64),
        np.array([c[p] for p in problems], dtype=np.int64),
    )


def passk_curve(num_samples, num_correct, k_max: int | None = None) -> np.ndarray:
    """
    Problem-mean unbiased pass@k for every k = 1..k_max.

    Args:
        num_samples (array-like of shape `(P,)`): n per problem (integers >= 1).
        num_correct (array-like of shape `(P,)`): c per problem (0 <= c <= n).
        k_max (`int`, *optional*, defaults to min n): the largest k (at most min n).

    Returns:
        `np.ndarray` of shape `(k_max,)`, float64: entry k-1 is pass@k, non-decreasing in k.

    Raises:
        ValueError: when there are no problems, or as `verl_meds.eval.passk.pass_at_k`.
    """
    n, c = check_counts(num_samples, num_correct)
    if n.size == 0:
        raise ValueError("passk_curve needs at least one problem.")
    k_max = int(n.min()) if k_max is None else int(k_max)
    return pass_at_k(n, c, list(range(1, k_max + 1))).mean(axis=0)


def bootstrap_curve(
    num_samples,
    num_correct,
    k_max: int | None = None,
    num_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    pass@k curve of one run with a percentile-bootstrap interval over problems.

    The per-problem pass@k values are computed once (`(P, k_max)`); each resample draws P problems with
    replacement and averages their rows, so every resampled curve is itself a valid pass@k curve.

    Args:
        num_samples, num_correct: as in `passk_curve`.
        k_max (`int`, *optional*, defaults to min n): the largest k.
        num_resamples (`int`, *optional*, defaults to 2000): bootstrap resamples.
        confidence (`float`, *optional*, defaults to 0.95): two-sided coverage.
        seed (`int`, *optional*, defaults to 0): seed of the resampling (the result is reproducible).

    Returns:
        `tuple[np.ndarray, np.ndarray, np.ndarray]`: curve, lower and upper bounds, each of shape `(k_max,)`.
    """
    n, c = check_counts(num_samples, num_correct)
    if n.size == 0:
        raise ValueError("bootstrap_curve needs at least one problem.")
    k_max = int(n.min()) if k_max is None else int(k_max)
    values = pass_at_k(n, c, list(range(1, k_max + 1)))  # (P, k_max)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n.size, size=(num_resamples, n.size))  # (R, P)
    resampled = values[picks].mean(axis=1)  # (R, k_max)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(resampled, [alpha, 1.0 - alpha], axis=0)
    return values.mean(axis=0), lo, hi


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """
    Mean and two-sided Student-t interval; `(mean, nan, nan)` for one finite value, all NaN for none.

    Non-finite values are left out (the same rule as `verl_meds.analysis.experiment.mean_ci`).
    """
    from scipy import stats

    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(finite.mean())
    if finite.size == 1:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, finite.size - 1) * finite.std(ddof=1) / math.sqrt(finite.size))
    return mean, mean - half, mean + half


def curve_over_seeds(
    curves: Mapping[int, Sequence[float]], confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Mean pass@k curve over seeds with a Student-t interval at each k.

    Args:
        curves (`Mapping[int, Sequence[float]]`): seed -> pass@k curve (k = 1..K); curves may differ in length,
            the result covers the shortest one.
        confidence (`float`, *optional*, defaults to 0.95): two-sided coverage.

    Returns:
        `tuple[np.ndarray, np.ndarray, np.ndarray]`: mean, lower and upper bounds, each of shape `(K,)`; the
        bounds are NaN with a single seed.
    """
    if not curves:
        raise ValueError("curve_over_seeds needs at least one curve.")
    k_max = min(len(v) for v in curves.values())
    stacked = np.array([np.asarray(v, dtype=np.float64)[:k_max] for v in curves.values()])  # (S, K)
    rows = [t_interval(stacked[:, k].tolist(), confidence) for k in range(k_max)]
    return tuple(np.array([r[i] for r in rows]) for i in range(3))  # type: ignore[return-value]


def paired_curve_difference(
    curves: Mapping[int, Sequence[float]], baseline: Mapping[int, Sequence[float]], confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """
    Per-k mean and t-interval of `curves[s] - baseline[s]` over the seeds both have.

    Returns:
        `tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]`: mean, lower, upper (shape `(K,)`) and the seeds
        used.

    Raises:
        ValueError: when no seed is shared.
    """
    common = sorted(set(curves) & set(baseline))
    if not common:
        raise ValueError(f"no shared seed: {sorted(curves)} vs {sorted(baseline)}")
    k_max = min(min(len(curves[s]), len(baseline[s])) for s in common)
    diffs = {s: np.asarray(curves[s][:k_max], float) - np.asarray(baseline[s][:k_max], float) for s in common}
    mean, lo, hi = curve_over_seeds(diffs, confidence)
    return mean, lo, hi, common
