"""`verl_meds.analysis.cluster_scale`: distances by kind of pair, and agreement of the memory's clusters."""

import numpy as np
import pytest

from verl_meds.analysis.cluster_scale import agreement, distance_table
from verl_meds.config import ClusterConfig


def records(rng: np.random.Generator) -> list[dict]:
    """Two steps, two prompts; wrong answers "7" and "9" with features near one of two directions each."""
    directions = {"7": np.array([1.0, 0.0, 0.0]), "9": np.array([0.0, 1.0, 0.0])}
    out = []
    for step in range(2):
        for prompt in ("p0", "p1"):
            for sample, answer in enumerate(["7", "7", "9", "9", "7", None]):
                correct = answer is None
                features = [] if correct else (directions[answer] + 1e-5 * rng.normal(size=3)).tolist()
                label = None if correct else ("wrong_order" if answer == "7" else "other")
                out.append(
                    {
                        "step": step,
                        "prompt_id": prompt,
                        "sample_index": sample,
                        "correct": correct,
                        "answer": answer,
                        "label": label,
                        "features": features,
                    }
                )
    return out


def test_distance_table_splits_pairs_by_answer_and_mode():
    table = distance_table(records(np.random.default_rng(0)))
    assert table["same_answer"]["q99"] < 1e-3 < table["different_answer"]["q01"]
    assert table["different_answer"]["mean"] == pytest.approx(np.sqrt(2.0), abs=1e-3)
    assert table["same_mode"]["count"] > 0 and table["different_mode"]["count"] == 0  # "other" is not a named mode
    assert table["nearest_same_answer"]["count"] == table["nearest_different_answer"]["count"]


def test_agreement_of_separated_answers():
    scores = agreement(records(np.random.default_rng(1)), ClusterConfig())
    assert scores["nmi_answer"] == pytest.approx(1.0) and scores["noise_frac"] == 0.0
    assert scores["mean_cluster_size"] > 0
