"""The fast HDBSCAN path of `verl_meds.clustering` against scikit-learn-contrib `hdbscan` (the reference)."""

import numpy as np
import pytest
from hdbscan._hdbscan_tree import compute_stability, condense_tree, get_clusters

from verl_meds.clustering import (
    NOISE,
    _hdbscan_from_linkage,
    _mutual_reachability_linkage,
    _number_by_first_row,
    fit_labels,
    fit_labels_reference,
    largest_cluster_size,
    member_counts,
    num_clusters,
    prepare_rows,
)
from verl_meds.config import ClusterConfig, MEDSConfig
from verl_meds.memory import LABEL_DTYPE, ErrorMemory


def _blobs(rng: np.random.Generator, ties: bool) -> np.ndarray:
    """A few blobs of varied size, width and dimension; with `ties`, many repeated and rounded rows."""
    num_rows = int(rng.choice([2, 3, 5, 9, 30, 120]))
    dim = int(rng.choice([1, 2, 3, 14]))
    centres = rng.normal(size=(int(rng.integers(1, 5)), dim))
    X = centres[rng.integers(0, len(centres), num_rows)] + float(rng.choice([0.01, 0.2, 1.0])) * rng.normal(
        size=(num_rows, dim)
    )
    if ties:
        repeat = rng.random(num_rows) < 0.5
        X[repeat] = X[rng.integers(0, num_rows, int(repeat.sum()))]
        X = np.round(X, 1)
    return X.astype(np.float32)


AUTHORS = {"merge_distance": 0.0, "max_distance": None, "ties": "order"}
"""Plain HDBSCAN as contrib computes it (no absolute scale, ties in storage order): contrib is the reference."""


def _random_config(rng: np.random.Generator, min_samples: int = 1) -> ClusterConfig:
    return ClusterConfig(
        **AUTHORS,
        min_cluster_size=int(rng.choice([2, 2, 3, 5])),
        min_samples=min_samples,
        metric=str(rng.choice(["euclidean", "manhattan", "chebyshev"])),
        l2_normalize=bool(rng.random() < 0.7),
        allow_single_cluster=bool(rng.random() < 0.6),
    )


@pytest.mark.parametrize("seed", range(4))
def test_same_tree_gives_contribs_labels_even_with_ties(seed):
    """Condensed tree, stabilities and excess of mass are contrib's, given the same single-linkage tree."""
    rng = np.random.default_rng(seed)
    for _ in range(150):
        X = _blobs(rng, ties=bool(rng.random() < 0.5))
        cfg = _random_config(rng, min_samples=int(rng.choice([1, 2, 4])))
        if X.shape[0] < cfg.min_cluster_size:
            continue
        rows, _ = prepare_rows(X, cfg.l2_normalize)
        tree = _mutual_reachability_linkage(rows, cfg.min_samples, cfg.metric)
        condensed = condense_tree(np.ascontiguousarray(tree), cfg.min_cluster_size)
        contrib, _, _ = get_clusters(condensed, compute_stability(condensed), "eom", cfg.allow_single_cluster)
        ours = _hdbscan_from_linkage(tree, X.shape[0], cfg.min_cluster_size, cfg.allow_single_cluster)
        assert ours.tolist() == _number_by_first_row(contrib.astype(np.int64)).tolist()


@pytest.mark.parametrize("seed", range(4))
def test_tie_free_inputs_match_contribs_exact_hdbscan(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(60):
        X = _blobs(rng, ties=False)
        cfg = _random_config(rng)
        assert fit_labels(X, cfg).tolist() == fit_labels_reference(X, cfg, algorithm="generic").tolist()


def test_repeated_rows_and_edge_cases_match_contrib():
    cfg = ClusterConfig(**AUTHORS)
    base = np.random.default_rng(7).normal(size=(6, 4)).astype(np.float32)
    X = np.concatenate([base, base[:3], base[:1], base[:1]])  # exact repeats, as identical responses give
    assert fit_labels(X, cfg).tolist() == fit_labels_reference(X, cfg).tolist()
    same = np.ones((5, 3), dtype=np.float32)
    assert fit_labels(same, cfg).tolist() == fit_labels_reference(same, cfg).tolist() == [0] * 5
    assert fit_labels(same[:2], cfg).tolist() == fit_labels_reference(same[:2], cfg).tolist()


def test_labels_are_numbered_by_first_row():
    raw = np.array([7, NOISE, 3, 7, 0, 3, NOISE])
    assert _number_by_first_row(raw).tolist() == [0, NOISE, 1, 0, 2, 1, NOISE]
    assert _number_by_first_row(np.array([NOISE, NOISE])).tolist() == [NOISE, NOISE]


def test_count_helpers_accept_any_labels():
    for labels in (np.array([0, 2, 2, NOISE, 0, 2]), np.array([10**9, -7, -7, NOISE, 10**9, -7])):
        assert member_counts(labels).tolist() == [2, 3, 3, 0, 2, 3]
        assert num_clusters(labels) == 2 and largest_cluster_size(labels) == 3
    assert num_clusters(np.array([], dtype=np.int64)) == 0 and largest_cluster_size(np.array([NOISE])) == 0


def test_memory_steps_match_the_contrib_computation(monkeypatch):
    """Several steps of the default memory give the same cluster sizes with the fast path and with contrib."""
    import verl_meds.clustering as clustering

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 3, 14))  # (prompts, blobs, F)
    steps = []
    for _ in range(4):
        prompt = np.repeat(np.arange(4), 16)
        features = centres[prompt, rng.integers(0, 3, prompt.size)] + 0.2 * rng.normal(size=(prompt.size, 14))
        steps.append((prompt.tolist(), features.astype(np.float32), np.ones(prompt.size, bool), rng.random(64) < 0.3))
    config = MEDSConfig.from_dict({"memory": {"capacity": 40}, "clustering": AUTHORS})
    fast, reference = ErrorMemory(config), ErrorMemory(config)
    for step in steps:
        sizes_fast, metrics_fast = fast.step(*step)
        with monkeypatch.context() as patch:
            patch.setattr(clustering, "fit_labels", clustering.fit_labels_reference)
            sizes_reference, metrics_reference = reference.step(*step)
        assert sizes_fast.tolist() == sizes_reference.tolist() and metrics_fast == metrics_reference
    assert fast._labels[(0, "wrong")].dtype == LABEL_DTYPE
    assert all(array.base is None for array in (*fast._entries.values(), *fast._labels.values()))  # no views kept
