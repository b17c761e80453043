"""Tests for the answer-keyed `ErrorMemory` (`clustering.method="answer"`): |C| counts equal answers of a prompt, with
the same penalty, FIFO capacity, metrics and checkpoints as the feature path."""

import math
import pickle

import numpy as np
import pytest
import torch

from verl_meds.answer import ANSWER_KEY_VERSION, answer_key
from verl_meds.clustering import fit_labels
from verl_meds.config import ClusterConfig, MEDSConfig
from verl_meds.memory import ErrorMemory
from verl_meds.shaping import penalty_from_cluster_sizes


def _memory(**sections) -> ErrorMemory:
    clustering = {"method": "answer", **sections.pop("clustering", {})}
    return ErrorMemory(MEDSConfig.from_dict({"clustering": clustering, **sections}))


def _step(memory, ids, keys, correct=None, valid=None):
    n = len(keys)
    valid = np.ones(n, bool) if valid is None else np.asarray(valid)
    correct = np.zeros(n, bool) if correct is None else np.asarray(correct)
    return memory.step(ids, None, valid, correct, answer_keys=keys)


def test_cluster_size_counts_zero_one_and_many():
    memory = _memory()
    sizes, metrics = _step(memory, ["p"] * 5, ["a", "b", "b", "c", "c"])
    assert sizes.tolist() == [0, 1, 1, 1, 1]  # joint: other equal answers of this step
    assert metrics["meds/clusters/per_prompt_mean"] == 3.0
    assert metrics["meds/clusters/largest_wrong_share_mean"] == pytest.approx(2 / 5)
    sizes, metrics = _step(memory, ["p"] * 4, ["c", "c", "c", "d"])
    assert sizes.tolist() == [4, 4, 4, 0]  # 2 stored + 2 other new
    assert metrics["meds/memory/num_entries"] == 9.0 and metrics["meds/cluster_size/max"] == 4.0
    penalties = penalty_from_cluster_sizes(torch.from_numpy(sizes), alpha=0.1, beta=0.2)
    assert penalties.tolist() == pytest.approx([min(0.1 * math.log(5), 0.2)] * 3 + [0.0])
    # Many repeats: the cap beta.
    sizes, _ = _step(memory, ["p"] * 8, ["c"] * 8)
    assert sizes.tolist() == [12] * 8
    assert penalty_from_cluster_sizes(torch.from_numpy(sizes), 0.1, 0.2).tolist() == pytest.approx([0.2] * 8)


def test_equivalent_forms_fall_in_one_cluster():
    memory = _memory()
    forms = ["1/2", "0.5", r"\frac{1}{2}", r"\dfrac12", "3"]
    sizes, _ = _step(memory, ["p"] * 5, [answer_key(f) for f in forms])
    assert sizes.tolist() == [3, 3, 3, 3, 0]
    assert memory.labels("p").tolist() == [0, 0, 0, 0, 1]


def test_knn_assignment_counts_the_history_only():
    memory = _memory(clustering={"assignment": "knn"})
    assert _step(memory, ["p"] * 3, ["a", "a", "b"])[0].tolist() == [0, 0, 0]
    assert _step(memory, ["p"] * 3, ["a", "a", "c"])[0].tolist() == [2, 2, 0]


def test_prompts_outcomes_and_missing_answers_are_kept_apart():
    memory = _memory()
    ids = ["p", "p", "q", "q", "p", "p"]
    keys = ["a", "a", "a", None, "a", "a"]
    correct = [False, False, False, False, True, True]
    sizes, metrics = _step(memory, ids, keys, correct=correct)
    # Right answers are not tracked (penalty_target wrong); q's "a" is alone; the None row is missing.
    assert sizes.tolist() == [1, 1, 0, 0, 0, 0]
    assert metrics["meds/features/missing_frac"] == pytest.approx(1 / 6)
    assert memory.answer_keys("p") == ["a", "a"] and memory.answer_keys("p", "right") == []
    both = _memory(shaping={"penalty_target": "both"})
    assert _step(both, ids, keys, correct=correct)[0].tolist() == [1, 1, 0, 0, 1, 1]
    # `valid=False` also excludes a row with a key.
    assert _step(_memory(), ["p", "p"], ["a", "a"], valid=[True, False])[0].tolist() == [0, 0]


