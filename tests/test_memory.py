"""Tests for `verl_meds.memory.ErrorMemory`: cluster sizes over steps, outcomes, invalid rows, FIFO, checkpoints."""

import logging
import math
import pickle

import numpy as np
import pytest
import torch

from verl_meds.config import MEDSConfig
from verl_meds.memory import ErrorMemory
from verl_meds.shaping import penalty_from_cluster_sizes

F = 3
WRONG = np.zeros(5, dtype=bool)
ALL_VALID = np.ones(5, dtype=bool)


def _memory(**sections) -> ErrorMemory:
    return ErrorMemory(MEDSConfig.from_dict(sections))


def _same(vector, count: int) -> np.ndarray:
    return np.tile(np.asarray(vector, dtype=np.float32)[None, :], (count, 1))  # (count, F)


def test_five_identical_wrong_answers_form_one_cluster_and_are_penalised():
    memory = _memory()
    sizes, metrics = memory.step(["p"] * 5, _same([1.0, 2.0, 3.0], 5), ALL_VALID, WRONG)
    assert sizes.dtype == np.int64 and sizes.tolist() == [4, 4, 4, 4, 4]
    penalties = penalty_from_cluster_sizes(torch.from_numpy(sizes), alpha=0.1, beta=0.2)
    assert torch.allclose(penalties, torch.full((5,), min(0.1 * math.log(5), 0.2)))
    assert penalties[0].item() == pytest.approx(0.1609, abs=1e-4)
    assert metrics["meds/memory/num_entries"] == 5.0
    assert metrics["meds/memory/num_prompts"] == 1.0
    assert metrics["meds/cluster_size/mean"] == 4.0 and metrics["meds/cluster_size/max"] == 4.0
    assert metrics["meds/clusters/per_prompt_mean"] == 1.0
    assert metrics["meds/clusters/largest_wrong_share_mean"] == 1.0
    assert metrics["meds/features/missing_frac"] == 0.0


def test_repeat_grows_and_lone_novel_error_gets_nothing():
    memory = _memory()
    memory.step(["p"] * 5, _same([1.0, 2.0, 3.0], 5), ALL_VALID, WRONG)
    features = np.array([[1.0, 2.0, 3.0], [-40.0, 7.0, 0.5]], dtype=np.float32)
    sizes, metrics = memory.step(["p", "p"], features, np.ones(2, bool), np.zeros(2, bool))
    assert sizes.tolist() == [5, 0]  # 5 stored repeats; the novel error is noise
    assert metrics["meds/clusters/largest_wrong_share_mean"] == pytest.approx(6 / 7)
    # Another prompt never sees prompt "p"'s errors.
    sizes, _ = memory.step(["q"], _same([1.0, 2.0, 3.0], 1), np.ones(1, bool), np.zeros(1, bool))
    assert sizes.tolist() == [0]
    assert len(memory) == memory.num_entries == 8 and memory.num_prompts == 2


def test_right_answers_only_tracked_when_targeted():
    correct = np.array([True, True, True, False, False])
    features = _same([1.0, 0.0, 0.0], 5)
    memory = _memory()
    sizes, _ = memory.step(["p"] * 5, features, ALL_VALID, correct)
    assert sizes.tolist() == [0, 0, 0, 1, 1]  # right answers are neither assigned nor stored
    assert memory.entries("p", "right").shape == (0, F) and memory.entries("p", "wrong").shape == (2, F)

    memory = _memory(shaping={"penalty_target": "both"})
    sizes, _ = memory.step(["p"] * 5, features, ALL_VALID, correct)
    assert sizes.tolist() == [2, 2, 2, 1, 1]  # right and wrong answers are clustered separately
    assert memory.entries("p", "right").shape == (3, F)

    memory = _memory(shaping={"penalty_target": "none"})
    sizes, metrics = memory.step(["p"] * 5, features, ALL_VALID, correct)
    assert sizes.tolist() == [0] * 5 and len(memory) == 0
    assert metrics["meds/cluster_size/mean"] == 0.0 and metrics["meds/memory/num_prompts"] == 0.0


def test_invalid_and_non_finite_rows_get_zero_are_not_stored_and_are_counted():
    memory = _memory()
    features = _same([1.0, 2.0, 3.0], 5)
    features[1, 0] = np.nan
    features[2, 2] = np.inf
    valid = np.array([True, True, True, False, True])
    sizes, metrics = memory.step(["p"] * 5, features, valid, WRONG)
    assert sizes.tolist() == [1, 0, 0, 0, 1]
    assert memory.entries("p").shape == (2, F)
    assert metrics["meds/features/missing_frac"] == pytest.approx(3 / 5)


def test_capacity_is_fifo_and_truncation_warns_once(caplog):
    memory = _memory(memory={"capacity": 3})
    with caplog.at_level(logging.WARNING, logger="verl_meds.memory"):
        for step in range(5):
            features = np.array([[float(step), 1.0, 1.0]], dtype=np.float32)
            _, metrics = memory.step(["p"], features, np.ones(1, bool), np.zeros(1, bool))
    assert memory.entries("p")[:, 0].tolist() == [2.0, 3.0, 4.0]  # the oldest two were dropped
    assert memory.labels("p").shape == (3,)
    assert metrics["meds/memory/truncated_prompts"] == 1.0 and metrics["meds/memory/num_entries"] == 3.0
    assert sum("capacity=3" in record.getMessage() for record in caplog.records) == 1


