"""`verl_meds.analysis.cluster_scale`: distances by kind of pair, and agreement of the memory's clusters."""

import numpy as np
import pytest

from verl_meds.analysis.cluster_scale import (
    agreement,
    distance_table,
    format_report,
    load_problems,
    single_digit_mode_label,
    threshold_table,
)
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


def test_threshold_table_counts_pairs_on_each_side():
    table = threshold_table(records(np.random.default_rng(2)), thresholds=(1e-3, 2.0))
    assert table["0.001"] == {"p_same": 1.0, "different_within": 0.0, "same_beyond": 0.0}
    assert table["2.0"]["different_within"] == 1.0 and 0.0 < table["2.0"]["p_same"] < 1.0


def test_pairwise_scores_and_repeats_turned_noise():
    rows = records(np.random.default_rng(3))
    scores = agreement(rows, ClusterConfig())
    assert scores["pair_precision"] == scores["pair_recall"] == scores["pair_f1"] == 1.0
    assert scores["repeat_noise_frac"] == 0.0
    tight = agreement(rows, ClusterConfig(merge_distance=1e-7, max_distance=1e-6))  # spread 1e-5: all noise
    assert tight["noise_frac"] == 1.0 and tight["repeat_noise_frac"] == 1.0
    assert tight["mean_cluster_size"] == 0.0 and np.isnan(tight["pair_precision"]) and tight["pair_recall"] == 0.0


def test_distance_table_splits_different_answers_by_answer_token():
    rows = records(np.random.default_rng(4))
    for row in rows:
        row["answer_token"] = None if row["correct"] else 5
    table = distance_table(rows)
    assert table["different_answer_same_token"]["count"] == table["different_answer"]["count"]
    assert table["different_answer_other_token"]["count"] == 0


def test_single_digit_mode_labels_and_problems():
    from data_prep.smollm2 import SingleDigitProblem

    plus = SingleDigitProblem(3, "+", 4)
    labels = [single_digit_mode_label(plus, a) for a in (None, "12", "7", "4", "8", "20")]
    assert labels == ["no_answer", "other_op", "example_answer", "operand", "off_by_one", "other"]
    problems = load_problems("single_digit", 5)
    assert len(problems) == 5 and all(isinstance(p, SingleDigitProblem) for p in problems)
    assert load_problems("single_digit", 3) == problems[:3]
    with pytest.raises(ValueError, match="task"):
        load_problems("gsm8k", 1)


def test_report_renders_every_table():
    rows = records(np.random.default_rng(5))
    report = {
        "distances": distance_table(rows),
        "thresholds": threshold_table(rows),
        "agreement": {"default": agreement(rows, ClusterConfig())},
    }
    text = format_report(report)
    assert "| same_answer |" in text and "| default |" in text and "| 0.005 |" in text
