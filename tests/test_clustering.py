"""Tests for `verl_meds.clustering`: HDBSCAN labels, edge cases, k-NN votes and the three cluster-size modes."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import fowlkes_mallows_score
from sklearn.metrics import pairwise_distances as sk_pairwise_distances

from verl_meds.clustering import (
    NOISE,
    cluster_sizes_for_new,
    fit_labels,
    knn_assign,
    largest_cluster_size,
    member_counts,
    num_clusters,
    pairwise_distances,
    prepare_rows,
)
from verl_meds.config import ClusterConfig

SCALE_FREE = {"merge_distance": 0.0, "max_distance": None}
"""HDBSCAN without the absolute scale: for blobs in raw units, whose spreads are far above the default scale."""


@pytest.mark.parametrize("l2_normalize", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_make_blobs_three_known_clusters(seed, l2_normalize):
    X, y = make_blobs(n_samples=90, n_features=6, centers=3, cluster_std=0.4, random_state=seed)
    labels = fit_labels(X.astype(np.float32), ClusterConfig(l2_normalize=l2_normalize, **SCALE_FREE))
    assert labels.shape == (90,) and labels.dtype == np.int64
    assert fowlkes_mallows_score(y, labels) >= 0.9
    assert num_clusters(labels) == 3


def test_deterministic_labels():
    X, _ = make_blobs(n_samples=60, n_features=5, centers=4, cluster_std=1.5, random_state=3)
    cfg = ClusterConfig(**SCALE_FREE)
    first = fit_labels(X, cfg)
    second = fit_labels(X.copy(), cfg)
    assert np.array_equal(first, second)
    assert (first != NOISE).any()


def test_fewer_rows_than_min_cluster_size_is_all_noise():
    cfg = ClusterConfig(min_cluster_size=5, l2_normalize=False)
    near = np.array([[0.0, 0.0], [0.0, 0.01], [0.01, 0.0], [0.01, 0.01]])
    # HDBSCAN itself would return one cluster here (allow_single_cluster); fewer than 5 rows must be noise.
    assert fit_labels(near, cfg).tolist() == [NOISE] * 4
    assert fit_labels(near[:1], ClusterConfig()).tolist() == [NOISE]
    assert fit_labels(np.empty((0, 3)), ClusterConfig()).tolist() == []


def test_identical_rows_form_one_cluster():
    X = np.tile(np.array([[0.3, -1.0, 2.0]], dtype=np.float32), (5, 1))
    assert fit_labels(X, ClusterConfig()).tolist() == [0] * 5
    # Documented: without allow_single_cluster HDBSCAN cannot return a single cluster.
    assert fit_labels(X, ClusterConfig(allow_single_cluster=False)).tolist() == [NOISE] * 5


def test_non_finite_rows_are_noise_and_do_not_crash():
    X = np.array(
        [[1.0, 0.0], [1.0, 0.001], [np.nan, 0.0], [0.999, 0.0], [np.inf, 1.0], [0.0, 1.0], [0.001, 1.0]],
        dtype=np.float32,
    )
    labels = fit_labels(X, ClusterConfig(l2_normalize=False))
    assert labels[2] == NOISE and labels[4] == NOISE
    assert labels[0] == labels[1] == labels[3] != NOISE
    assert labels[5] == labels[6] != NOISE and labels[5] != labels[0]
    assert fit_labels(np.full((4, 2), np.nan), ClusterConfig()).tolist() == [NOISE] * 4


def test_prepare_rows_normalises_and_keeps_zero_rows():
    rows, finite = prepare_rows(np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0]]), l2_normalize=True)
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0], [0.0, 0.0]])
    assert finite.tolist() == [True, True, False]
    with pytest.raises(ValueError, match=r"shape \(M, F\)"):
        prepare_rows(np.zeros(3), l2_normalize=True)


def test_single_method_puts_every_finite_row_in_one_cluster():
    X = np.array([[0.0, 1.0], [100.0, -3.0], [np.nan, 0.0]])
    assert fit_labels(X, ClusterConfig(method="single")).tolist() == [0, 0, NOISE]


def test_member_counts_and_summaries():
    labels = np.array([0, 1, 0, NOISE, 0, NOISE])
    assert member_counts(labels).tolist() == [3, 1, 3, 0, 3, 0]
    assert num_clusters(labels) == 2
    assert largest_cluster_size(labels) == 3
    assert largest_cluster_size(np.array([NOISE, NOISE])) == 0


@pytest.mark.parametrize("metric", ["euclidean", "manhattan", "chebyshev"])
def test_pairwise_distances_match_sklearn(metric):
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(4, 3)), rng.normal(size=(6, 3))
    assert np.allclose(pairwise_distances(A, B, metric), sk_pairwise_distances(A, B, metric=metric))


# ---------------------------------------------------------------------------- knn_assign


def test_knn_majority_vote():
    X_old = np.array([[0.0], [0.1], [0.2], [5.0], [5.1]])
    labels_old = np.array([0, 0, 0, 1, 1])
    assert knn_assign(np.array([[0.05], [5.05]]), X_old, labels_old, k=3).tolist() == [0, 1]


def test_knn_tie_never_goes_to_noise():
    # The nearest neighbour is noise, the second is cluster 4: a 1-1 tie goes to the cluster.
    X_old = np.array([[1.0], [2.0]])
    assert knn_assign(np.array([[0.0]]), X_old, np.array([NOISE, 4]), k=2).tolist() == [4]
    # Three-way tie noise / 7 / 2 (nearest first): the nearest non-noise label, 7, wins.
    X_old = np.array([[1.0], [2.0], [3.0]])
    assert knn_assign(np.array([[0.0]]), X_old, np.array([NOISE, 7, 2]), k=3).tolist() == [7]


def test_knn_noise_majority_gives_noise_and_nan_rows():
    X_old = np.array([[0.0], [0.1], [0.2], [9.0]])
    labels_old = np.array([NOISE, NOISE, 3, 3])
    assert knn_assign(np.array([[0.05], [np.nan]]), X_old, labels_old, k=3).tolist() == [NOISE, NOISE]
    # k larger than the history: every old row votes.
    assert knn_assign(np.array([[8.0]]), X_old[2:], labels_old[2:], k=10).tolist() == [3]
    assert knn_assign(np.array([[8.0]]), np.empty((0, 1)), np.empty(0, dtype=np.int64), k=3).tolist() == [NOISE]
    with pytest.raises(ValueError, match="k must be"):
        knn_assign(np.array([[8.0]]), X_old, labels_old, k=0)


# ---------------------------------------------------------------------------- cluster_sizes_for_new


def _scattered(count: int) -> np.ndarray:
    """`count` points on a line with doubling gaps, far from the origin: one chain, no two of them alike."""
    return (10.0 * 2.0 ** np.arange(count))[:, None] * np.array([[1.0, -1.0, 0.5]])


def test_joint_five_identical_new_errors_count_the_others():
    cfg = ClusterConfig()
    new = np.tile(np.array([[1.0, 2.0, 3.0]], dtype=np.float32), (5, 1))
    sizes, labels = cluster_sizes_for_new(np.empty((0, 3), np.float32), new, cfg)
    assert sizes.tolist() == [4, 4, 4, 4, 4]
    assert labels.tolist() == [0] * 5


def test_joint_counts_past_and_present_members_and_lone_error_gets_zero():
    cfg = ClusterConfig(l2_normalize=False)
    old = np.vstack([np.zeros((3, 3)), np.full((2, 3), 50.0)])
    new = np.array([[0.0, 0.0, 0.001], [0.001, 0.0, 0.0], [-900.0, 400.0, 7.0]])
    sizes, labels = cluster_sizes_for_new(old, new, cfg)
    assert labels.shape == (8,)
    assert sizes.tolist() == [4, 4, 0]  # 3 stored + the other new one; the far-away novel error is noise


def test_knn_mode_uses_history_labels_and_noise_vote_gives_zero():
    cfg = ClusterConfig(assignment="knn", l2_normalize=False)
    noise_points = np.diag([300.0, 900.0, 2700.0])
    old = np.vstack([np.zeros((3, 3)), np.full((3, 3), 5.0), noise_points])  # (9, 3)
    labels_old = fit_labels(old, cfg)
    assert labels_old[0] == labels_old[1] == labels_old[2] != NOISE
    assert labels_old[3] == labels_old[4] == labels_old[5] not in (NOISE, labels_old[0])
    assert (labels_old[6:] == NOISE).all()
    near_cluster = np.array([[0.001, 0.0, 0.0]])
    # Its 3 nearest stored points are two noise points and one of the "5" cluster: noise wins, size 0 (not 3).
    between_noise = np.array([[300.0, 900.0, 0.0]])
    sizes, labels_all = cluster_sizes_for_new(old, np.vstack([near_cluster, between_noise]), cfg, labels_old)
    assert sizes.tolist() == [3, 0]
    assert labels_all.shape == (11,)
    # Without stored labels the history is fitted first: same result.
    assert cluster_sizes_for_new(old, np.vstack([near_cluster, between_noise]), cfg)[0].tolist() == [3, 0]


def test_knn_mode_new_responses_do_not_count_each_other():
    # The authors' order: new responses are assigned against the history only.
    cfg = ClusterConfig(assignment="knn")
    new = np.tile(np.array([[1.0, 2.0, 3.0]]), (4, 1))
    sizes, labels_all = cluster_sizes_for_new(np.empty((0, 3)), new, cfg)
    assert sizes.tolist() == [0, 0, 0, 0]
    assert labels_all.tolist() == [0, 0, 0, 0]  # the refit with the new points includes them


def test_single_mode_counts_everything_else():
    for assignment in ("joint", "knn"):
        cfg = ClusterConfig(method="single", assignment=assignment)
        sizes, labels = cluster_sizes_for_new(_scattered(4), np.array([[1.0, 0.0, 0.0], [0.0, 9.0, 1.0]]), cfg)
        assert sizes.tolist() == [5, 5]  # 4 stored + 1 other new
        assert labels.tolist() == [0] * 6


def test_feature_dimension_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(m, F\) and \(n, F\)"):
        cluster_sizes_for_new(np.zeros((2, 3)), np.zeros((1, 4)), ClusterConfig())
