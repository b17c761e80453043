"""pass@k: exact rational values on hand cases, brute force over all size-k subsets, loop vs vectorised, errors."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from verl_meds.eval.passk import mean_pass_at_k, pass_at_k, pass_at_k_exact, pass_at_k_reference


def brute_force(n: int, c: int, k: int) -> Fraction:
    """Fraction of size-k subsets of n samples (the first c correct) holding at least one correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(i < c for i in subset) for subset in subsets)
    return Fraction(hits, len(subsets))


def test_hand_cases_are_exact():
    assert pass_at_k(10, 0, 3)[0] == 0.0  # c = 0
    assert pass_at_k(10, 10, 3)[0] == 1.0  # c = n
    assert pass_at_k(10, 1, 10)[0] == 1.0  # k = n with one correct sample
    assert pass_at_k(10, 7, 4)[0] == 1.0  # n - c < k
    assert pass_at_k(4, 1, 2)[0] == 0.5  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 1)[0] == pytest.approx(0.4, abs=1e-15)  # pass@1 = c / n
    assert pass_at_k(1, 1, 1)[0] == 1.0 and pass_at_k(1, 0, 1)[0] == 0.0


@pytest.mark.parametrize(
    ("c", "k"),
    [
        (0, 1),
        (0, 1000),
        (1000, 1),
        (1000, 1000),
        (1, 1),
        (1, 1000),
        (1, 999),
        (3, 500),
        (500, 10),
        (999, 1),
        (17, 128),
        (250, 3),
        (10, 990),
        (10, 991),
    ],
)
def test_n_1000_matches_exact_fractions(c, k):
    exact = 1 - Fraction(math.comb(1000 - c, k), math.comb(1000, k))
    assert exact == pass_at_k_exact(1000, c, k)
    value = pass_at_k(1000, c, k)[0]
    assert value == pytest.approx(float(exact), rel=1e-12, abs=1e-15)
    if exact in (0, 1):
        assert value == float(exact)


def test_agrees_with_brute_force_over_all_subsets():
    for n in range(1, 9):
        for c in range(n + 1):
            ks = list(range(1, n + 1))
            values = pass_at_k([n], [c], ks)[0]
            for k, value in zip(ks, values, strict=True):
                assert value == pytest.approx(float(brute_force(n, c, k)), abs=1e-12), (n, c, k)


def test_vectorised_matches_reference_loop_and_mixed_n():
    rng = np.random.default_rng(0)
    n = rng.integers(5, 200, size=300)
    c = rng.integers(0, n + 1)
    for k in (1, 2, 5):
        np.testing.assert_allclose(pass_at_k(n, c, k), pass_at_k_reference(n, c, k), rtol=1e-12, atol=1e-14)
    table = pass_at_k(n, c, [1, 3, 5])
    assert table.shape == (300, 3)
    np.testing.assert_allclose(table[:, 1], pass_at_k(n, c, 3))
    np.testing.assert_allclose(table[:, 0], c / n, rtol=1e-13)
    assert np.all(np.diff(table, axis=1) >= -1e-15)  # pass@k never decreases in k


def test_large_n_does_not_overflow():
    n, c, k = 100_000, 37, 5_000
    log_fail = math.lgamma(n - c + 1) - math.lgamma(n - c - k + 1) - math.lgamma(n + 1) + math.lgamma(n - k + 1)
    assert pass_at_k(n, c, k)[0] == pytest.approx(1 - math.exp(log_fail), rel=1e-9)
    curve = pass_at_k([128], [3], list(range(1, 129)))[0]
    assert curve[-1] == 1.0 and np.isfinite(curve).all()


def test_mean_over_problems():
    assert mean_pass_at_k([4, 4, 4, 4], [0, 1, 3, 4], 1) == pytest.approx(0.5)
    assert mean_pass_at_k([4, 4, 4, 4], [0, 1, 3, 4], 2) == pytest.approx((0 + 0.5 + 1 + 1) / 4)
    np.testing.assert_allclose(mean_pass_at_k([4, 4], [1, 2], [1, 4]), [0.375, 1.0])
    with pytest.raises(ValueError, match="at least one problem"):
        mean_pass_at_k([], [], 1)


def test_errors_name_k_and_n():
    with pytest.raises(ValueError, match=r"k=5.*n=3"):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError, match=r"k=129.*n=128"):
        pass_at_k([128, 256], [1, 1], [1, 129])
    with pytest.raises(ValueError, match=r"0 <= c <= n"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match=r"0 <= c <= n"):
        pass_at_k(4, -1, 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        pass_at_k(4, 1, 0)
    with pytest.raises(ValueError, match="integers"):
        pass_at_k([4.5], [1], 1)
    with pytest.raises(ValueError, match="same shape"):
        pass_at_k([4, 4], [1], 1)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        pass_at_k([0], [0], 1)
