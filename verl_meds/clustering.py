r"""Clustering of one prompt's feature vectors and the cluster size |C| of new responses.

HDBSCAN ([Campello et al. 2013](https://doi.org/10.1007/978-3-642-37456-2_14), the scikit-learn-contrib `hdbscan`
package) labels the M stored responses of one prompt; label [`NOISE`] (-1) marks a point in no cluster. A noise point
repeats nothing, so its cluster size is 0 and it gets no penalty. Everything here is deterministic (no RNG): the same
inputs always give the same labels.

Cluster size of a new response, by [`ClusterConfig`] (`method`, `assignment`):

- `hdbscan` + `joint` (default): fit the stored history and this step's new responses together; |C| is the number of
  other members (past and present) of the new response's cluster, 0 for noise.
- `hdbscan` + `knn` (the authors' order): the new response takes the majority label of its `knn_k` nearest stored
  responses under the previous fit's labels; |C| is that cluster's size in the history, 0 when the vote gives noise.
  The history is then refitted with the new responses included.
- `single`: every response of the prompt is in one cluster; |C| = stored responses + other new responses.

Example:

```python
>>> import numpy as np
>>> from verl_meds.clustering import NOISE, fit_labels
>>> from verl_meds.config import ClusterConfig
>>> X = np.array([[0, 0], [0, 0.1], [0.1, 0], [5, 5], [5, 5.1], [5.1, 5], [20, -20]], dtype=np.float32)  # (M, F)
>>> fit_labels(X, ClusterConfig(l2_normalize=False)).tolist()
[0, 0, 0, 1, 1, 1, -1]

```
"""

from __future__ import annotations

import logging

import numpy as np

from .config import ClusterConfig

logger = logging.getLogger(__name__)

NOISE = -1
"""Label of a point that belongs to no cluster; its cluster size is 0 (it repeats nothing)."""


def prepare_rows(X: np.ndarray, l2_normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """
    Rows ready for distance computations, and which of them are usable.

    Args:
        X (`np.ndarray` of shape `(M, F)`, any float dtype):
            Feature vectors.
        l2_normalize (`bool`):
            Scale each finite row to unit L2 norm; rows of zeros stay zero.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: rows of shape `(M, F)`, dtype float64 (non-finite rows replaced by zeros),
        and a `(M,)` bool mask of rows whose values were all finite.

    Raises:
        ValueError: if `X` is not 2-D or has no columns.
    """
    rows = np.array(X, dtype=np.float64, copy=True)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"X must have shape (M, F) with F >= 1, got shape {rows.shape}.")
    finite = np.isfinite(rows).all(axis=1)  # (M,)
    rows[~finite] = 0.0
    if l2_normalize:
        norms = np.linalg.norm(rows, axis=1, keepdims=True)  # (M, 1)
        rows = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return rows, finite


def fit_labels(X: np.ndarray, cfg: ClusterConfig) -> np.ndarray:
    """
    Cluster labels of the rows of `X`.

    Rows with a non-finite value are left out of the fit and labelled [`NOISE`]. If fewer than
    `cfg.min_cluster_size` finite rows remain, all rows are noise (HDBSCAN with `allow_single_cluster=True` would
    otherwise put them in one cluster). Identical rows form one cluster when `cfg.allow_single_cluster` is set;
    without it HDBSCAN labels a prompt whose rows are all identical as noise, which is kept as is. With
    `cfg.method == "single"` every finite row gets label 0 and HDBSCAN is not run.

    Args:
        X (`np.ndarray` of shape `(M, F)`, any float dtype):
            Feature vectors of one prompt.
        cfg (`ClusterConfig`):
            Clustering options (`method`, `min_cluster_size`, `min_samples`, `metric`, `l2_normalize`,
            `allow_single_cluster`).

    Returns:
        `np.ndarray` of shape `(M,)`, dtype int64: labels 0..K-1, or `NOISE` (-1).

    Raises:
        ValueError: if `X` is not 2-D or has no columns.
    """
    rows, finite = prepare_rows(X, cfg.l2_normalize)
    labels = np.full(rows.shape[0], NOISE, dtype=np.int64)  # (M,)
    usable = np.flatnonzero(finite)
    if cfg.method == "single":
        labels[usable] = 0
        return labels
    if usable.size < cfg.min_cluster_size:
        return labels
    import hdbscan  # imported lazily: it pulls in pandas and joblib

    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=cfg.min_cluster_size,
        min_samples=cfg.min_samples,
        metric=cfg.metric,
        allow_single_cluster=cfg.allow_single_cluster,
        core_dist_n_jobs=1,
    )
    labels[usable] = clusterer.fit(rows[usable]).labels_.astype(np.int64)
    return labels


