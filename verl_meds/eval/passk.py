r"""Unbiased pass@k (Chen et al. 2021, [arXiv 2107.03374](https://huggingface.co/papers/2107.03374)).

With n samples of one problem, c of them correct, the probability that a random size-k subset (drawn without
replacement) holds at least one correct sample is

$$
\text{pass@}k = 1 - \binom{n - c}{k} \Big/ \binom{n}{k} = 1 - \prod_{i=0}^{k-1} \frac{n - c - i}{n - i}.
$$

The product is a running product of the ratios (n - c - i) / (n - i), each in [0, 1], so nothing overflows
(C(1000, 500) has 300 digits; the binomials are never formed), an underflow can only round the failure probability
to 0, and the result is exact at the ends: 0 when c = 0, 1 when n - c < k (every size-k subset holds a correct sample).
k > n is an error, never a silent 1.0. This is the estimator the paper reports; it is not nanochat's "any correct
among the first k samples" nor verl's bootstrapped `best@N`.

pass@1 equals c / n, so the mean of pass@1 over problems with the same n is the mean accuracy over all samples.

Example:

```python
>>> from verl_meds.eval.passk import pass_at_k
>>> pass_at_k([4, 4, 4], [0, 1, 4], 2).round(4).tolist()  # c = 1 of 4: 1 - C(3,2)/C(4,2) = 1/2
[0.0, 0.5, 1.0]
>>> pass_at_k([10], [3], [1, 5, 8]).round(6).tolist()
[[0.3, 0.916667, 1.0]]

```
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

__all__ = ["check_counts", "mean_pass_at_k", "pass_at_k", "pass_at_k_exact", "pass_at_k_reference"]


def check_counts(num_samples, num_correct) -> tuple[np.ndarray, np.ndarray]:
    """
    Validate per-problem sample counts.

    Args:
        num_samples (`int` or array-like of shape `(P,)`):
            n, the samples drawn for each of P problems; integers >= 1.
        num_correct (`int` or array-like of shape `(P,)`):
            c, the correct samples of each problem; integers with 0 <= c <= n.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: n and c as int64 arrays of shape `(P,)` (a scalar becomes `(1,)`).

    Raises:
        ValueError: if the shapes differ, a value is not an integer, n < 1, or c is outside [0, n].
    """
    n = np.atleast_1d(np.asarray(num_samples))
    c = np.atleast_1d(np.asarray(num_correct))
    if n.ndim != 1 or n.shape != c.shape:
        raise ValueError(f"num_samples and num_correct must have the same shape (P,), got {n.shape} and {c.shape}.")
    for name, values in (("num_samples", n), ("num_correct", c)):
        if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
            raise ValueError(f"{name} must hold integers, got {values.tolist()[:8]}.")
    n = n.astype(np.int64)
    c = c.astype(np.int64)
    if n.size and n.min() < 1:
        raise ValueError(f"num_samples must be >= 1 for every problem, got n={int(n.min())}.")
    bad = (c < 0) | (c > n)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"num_correct must satisfy 0 <= c <= n, got c={int(c[first])} with n={int(n[first])} (problem {first})."
        )
    return n, c


def _check_ks(k: int | Sequence[int], n: np.ndarray) -> np.ndarray:
    ks = np.atleast_1d(np.asarray(k))
    if ks.ndim != 1 or ks.size == 0 or not np.all(np.equal(np.mod(ks, 1), 0)):
        raise ValueError(f"k must be a positive integer or a non-empty list of them, got {k!r}.")
    ks = ks.astype(np.int64)
    if ks.min() < 1:
        raise ValueError(f"k must be >= 1, got k={int(ks.min())}.")
    if n.size and ks.max() > n.min():
        raise ValueError(
            f"pass@k needs k <= n: got k={int(ks.max())} but n={int(n.min())} samples for some problem "
            f"(problem {int(np.argmin(n))}); draw at least k samples per problem or lower k."
        )
    return ks


def pass_at_k(num_samples, num_correct, k: int | Sequence[int]) -> np.ndarray:
    r"""
    Unbiased pass@k of each problem, vectorised over problems (and over several k at once).

    Computes $1 - \prod_{i=0}^{k-1} (n - c - i) / (n - i)$: one cumulative product over i gives every k up to the
    largest requested one, so a whole pass@k curve (k = 1..n) costs one `(P, max k)` array.

    Args:
        num_samples (`int` or array-like of shape `(P,)`):
            n per problem, integers >= 1 (they may differ between problems).
        num_correct (`int` or array-like of shape `(P,)`):
            c per problem, 0 <= c <= n.
        k (`int` or `Sequence[int]`):
            One k, or several (each 1 <= k <= min n).

    Returns:
        `np.ndarray`, float64: shape `(P,)` for an int `k`, `(P, len(k))` for a sequence; values in [0, 1], exactly
        0.0 where c = 0 and exactly 1.0 where n - c < k.

    Raises:
        ValueError: if k > n for any problem (the message names both), k < 1, or the counts are invalid
            (see [`check_counts`]).
    """
    n, c = check_counts(num_samples, num_correct)
    ks = _check_ks(k, n)
    k_max = int(ks.max())
    steps = np.arange(k_max, dtype=np.float64)  # (k_max,)
    total = n[:, None].astype(np.float64) - steps[None, :]  # (P, k_max): n - i, >= 1 since k <= n
    wrong = np.maximum(total - c[:, None], 0.0)  # (P, k_max): n - c - i, 0 once the wrong samples run out
    fail = np.cumprod(wrong / total, axis=1)  # (P, k_max): C(n-c, k) / C(n, k) for k = 1..k_max
    values = 1.0 - fail[:, ks - 1]  # (P, len(ks))
    return values[:, 0] if np.ndim(k) == 0 else values


def mean_pass_at_k(num_samples, num_correct, k: int | Sequence[int]) -> float | np.ndarray:
    """
    pass@k averaged over problems (each problem weighs the same).

    Args:
        num_samples, num_correct: as in [`pass_at_k`].
        k (`int` or `Sequence[int]`): as in [`pass_at_k`].

    Returns:
        `float` for an int `k`, `np.ndarray` of shape `(len(k),)` for a sequence.

    Raises:
        ValueError: as [`pass_at_k`], or when there are no problems.
    """
    values = pass_at_k(num_samples, num_correct, k)
    if values.shape[0] == 0:
        raise ValueError("mean_pass_at_k needs at least one problem.")
    mean = values.mean(axis=0)
    return float(mean) if np.ndim(k) == 0 else mean


def pass_at_k_exact(n: int, c: int, k: int) -> Fraction:
    """
    Exact pass@k as a rational number, from integer binomials (reference for tests; slow for large n).

    Raises:
        ValueError: if k > n or the counts are invalid.
    """
    check_counts(n, c)
    _check_ks(k, np.array([n]))
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def pass_at_k_reference(num_samples, num_correct, k: int) -> np.ndarray:
    """
    Loop version of [`pass_at_k`] (one problem at a time, the product form in floating point); kept next to the
    vectorised function so tests can compare the two.

    Returns:
        `np.ndarray` of shape `(P,)`, float64.
    """
    n, c = check_counts(num_samples, num_correct)
    _check_ks(k, n)
    out = np.empty(n.shape[0], dtype=np.float64)
    for p in range(n.shape[0]):
        fail = 1.0
        for i in range(k):
            fail *= max(0, int(n[p] - c[p] - i)) / float(n[p] - i)
        out[p] = 1.0 - fail
    return out
