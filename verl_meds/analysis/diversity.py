r"""Diversity and error-collapse metrics per training step, from analysis records (`verl_meds.analysis.records`).

A *group* is one prompt at one step; its wrong responses are the rows with `correct = false`. Noise responses
(cluster -1) repeat nothing, so each counts as a cluster of its own. Per step ([`step_metrics`]):

- `num_rows`, `num_wrong`, `accuracy`: rows, wrong rows, fraction right.
- `eigen_ratio`: top-1 eigen ratio $\lambda_1 / \sum_i \lambda_i$ of the covariance of the step's features
  ([`top1_eigen_ratio`]); 1 means all variation lies on one direction (collapse), 1/F is isotropic.
- `distinct_clusters`, `distinct_clusters_frac`: mean over groups of the number of distinct clusters among the wrong
  responses that have a cluster (those with features), and of that number / those responses.
- `distinct_answers`, `distinct_answers_frac`: the same for distinct final answers, over all wrong responses
  (whitespace-normalised text; no answer is one value).
- `distinct_patterns`, `distinct_patterns_frac`: the same for the LLM judge's `pattern` labels, over the wrong
  responses that have one.
- `novelty`: fraction of the step's clustered wrong responses whose cluster has no member stored before the step
  (`past_members == 0`; noise counts as novel).
- `largest_cluster_share`: mean over groups of (largest cluster among the clustered wrong responses) / clustered wrong
  responses: the error-collapse curve.
- `largest_answer_share`: the same with identical final answers in place of clusters.
- `ari`, `nmi`: agreement of clusters with given `label`s among wrong responses ([`cluster_label_agreement`]), per
  group, averaged with weights = labelled rows.
- `num_groups`: groups with at least `min_wrong` wrong responses (the group means above use only these).

A group mean covers the groups where the value exists; a value that cannot be computed at all (no features, no
clusters, no labels, no qualifying group) is NaN.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from verl_meds.answer import answer_text
from verl_meds.clustering import NOISE

Subset = Literal["all", "wrong", "right"]
NAN = float("nan")


def top1_eigen_ratio(features: np.ndarray, l2_normalize: bool = False) -> float:
    r"""
    Share of the total variance on the first principal direction: $\lambda_1 / \sum_i \lambda_i$ of the covariance
    of the rows.

    Args:
        features (`np.ndarray` of shape `(N, F)`, float):
            Feature rows; rows with a non-finite value are dropped.
        l2_normalize (`bool`, *optional*, defaults to `False`):
            Scale rows to unit norm first (as the clustering does).

    Returns:
        `float`: in [1/F, 1]; NaN when fewer than 2 finite rows remain or the total variance is 0.

    Raises:
        ValueError: if `features` is not 2-D.

    >>> top1_eigen_ratio(np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]))
    1.0
    """
    X = np.asarray(features, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"features must have shape (N, F), got {X.shape}")
    X = X[np.isfinite(X).all(axis=1)]  # (N', F)
    if l2_normalize and X.size:
        norms = np.linalg.norm(X, axis=1, keepdims=True)  # (N', 1)
        X = np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)
    if X.shape[0] < 2:
        return NAN
    centered = X - X.mean(axis=0, keepdims=True)  # (N', F)
    covariance = centered.T @ centered / (X.shape[0] - 1)  # (F, F)
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance), 0.0, None)  # (F,), ascending
    total = float(eigenvalues.sum())
    if total <= 1e-12 * max(1.0, float(np.abs(covariance).max())):
        return NAN
    return float(eigenvalues[-1] / total)


def cluster_label_agreement(clusters: Sequence[int], labels: Sequence[Hashable]) -> tuple[float, float]:
    """
    Adjusted Rand index and normalised mutual information between cluster labels and given labels (scikit-learn).

    Noise points (`-1`) are each put in a cluster of their own before scoring.

    Args:
        clusters (`Sequence[int]` of length n): cluster labels, -1 for noise.
        labels (`Sequence[Hashable]` of length n): the given labels.

    Returns:
        `tuple[float, float]`: (ARI, NMI); NaN for n < 2. Both are 1.0 when the partitions are equal.

    Raises:
        ValueError: if the lengths differ.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    if len(clusters) != len(labels):
        raise ValueError(f"clusters and labels must have the same length, got {len(clusters)} and {len(labels)}")
    if len(clusters) < 2:
        return NAN, NAN
    distinct = [f"c{c}" if c != NOISE else f"noise{i}" for i, c in enumerate(clusters)]
    given = [str(label) for label in labels]
    return float(adjusted_rand_score(given, distinct)), float(normalized_mutual_info_score(given, distinct))