def member_counts(labels: np.ndarray) -> np.ndarray:
    """
    Size of each point's cluster (the point included); 0 for noise.

    Args:
        labels (`np.ndarray` of shape `(M,)`, int):
            Cluster labels, `NOISE` for noise.

    Returns:
        `np.ndarray` of shape `(M,)`, dtype int64.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    counts = np.zeros(labels.shape[0], dtype=np.int64)  # (M,)
    clustered = labels != NOISE
    if clustered.any():
        _, inverse, sizes = np.unique(labels[clustered], return_inverse=True, return_counts=True)
        counts[clustered] = sizes[inverse]
    return counts


def num_clusters(labels: np.ndarray) -> int:
    """Number K of distinct non-noise labels."""
    labels = np.asarray(labels).reshape(-1)
    return int(np.unique(labels[labels != NOISE]).size)


def largest_cluster_size(labels: np.ndarray) -> int:
    """Number of members of the largest non-noise cluster; 0 when every point is noise."""
    counts = member_counts(labels)
    return int(counts.max()) if counts.size else 0


def pairwise_distances(A: np.ndarray, B: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """
    Distances between every row of `A` and every row of `B`.

    Args:
        A (`np.ndarray` of shape `(n, F)`):
            First set of rows.
        B (`np.ndarray` of shape `(m, F)`):
            Second set of rows.
        metric (`str`, *optional*, defaults to `"euclidean"`):
            `"euclidean"`, `"manhattan"` or `"chebyshev"`.

    Returns:
        `np.ndarray` of shape `(n, m)`, dtype float64.

    Raises:
        ValueError: on an unknown metric or mismatched F.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.ndim != 2 or B.ndim != 2 or A.shape[1] != B.shape[1]:
        raise ValueError(f"A and B must have shapes (n, F) and (m, F), got {A.shape} and {B.shape}.")
    delta = np.abs(A[:, None, :] - B[None, :, :])  # (n, m, F)
    if metric == "euclidean":
        return np.sqrt(np.sum(delta * delta, axis=-1))
    if metric == "manhattan":
        return np.sum(delta, axis=-1)
    if metric == "chebyshev":
        return np.max(delta, axis=-1, initial=0.0)
    raise ValueError(f"metric must be one of ['euclidean', 'manhattan', 'chebyshev'], got {metric!r}.")


def knn_assign(
    X_new: np.ndarray, X_old: np.ndarray, labels_old: np.ndarray, k: int, metric: str = "euclidean"
) -> np.ndarray:
    """
    Label of each new row by majority vote among its `k` nearest old rows.

    Neighbours are ordered by distance, equal distances by old row index. A tie between labels goes to the
    non-noise label whose member is nearest among the neighbours; a tie never goes to [`NOISE`] when a non-noise
    label is part of it. A vote won by noise alone gives `NOISE` (cluster size 0). Rows are used as given, so apply
    the preprocessing of the fit first ([`prepare_rows`]). Non-finite new rows get `NOISE`; non-finite old rows
    never vote. With fewer than `k` usable old rows, all of them vote.

    Args:
        X_new (`np.ndarray` of shape `(n, F)`):
            Rows to assign.
        X_old (`np.ndarray` of shape `(m, F)`):
            Rows with known labels.
        labels_old (`np.ndarray` of shape `(m,)`, int):
            Labels of `X_old`, `NOISE` for noise.
        k (`int`):
            Number of voting neighbours, >= 1.
        metric (`str`, *optional*, defaults to `"euclidean"`):
            `"euclidean"`, `"manhattan"` or `"chebyshev"`.

    Returns:
        `np.ndarray` of shape `(n,)`, dtype int64: the assigned labels.

    Raises:
        ValueError: if `k < 1` or the shapes do not match.
    """
    if k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}.")
    X_new = np.asarray(X_new, dtype=np.float64)
    X_old = np.asarray(X_old, dtype=np.float64)
    labels_old = np.asarray(labels_old, dtype=np.int64).reshape(-1)
    if X_old.ndim != 2 or labels_old.shape[0] != X_old.shape[0]:
        raise ValueError(f"labels_old must have shape ({X_old.shape[0]},), got {labels_old.shape}.")
    assigned = np.full(X_new.shape[0], NOISE, dtype=np.int64)  # (n,)
    old_ok = np.isfinite(X_old).all(axis=1)  # (m,)
    new_ok = np.isfinite(X_new).all(axis=1)  # (n,)
    if not old_ok.any() or not new_ok.any():
        return assigned
    voters = labels_old[old_ok]
    distances = pairwise_distances(X_new[new_ok], X_old[old_ok], metric)  # (n_ok, m_ok)
    k_eff = min(k, voters.shape[0])
    votes = []
    for row in distances:
        neighbour_labels = voters[np.argsort(row, kind="stable")[:k_eff]]  # nearest first
        values, counts = np.unique(neighbour_labels, return_counts=True)
        tied = values[counts == counts.max()]
        candidates = tied[tied != NOISE]
        if candidates.size == 0:
            votes.append(NOISE)
            continue
        # The nearest neighbour carrying a candidate label decides the tie.
        votes.append(int(next(label for label in neighbour_labels if label in candidates)))
    assigned[new_ok] = votes
    return assigned


