"""Tests for `verl_meds.exploration`: each bonus formula of arXiv 2509.06941 on hand cases, the counts and their state,
gating, and the token mask that keeps the final answer out of the bonus."""

import math
import pickle

import numpy as np
import pytest
import torch

from verl_meds.answer import answer_key
from verl_meds.config import ExplorationConfig
from verl_meds.exploration import (
    NO_ANSWER,
    AnswerCounts,
    apply_bonus_to_advantages,
    batch_bonus,
    exploration_bonus,
    historical_bonus,
    ucb_bonus,
)

# ---------------------------------------------------------------------------------------------- ucb_bonus


def test_ucb_bonus_counts_zero_one_and_many():
    # min{1, sqrt(1 / N)}: never seen (N = 0) and seen once both give the cap 1; then 1 / sqrt(N).
    assert ucb_bonus(np.array([0, 1])).tolist() == [1.0, 1.0]
    assert ucb_bonus(np.array([4, 16, 100])).tolist() == [0.5, 0.25, 0.1]
    assert ucb_bonus(np.array([3]))[0] == pytest.approx(1 / math.sqrt(3))
    assert ucb_bonus(np.array([10**6]))[0] == pytest.approx(1e-3)
    assert ucb_bonus(np.array([], dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_ucb_bonus_refuses_bad_counts(bad):
    with pytest.raises(ValueError, match="counts must be finite and >= 0, got"):
        ucb_bonus(np.array([1.0, bad]))


# ---------------------------------------------------------------------------------------------- historical_bonus

COUNTS = np.array([0, 1, 4, 16])  # bonuses 1, 1, 0.5, 0.25


def test_historical_none_is_plain_ucb():
    assert historical_bonus(COUNTS, ["g"] * 4, "none").tolist() == [1.0, 1.0, 0.5, 0.25]


def test_historical_constant_subtracts_b0():
    # UCB-Con with b_0 = 0.5: an answer seen more than 4 times gets a negative bonus, 4 times exactly 0.
    assert historical_bonus(COUNTS, ["g"] * 4, "constant", 0.5).tolist() == [0.5, 0.5, 0.0, -0.25]
    # b_0 = 1 (the paper's easy dataset): only never-seen and once-seen answers escape a penalty.
    assert historical_bonus(COUNTS, ["g"] * 4, "constant", 1.0).tolist() == [0.0, 0.0, -0.5, -0.75]


def test_historical_mean_is_leave_one_out_within_each_group():
    # Group a: bonuses (1, 0.5, 0.25): each minus the mean of the other two.
    counts = np.array([0, 4, 16, 1, 1])
    out = historical_bonus(counts, ["a", "a", "a", "b", "b"], "mean")
    assert out[:3].tolist() == pytest.approx([1 - 0.375, 0.5 - 0.625, 0.25 - 0.75])
    assert out[3:].tolist() == [0.0, 0.0]  # equal bonuses: no relative novelty
    # A singleton group has no other row: 0.
    assert historical_bonus(np.array([16]), ["solo"], "mean").tolist() == [0.0]


def test_historical_refuses_unknown_baseline_and_bad_b0():
    with pytest.raises(ValueError, match=r"baseline must be one of \['none', 'mean', 'constant'\], got 'median'"):
        historical_bonus(COUNTS, ["g"] * 4, "median")
    with pytest.raises(ValueError, match="baseline_value must be a finite number >= 0, got -0.5"):
        historical_bonus(COUNTS, ["g"] * 4, "constant", -0.5)
    with pytest.raises(ValueError, match="group_ids must have length N=4, got 3"):
        historical_bonus(COUNTS, ["g"] * 3, "mean")


# ---------------------------------------------------------------------------------------------- batch_bonus


def test_batch_bonus_counts_other_equal_answers_over_group_size():
    keys = ["sym:1/2", "sym:1/2", "sym:1/2", "sym:3", NO_ANSWER, NO_ANSWER, "sym:7", "sym:7"]
    groups = ["a"] * 6 + ["b"] * 2
    out = batch_bonus(keys, groups)
    # Group a (G = 6): 1/2 has two others, 3 none, no-answer one other; group b (G = 2): 7 has one other.
    assert out.tolist() == pytest.approx([-2 / 6, -2 / 6, -2 / 6, 0.0, -1 / 6, -1 / 6, -1 / 2, -1 / 2])


def test_batch_bonus_all_same_and_all_distinct():
    assert batch_bonus(["x"] * 4, ["g"] * 4).tolist() == [-0.75] * 4  # the floor -(G - 1) / G
    assert batch_bonus(["a", "b", "c", "d"], ["g"] * 4).tolist() == [0.0] * 4


def test_batch_bonus_puts_equivalent_forms_in_one_bucket():
    forms = ["1/2", "0.5", r"\frac{1}{2}", r"\dfrac12", "3"]
    keys = [answer_key(form) for form in forms]
    assert len(set(keys[:4])) == 1 and keys[4] != keys[0]
    assert batch_bonus(keys, ["g"] * 5).tolist() == pytest.approx([-3 / 5] * 4 + [0.0])


def test_batch_bonus_refuses_non_str_keys():
    with pytest.raises(ValueError, match="answer keys must be str .* got NoneType None"):
        batch_bonus(["a", None], ["g", "g"])


# ---------------------------------------------------------------------------------------------- AnswerCounts


def test_counts_lookup_update_and_order_independence():
    counts = AnswerCounts()
    assert counts.lookup(["p", "q"], ["a", "a"]).tolist() == [0, 0]
    counts.update(["p", "p", "q", "p"], ["a", "b", "a", "a"])
    assert counts.lookup(["p", "p", "q", "q"], ["a", "b", "a", "b"]).tolist() == [2, 1, 1, 0]
    assert (counts.num_prompts, counts.num_answers) == (2, 3)
    other = AnswerCounts()
    other.update(["p", "q", "p", "p"], ["a", "a", "a", "b"])  # same rows, another order
    assert other.state_dict()["counts"]["p"] == counts.state_dict()["counts"]["p"]


def test_counts_state_round_trip_and_refusals():
    counts = AnswerCounts()
    counts.update(["p"] * 3 + ["17"], ["sym:1/2", "sym:1/2", NO_ANSWER, "sym:3"])
    state = pickle.loads(pickle.dumps(counts.state_dict()))
    restored = AnswerCounts()
    restored.load_state_dict(state)
    assert restored.state_dict() == counts.state_dict()
    assert restored.count("p", "sym:1/2") == 2 and restored.count("17", "sym:3") == 1
    for change, match in [
        ({"version": 99}, "state version 99 is not supported"),
        ({"answer_key_version": 0}, "answer keys of version 0"),
        ({"counts": {"p": {"a": 0}}}, "must be an integer >= 1, got 0"),
    ]:
        target = AnswerCounts()
        target.update(["x"], ["y"])
        with pytest.raises(ValueError, match=match):
            target.load_state_dict({**state, **change})
        assert target.count("x", "y") == 1  # untouched after a refusal


# ---------------------------------------------------------------------------------------------- exploration_bonus


def _config(**fields) -> ExplorationConfig:
    return ExplorationConfig(enable=True, **fields)


def test_historical_step_reads_counts_before_updating_them():
    counts = AnswerCounts()
    config = _config(method="historical", baseline="constant", baseline_value=0.5, bonus_coef=0.2)
    ids, groups, wrong = ["p"] * 4, ["u"] * 4, np.zeros(4, bool)
    keys = ["sym:1", "sym:1", "sym:2", "sym:3"]
    bonus, metrics = exploration_bonus(config, counts, ids, keys, groups, wrong)
    assert bonus.tolist() == pytest.approx([0.2 * 0.5] * 4)  # all new (N = 0): c * (1 - 0.5)
    assert metrics["explore/new_answer_frac"] == 1.0 and metrics["explore/distinct_answers"] == 3.0
    assert metrics["explore/counts/num_answers"] == 3.0 and metrics["explore/counts/num_prompts"] == 1.0
    # Next step: "sym:1" has N = 2, "sym:2" N = 1, "sym:9" N = 0.
    bonus, metrics = exploration_bonus(config, counts, ["p"] * 3, ["sym:1", "sym:2", "sym:9"], ["v"] * 3, wrong[:3])
    assert bonus.tolist() == pytest.approx([0.2 * (1 / math.sqrt(2) - 0.5), 0.2 * 0.5, 0.2 * 0.5])
    assert metrics["explore/new_answer_frac"] == pytest.approx(1 / 3)
    assert counts.count("p", "sym:1") == 3


def test_count_current_step_includes_this_steps_answers():
    counts = AnswerCounts()
    config = _config(method="historical", baseline="none", bonus_coef=1.0, count_current_step=True)
    bonus, _ = exploration_bonus(config, counts, ["p"] * 4, ["a", "a", "a", "a"], ["u"] * 4, np.zeros(4, bool))
    assert bonus.tolist() == pytest.approx([0.5] * 4)  # N = 4 including themselves


def test_all_correct_groups_are_gated_and_batch_keeps_no_counts():
    counts = AnswerCounts()
    config = _config(method="batch", bonus_coef=0.2)
    correct = np.array([True, True, True, False])
    bonus, metrics = exploration_bonus(config, counts, ["p"] * 4, ["a", "a", "a", "a"], ["u", "u", "v", "v"], correct)
    # Group u is all correct: 0. Group v (G = 2): one other equal answer -> c * -1/2.
    assert bonus.tolist() == pytest.approx([0.0, 0.0, -0.1, -0.1])
    assert metrics["explore/active_frac"] == 0.5 and metrics["explore/bonus_min"] == pytest.approx(-0.1)
    assert counts.num_answers == 0 and "explore/counts/num_answers" not in metrics
    config = _config(method="batch", bonus_coef=0.2, skip_all_correct=False)
    bonus, _ = exploration_bonus(config, counts, ["p"] * 4, ["a", "a", "a", "a"], ["u", "u", "v", "v"], correct)
    assert bonus.tolist() == pytest.approx([-0.1] * 4)


def test_no_answer_is_one_outcome():
    config = _config(method="batch", bonus_coef=1.0)
    bonus, metrics = exploration_bonus(
        config, AnswerCounts(), ["p"] * 3, [NO_ANSWER, NO_ANSWER, "sym:1"], ["u"] * 3, np.zeros(3, bool)
    )
    assert bonus.tolist() == pytest.approx([-1 / 3, -1 / 3, 0.0])
    assert metrics["explore/no_answer_frac"] == pytest.approx(2 / 3)


def test_exploration_bonus_validates_lengths():
    with pytest.raises(ValueError, match="must have length N=2"):
        exploration_bonus(_config(), AnswerCounts(), ["p"], ["a", "b"], ["u", "u"], np.zeros(2, bool))


def test_config_validation_names_field_and_value():
    for fields, match in [
        ({"method": "ucb"}, r"ExplorationConfig\.method must be one of \['historical', 'batch'\], got 'ucb'"),
        ({"baseline": "median"}, r"ExplorationConfig\.baseline must be one of"),
        ({"bonus_coef": -1.0}, r"ExplorationConfig\.bonus_coef must be a finite number >= 0.0, got -1.0"),
        ({"baseline_value": float("nan")}, r"ExplorationConfig\.baseline_value"),
        ({"mask_answer_tokens": 1}, r"ExplorationConfig\.mask_answer_tokens must be a bool"),
        ({"prompt_key": ""}, r"ExplorationConfig\.prompt_key must be a non-empty string"),
    ]:
        with pytest.raises(ValueError, match=match):
            ExplorationConfig(**fields)
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['c'\] in ExplorationConfig"):
        ExplorationConfig.from_dict({"c": 0.2})
    assert ExplorationConfig.from_dict(None) == ExplorationConfig()
    defaults = ExplorationConfig()
    assert (defaults.bonus_coef, defaults.baseline, defaults.baseline_value) == (0.2, "constant", 0.5)


# ---------------------------------------------------------------------------------------------- token mask


def test_bonus_goes_on_tokens_before_the_answer_only():
    advantages = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0], [-1.0, -1.0, -1.0, 0.0, 0.0]])  # (N, T)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    out = apply_bonus_to_advantages(advantages, mask, torch.tensor([0.5, -0.25]), torch.tensor([2, -1]))
    # Row 0: answer starts at token 2, so tokens 2 and 3 keep their advantage; padding stays 0.
    assert out[0].tolist() == [1.5, 1.5, 1.0, 1.0, 0.0]
    # Row 1 has no located answer: every response token gets the bonus.
    assert out[1].tolist() == [-1.25, -1.25, -1.25, 0.0, 0.0]
    everywhere = apply_bonus_to_advantages(advantages, mask, torch.tensor([0.5, -0.25]))
    assert everywhere[0].tolist() == [1.5, 1.5, 1.5, 1.5, 0.0]


def test_apply_bonus_validates_shapes():
    with pytest.raises(ValueError, match=r"bonus must have shape \(2,\), got \(3,\)"):
        apply_bonus_to_advantages(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="bonus must be finite"):
        apply_bonus_to_advantages(torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([float("nan")]))
