"""Diversity metrics on hand-built records with known answers: eigen ratio, distinct counts, novelty, shares,
ARI/NMI."""

from __future__ import annotations

import math

import numpy as np
import pytest

from verl_meds.analysis.diversity import cluster_label_agreement, step_metrics, top1_eigen_ratio


def test_eigen_ratio_known_covariances():
    assert top1_eigen_ratio(np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0]])) == pytest.approx(1.0)  # a line
    # Sample covariance diag(6, 2/3): lambda_1 / sum = 6 / (6 + 2/3) = 0.9, whatever the rotation.
    X = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    angle = 0.7
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    assert top1_eigen_ratio(X) == pytest.approx(0.9)
    assert top1_eigen_ratio(X @ rotation.T + 5.0) == pytest.approx(0.9)
    isotropic = np.random.default_rng(0).normal(size=(20_000, 4))
    assert top1_eigen_ratio(isotropic) == pytest.approx(0.25, abs=0.01)
    with_nan = np.vstack([X, [[np.nan, 1.0]]])
    assert top1_eigen_ratio(with_nan) == pytest.approx(0.9)  # non-finite rows are dropped
    assert math.isnan(top1_eigen_ratio(X[:1]))  # one row: no covariance
    assert math.isnan(top1_eigen_ratio(np.ones((5, 3))))  # zero variance
    assert top1_eigen_ratio(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]]), l2_normalize=True) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"shape \(N, F\)"):
        top1_eigen_ratio(np.ones(3))


def test_agreement_scores():
    assert cluster_label_agreement([0, 0, 1, 1], ["a", "a", "b", "b"]) == pytest.approx((1.0, 1.0))
    assert cluster_label_agreement([7, 7, 3, 3, 3], ["x", "x", "y", "y", "y"]) == pytest.approx((1.0, 1.0))
    ari, nmi = cluster_label_agreement([-1, -1, 0, 0], ["a", "a", "b", "b"])  # noise points are not merged
    assert ari < 1.0 and nmi < 1.0
    assert cluster_label_agreement([0, 0, 0, 0], ["a", "b", "a", "b"])[0] == pytest.approx(0.0)
    assert all(math.isnan(v) for v in cluster_label_agreement([0], ["a"]))
    with pytest.raises(ValueError, match="same length"):
        cluster_label_agreement([0, 1], ["a"])


def row(step, prompt, correct, answer=None, cluster=None, past=None, label=None, features=None, pattern=None):
    return {
        "step": step,
        "prompt_id": prompt,
        "correct": correct,
        "answer": answer,
        "cluster": cluster,
        "past_members": past,
        "label": label,
        "features": features,
        "pattern": pattern,
    }


RECORDS = [
    # step 0, prompt p1: four wrong (clusters 0, 0, 1, noise), one right
    row(0, "p1", False, "3", 0, 0, "carry", [1.0, 0.0], "sign"),
    row(0, "p1", False, "3", 0, 0, "carry", [1.1, 0.0], "sign"),
    row(0, "p1", False, "4", 1, 0, "order", [0.0, 1.0], "order"),
    row(0, "p1", False, None, -1, 0, "other", None, "guess"),
    row(0, "p1", True, "5", features=[0.5, 0.5]),
    # step 0, prompt p2: a single wrong response (below min_wrong) and one right
    row(0, "p2", False, "9", 0, 0, "carry", [2.0, 2.0]),
    row(0, "p2", True, "8", features=[2.0, 1.0]),
    # step 1, prompt p1: three wrong, all in the old cluster 0 (error collapse)
    row(1, "p1", False, "3", 0, 2, "carry", [1.0, 0.1], "sign"),
    row(1, "p1", False, "3", 0, 2, "carry", [1.0, 0.2], "sign"),
    row(1, "p1", False, " 3", 0, 2, "carry", [1.0, 0.3], "sign"),
    row(1, "p1", True, "5", features=[0.5, 0.5]),
]


def test_step_metrics_on_known_records():
    first, second = step_metrics(RECORDS, min_wrong=2)
    assert first["step"] == 0 and second["step"] == 1
    assert first["num_rows"] == 7 and first["num_wrong"] == 5 and first["accuracy"] == pytest.approx(2 / 7)
    assert first["num_groups"] == 1  # p2 has one wrong response
    assert first["distinct_clusters"] == 3 and first["distinct_clusters_frac"] == pytest.approx(3 / 4)
    assert first["distinct_answers"] == 3 and first["distinct_answers_frac"] == pytest.approx(3 / 4)
    assert first["distinct_patterns"] == 3 and first["distinct_patterns_frac"] == pytest.approx(3 / 4)
    assert first["largest_cluster_share"] == pytest.approx(2 / 4)
    assert first["largest_answer_share"] == pytest.approx(2 / 4)
    assert first["novelty"] == pytest.approx(1.0)  # nothing was stored before step 0
    assert first["ari"] == pytest.approx(1.0) and first["nmi"] == pytest.approx(1.0)  # clusters == labels

    assert second["distinct_clusters"] == 1 and second["distinct_clusters_frac"] == pytest.approx(1 / 3)
    assert second["distinct_answers"] == 1  # " 3" is "3" after whitespace normalisation
    assert second["largest_cluster_share"] == pytest.approx(1.0)
    assert second["novelty"] == pytest.approx(0.0)
    assert second["accuracy"] == pytest.approx(1 / 4)
    assert second["eigen_ratio"] == pytest.approx(
        top1_eigen_ratio(np.array([[1.0, 0.1], [1.0, 0.2], [1.0, 0.3], [0.5, 0.5]]))
    )

    wrong_only = step_metrics(RECORDS, subset="wrong")[0]["eigen_ratio"]
    assert wrong_only == pytest.approx(top1_eigen_ratio(np.array([[1.0, 0.0], [1.1, 0.0], [0.0, 1.0], [2.0, 2.0]])))
    loose = step_metrics(RECORDS, min_wrong=1)[0]
    assert loose["num_groups"] == 2 and loose["distinct_clusters_frac"] == pytest.approx((3 / 4 + 1) / 2)


def test_missing_information_gives_nan_not_errors():
    bare = [
        {"step": 3, "prompt_id": 1, "correct": False, "answer": "1"},
        {"step": 3, "prompt_id": 1, "correct": False, "answer": "2"},
    ]
    (entry,) = step_metrics(bare)
    assert entry["distinct_answers"] == 2 and entry["largest_answer_share"] == pytest.approx(0.5)
    for key in (
        "eigen_ratio",
        "novelty",
        "distinct_clusters",
        "largest_cluster_share",
        "ari",
        "nmi",
        "distinct_patterns",
    ):
        assert math.isnan(entry[key]), key
    with pytest.raises(ValueError, match="subset"):
        step_metrics(bare, subset="some")
    with pytest.raises(ValueError, match="min_wrong"):
        step_metrics(bare, min_wrong=0)