def cluster_sizes_for_new(
    X_old: np.ndarray, X_new: np.ndarray, cfg: ClusterConfig, labels_old: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """
    Cluster size |C| of each new row against one prompt's history, and the labels of history + new rows.

    See the module docstring for the three modes. In `knn` mode `labels_old` should be the labels returned by the
    previous call; when it is missing or does not match `X_old` the history is fitted first.

    Args:
        X_old (`np.ndarray` of shape `(m, F)`):
            Stored feature vectors of the prompt (m may be 0).
        X_new (`np.ndarray` of shape `(n, F)`):
            This step's feature vectors of the prompt, same outcome.
        cfg (`ClusterConfig`):
            Clustering options.
        labels_old (`np.ndarray` of shape `(m,)`, int, *optional*):
            Labels of `X_old` from the previous fit (used by `assignment="knn"` only).

    Returns:
        `tuple[np.ndarray, np.ndarray]`: cluster sizes of shape `(n,)`, dtype int64 (0 for noise and non-finite
        rows), and labels of shape `(m + n,)`, dtype int64, of the fit of the history followed by the new rows.

    Raises:
        ValueError: if F differs between `X_old` and `X_new`.
    """
    X_old = np.asarray(X_old)
    X_new = np.asarray(X_new)
    if X_old.ndim != 2 or X_new.ndim != 2 or X_old.shape[1] != X_new.shape[1]:
        raise ValueError(f"X_old and X_new must have shapes (m, F) and (n, F), got {X_old.shape} and {X_new.shape}.")
    num_old = X_old.shape[0]
    labels_all = fit_labels(np.concatenate([X_old, X_new], axis=0), cfg)  # (m + n,)
    if cfg.method == "single" or cfg.assignment == "joint":
        others = member_counts(labels_all)[num_old:] - 1  # (n,)
        return np.maximum(others, 0), labels_all
    if labels_old is None or np.asarray(labels_old).shape != (num_old,):
        labels_old = fit_labels(X_old, cfg)
    labels_old = np.asarray(labels_old, dtype=np.int64)
    rows_old, old_ok = prepare_rows(X_old, cfg.l2_normalize)
    rows_new, new_ok = prepare_rows(X_new, cfg.l2_normalize)
    rows_old[~old_ok] = np.nan  # non-finite rows stay out of the vote
    rows_new[~new_ok] = np.nan
    assigned = knn_assign(rows_new, rows_old, labels_old, cfg.knn_k, cfg.metric)  # (n,)
    history_counts = member_counts(labels_old)  # (m,) size of each stored point's cluster, 0 for noise
    history_sizes = {int(label): int(count) for label, count in zip(labels_old, history_counts, strict=True)}
    sizes = np.array([history_sizes.get(int(label), 0) for label in assigned], dtype=np.int64)  # noise -> 0
    return sizes, labels_all