def test_knn_assignment_through_memory():
    memory = _memory(clustering={"assignment": "knn"})
    sizes, _ = memory.step(["p"] * 3, _same([1.0, 0.0, 0.0], 3), np.ones(3, bool), np.zeros(3, bool))
    assert sizes.tolist() == [0, 0, 0]  # nothing stored before: k-NN against an empty history
    assert memory.labels("p").tolist() == [0, 0, 0]  # refitted with the new points for the next step
    sizes, _ = memory.step(["p"], _same([1.0, 0.001, 0.0], 1), np.ones(1, bool), np.zeros(1, bool))
    assert sizes.tolist() == [3]


def test_single_cluster_method_counts_all_other_errors():
    memory = _memory(clustering={"method": "single"})
    features = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]], dtype=np.float32)
    sizes, _ = memory.step(["p"] * 3, features, np.ones(3, bool), np.zeros(3, bool))
    assert sizes.tolist() == [2, 2, 2]
    sizes, _ = memory.step(["p"], features[:1] * -1, np.ones(1, bool), np.zeros(1, bool))
    assert sizes.tolist() == [3]


def test_step_validates_shapes_and_ids():
    memory = _memory()
    memory.step(["p"], _same([1.0, 2.0, 3.0], 1), np.ones(1, bool), np.zeros(1, bool))
    with pytest.raises(ValueError, match="F=4 but the memory stores F=3"):
        memory.step(["p"], np.ones((1, 4), np.float32), np.ones(1, bool), np.zeros(1, bool))
    with pytest.raises(ValueError, match=r"shape \(N, F\) with N=2"):
        memory.step(["p", "q"], np.ones((1, 3), np.float32), np.ones(2, bool), np.zeros(2, bool))
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        memory.step(["p"], np.ones((1, 3), np.float32), np.ones(2, bool), np.zeros(1, bool))
    with pytest.raises(ValueError, match="prompt ids must be str or int"):
        memory.step([1.5], np.ones((1, 3), np.float32), np.ones(1, bool), np.zeros(1, bool))
    # numpy integer ids are the same key as python ints.
    memory.step(np.array([7, 7]), _same([0.0, 1.0, 0.0], 2), np.ones(2, bool), np.zeros(2, bool))
    assert memory.entries(7).shape == (2, F)


def _filled_memory(**sections) -> ErrorMemory:
    memory = _memory(memory={"capacity": 4}, **sections)
    rng = np.random.default_rng(0)
    for _ in range(3):
        ids = ["a", "a", "b", 3, 3, "a"]
        features = rng.normal(size=(6, F)).astype(np.float32)
        features[:2] = features[0]
        correct = np.array([False, False, True, False, False, True])
        memory.step(ids, features, np.ones(6, bool), correct)
    return memory


def _assert_states_equal(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        if key != "buffers":
            assert left[key] == right[key], key
    assert len(left["buffers"]) == len(right["buffers"])
    for a, b in zip(left["buffers"], right["buffers"], strict=True):
        assert (a["prompt_id"], a["outcome"]) == (b["prompt_id"], b["outcome"])
        for name in ("features", "labels"):
            assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes()


@pytest.mark.parametrize("assignment", ["joint", "knn"])
def test_state_dict_round_trip_is_exact(assignment):
    memory = _filled_memory(clustering={"assignment": assignment}, shaping={"penalty_target": "both"})
    state = memory.state_dict()
    assert state["version"] == 1 and state["num_features"] == F
    assert [(b["prompt_id"], b["outcome"]) for b in state["buffers"]] == [
        ("a", "wrong"),
        (3, "wrong"),
        ("b", "right"),
        ("a", "right"),
    ]
    assert state["truncated_prompt_ids"] == ["a", 3]
    restored = ErrorMemory(memory.config)
    restored.load_state_dict(state)
    _assert_states_equal(restored.state_dict(), state)
    unpickled = pickle.loads(pickle.dumps(memory))
    _assert_states_equal(unpickled.state_dict(), state)
    # The restored memory behaves exactly like the original.
    features = np.random.default_rng(1).normal(size=(4, F)).astype(np.float32)
    args = (["a", "a", 3, "new"], features, np.ones(4, bool), np.zeros(4, bool))
    sizes, metrics = memory.step(*args)
    sizes_restored, metrics_restored = restored.step(*args)
    assert sizes.tolist() == sizes_restored.tolist() and metrics == metrics_restored
    # The snapshot is a copy: later steps do not change it.
    assert state["buffers"][0]["features"].tobytes() != memory.state_dict()["buffers"][0]["features"].tobytes()


def test_load_refuses_other_fingerprint_and_leaves_memory_untouched():
    state = _filled_memory().state_dict()
    other = ErrorMemory(MEDSConfig.from_dict({"features": {"layers": "all"}}))
    with pytest.raises(ValueError, match=r"fingerprint \{'layers': 'last_half'.*current config has \{'layers': 'all'"):
        other.load_state_dict(state)
    assert len(other) == 0
    with pytest.raises(ValueError, match="version 99 is not supported"):
        ErrorMemory(MEDSConfig()).load_state_dict({**state, "version": 99})


def test_load_into_smaller_capacity_keeps_newest():
    memory = _filled_memory()
    state = memory.state_dict()
    small = _memory(memory={"capacity": 2})
    small.load_state_dict(state)
    assert np.array_equal(small.entries("a"), memory.entries("a")[-2:])
    assert small.num_entries == 4