def _cluster_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Cluster identity of the rows that have a cluster; each noise row is a cluster of its own."""
    keys = []
    for i, row in enumerate(rows):
        cluster = row.get("cluster")
        if cluster is not None:
            keys.append(f"noise{i}" if int(cluster) == NOISE else f"c{int(cluster)}")
    return keys


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else NAN


def _group_stats(wrong: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Distinct clusters/answers/patterns and largest shares of one group's wrong responses.

    Answers use every wrong response; clusters and patterns use the wrong responses that have one."""
    stats: dict[str, float] = {}
    answers = Counter(answer_text(row.get("answer")) for row in wrong)
    stats["distinct_answers"] = float(len(answers))
    stats["distinct_answers_frac"] = len(answers) / len(wrong)
    stats["largest_answer_share"] = max(answers.values()) / len(wrong)
    clusters = Counter(_cluster_keys(wrong))
    if clusters:
        clustered = sum(clusters.values())
        stats["distinct_clusters"] = float(len(clusters))
        stats["distinct_clusters_frac"] = len(clusters) / clustered
        stats["largest_cluster_share"] = max(clusters.values()) / clustered
    patterns = [row["pattern"] for row in wrong if row.get("pattern") is not None]
    if patterns:
        stats["distinct_patterns"] = float(len(set(patterns)))
        stats["distinct_patterns_frac"] = len(set(patterns)) / len(patterns)
    return stats


def step_metrics(
    records: Sequence[Mapping[str, Any]],
    subset: Subset = "all",
    min_wrong: int = 2,
    l2_normalize: bool = False,
) -> list[dict[str, float]]:
    """
    The per-step metrics of the module docstring.

    Args:
        records (`Sequence[Mapping]`): analysis records (clusters from the trainer or `assign_clusters`).
        subset (`Literal["all", "wrong", "right"]`, *optional*, defaults to `"all"`): rows whose features enter
            `eigen_ratio`.
        min_wrong (`int`, *optional*, defaults to `2`): groups with fewer wrong responses are left out of the group
            means (with one wrong response every diversity ratio is trivially 1).
        l2_normalize (`bool`, *optional*, defaults to `False`): normalise rows before `eigen_ratio`.

    Returns:
        `list[dict[str, float]]`: one dict per step, in increasing step order, with `step` and every key of the
        module docstring.

    Raises:
        ValueError: for an unknown `subset` or `min_wrong < 1`.
    """
    if subset not in ("all", "wrong", "right"):
        raise ValueError(f"subset must be 'all', 'wrong' or 'right', got {subset!r}")
    if min_wrong < 1:
        raise ValueError(f"min_wrong must be >= 1, got {min_wrong}")
    steps: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        steps[int(record["step"])].append(record)
    out = []
    for step in sorted(steps):
        rows = steps[step]
        wrong_rows = [r for r in rows if not r["correct"]]
        entry: dict[str, float] = {
            "step": step,
            "num_rows": len(rows),
            "num_wrong": len(wrong_rows),
            "accuracy": 1.0 - len(wrong_rows) / len(rows),
        }
        chosen = [r for r in rows if subset == "all" or (subset == "wrong") != bool(r["correct"])]
        vectors = [r["features"] for r in chosen if r.get("features")]
        widths = {len(v) for v in vectors}
        entry["eigen_ratio"] = (
            top1_eigen_ratio(np.asarray(vectors, dtype=np.float64), l2_normalize) if len(widths) == 1 else NAN
        )
        past = [r["past_members"] for r in wrong_rows if r.get("past_members") is not None]
        entry["novelty"] = _mean([float(p == 0) for p in past])
        groups: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
        for r in wrong_rows:
            groups[r["prompt_id"]].append(r)
        kept = [g for g in groups.values() if len(g) >= min_wrong]
        entry["num_groups"] = len(kept)
        per_group = [_group_stats(g) for g in kept]
        for name in (
            "distinct_clusters",
            "distinct_clusters_frac",
            "distinct_answers",
            "distinct_answers_frac",
            "distinct_patterns",
            "distinct_patterns_frac",
            "largest_cluster_share",
            "largest_answer_share",
        ):
            entry[name] = _mean([stats[name] for stats in per_group if name in stats])
        entry["ari"], entry["nmi"] = _agreement(kept)
        out.append(entry)
    return out


def _agreement(groups: Sequence[Sequence[Mapping[str, Any]]]) -> tuple[float, float]:
    """Size-weighted mean ARI and NMI over groups, using rows that have both a cluster and a label."""
    scores, weights = [], []
    for group in groups:
        rows = [r for r in group if r.get("cluster") is not None and r.get("label") is not None]
        if len(rows) < 2:
            continue
        ari, nmi = cluster_label_agreement([int(r["cluster"]) for r in rows], [r["label"] for r in rows])
        scores.append((ari, nmi))
        weights.append(len(rows))
    if not scores:
        return NAN, NAN
    values = np.asarray(scores)  # (groups, 2)
    mean = np.average(values, axis=0, weights=np.asarray(weights, dtype=np.float64))
    return float(mean[0]), float(mean[1])


def is_missing(value: Any) -> bool:
    """Whether a metric value is absent (None or NaN)."""
    return value is None or (isinstance(value, float) and math.isnan(value))