def test_capacity_is_fifo():
    memory = _memory(memory={"capacity": 3})
    _step(memory, ["p"] * 3, ["a", "a", "b"])
    sizes, metrics = _step(memory, ["p"] * 2, ["a", "c"])
    assert sizes.tolist() == [2, 0]  # counted against the full history before the cut
    assert memory.answer_keys("p") == ["b", "a", "c"]
    assert metrics["meds/memory/truncated_prompts"] == 1.0


def test_state_dict_round_trip_and_fingerprint():
    memory = _memory(memory={"capacity": 5})
    for step_keys in (["a", "b", "a"], ["c", "a", None], ["b", "b", "b"]):
        _step(memory, ["p", "p", 7], step_keys)
    state = pickle.loads(pickle.dumps(memory.state_dict()))
    assert state["fingerprint"] == {"memory_keys": "answer"} and state["num_features"] is None
    assert "features" not in state["buffers"][0] and state["answer_key_version"] == ANSWER_KEY_VERSION
    restored = _memory(memory={"capacity": 5})
    restored.load_state_dict(state)
    for a, b in zip(restored.state_dict()["buffers"], memory.state_dict()["buffers"], strict=True):
        assert (a["prompt_id"], a["outcome"], a["answer_keys"]) == (b["prompt_id"], b["outcome"], b["answer_keys"])
        assert np.array_equal(a["labels"], b["labels"]) and a["labels"].dtype == np.int64
    assert restored.num_entries == memory.num_entries and restored.num_prompts == 2
    # The same next step gives the same sizes on both.
    nxt = (["p", "p", 7], ["a", "b", "b"])
    assert _step(restored, *nxt)[0].tolist() == _step(memory, *nxt)[0].tolist()


def test_feature_and_answer_memories_refuse_each_others_state():
    keyed = _memory()
    _step(keyed, ["p"], ["a"])
    features = ErrorMemory(MEDSConfig())
    features.step(["p"], np.ones((1, 3), np.float32), np.ones(1, bool), np.zeros(1, bool))
    with pytest.raises(ValueError, match="fingerprint"):
        features.load_state_dict(keyed.state_dict())
    with pytest.raises(ValueError, match="fingerprint"):
        keyed.load_state_dict(features.state_dict())
    old_keys = {**keyed.state_dict(), "answer_key_version": 0}
    with pytest.raises(ValueError, match="answer keys of version 0"):
        _memory().load_state_dict(old_keys)


def test_step_validates_answer_keys():
    with pytest.raises(ValueError, match="needs answer_keys"):
        _memory().step(["p"], None, np.ones(1, bool), np.zeros(1, bool))
    with pytest.raises(ValueError, match="answer_keys must have length N=2, got 1"):
        _memory().step(["p", "p"], None, np.ones(2, bool), np.zeros(2, bool), answer_keys=["a"])
    with pytest.raises(ValueError, match="answer_keys must hold str or None, got int 3"):
        _step(_memory(), ["p"], [3])
    with pytest.raises(ValueError, match="answer_keys are only used with clustering.method='answer'"):
        ErrorMemory(MEDSConfig()).step(
            ["p"], np.ones((1, 2), np.float32), np.ones(1, bool), np.zeros(1, bool), answer_keys=["a"]
        )


def test_fit_labels_refuses_the_answer_method():
    with pytest.raises(ValueError, match="method='answer' groups responses by answer key"):
        fit_labels(np.zeros((3, 2)), ClusterConfig(method="answer"))
