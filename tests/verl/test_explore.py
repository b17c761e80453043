"""Tests for the verl glue of outcome-based exploration (`verl_meds.verl.explore`) and for the answer-counts file
inside verl checkpoints (`verl_meds.verl.checkpoint`)."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402

from verl_meds.config import ExplorationConfig, MEDSConfig  # noqa: E402
from verl_meds.exploration import NO_ANSWER, AnswerCounts  # noqa: E402
from verl_meds.memory import ErrorMemory  # noqa: E402
from verl_meds.verl.checkpoint import (  # noqa: E402
    COUNTS_FORMAT,
    counts_path,
    load_state,
    memory_path,
    read_state,
    save_memory,
    save_state,
    state_digest,
)
from verl_meds.verl.explore import (  # noqa: E402
    exploration_config_from_trainer_config,
    explore_advantages,
    response_answer_keys,
)

pytestmark = pytest.mark.requires_verl


class CharTokenizer:
    """One token per character (id = code point)."""

    def decode(self, token_ids):
        return "".join(chr(int(t)) for t in token_ids)


def _batch(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(t) for t in texts)
    ids = torch.zeros(len(texts), width, dtype=torch.long)  # (N, T)
    mask = torch.zeros(len(texts), width, dtype=torch.long)
    for row, text in enumerate(texts):
        ids[row, : len(text)] = torch.tensor([ord(c) for c in text])
        mask[row, : len(text)] = 1
    return ids, mask


def test_response_answer_keys_bucket_equivalent_forms():
    texts = [r"so \boxed{0.5}", r"hence \boxed{\frac{1}{2}}", r"\boxed{1/2} done", r"\boxed{3}", "no box", r"\boxed{4"]
    keys, metrics = response_answer_keys(texts)
    assert keys[0] == keys[1] == keys[2] == "sym:1/2"
    assert keys[3] == "sym:3" and keys[4] is None and keys[5] is None  # unclosed box: no answer
    assert metrics == {"answer_key/timeouts": 0.0, "answer_key/errors": 0.0, "answer_key/from_reward": 0.0}


def test_response_answer_keys_count_what_hit_the_time_bound(monkeypatch):
    monkeypatch.setenv("VERL_MEDS_GRADING_TIMEOUT", "1.0")
    keys, metrics = response_answer_keys([r"so \boxed{10^{10^{10}}}", r"\boxed{2}"])
    assert keys == [None, "sym:2"]
    assert metrics["answer_key/timeouts"] == 1.0


def test_explore_advantages_batch_masks_the_answer_tokens():
    texts = [r"ab\boxed{1/2}", r"cd\boxed{0.5}", r"ef\boxed{7}", "no answer"]
    responses, mask = _batch(texts)
    advantages = torch.ones(responses.shape) * mask  # (N, T)
    config = ExplorationConfig(enable=True, method="batch", bonus_coef=0.2)
    shaped, metrics = explore_advantages(
        config, AnswerCounts(), CharTokenizer(), ["p"] * 4, ["u"] * 4, responses, mask, advantages, np.zeros(4, bool)
    )
    # G = 4: the two halves share one answer -> c * -1/4 = -0.05; "7" and the unanswered one are alone -> 0.
    start = texts[0].index("{") + 1  # first answer token
    assert shaped[0, :start].tolist() == pytest.approx([0.95] * start)
    assert shaped[0, start:].tolist() == pytest.approx([1.0] * (len(texts[0]) - start))  # answer tokens untouched
    assert shaped[2].tolist() == pytest.approx(advantages[2].tolist())
    assert shaped[3, len(texts[3]) :].abs().sum() == 0  # padding stays 0
    assert metrics["explore/distinct_answers"] == 3.0 and metrics["explore/no_answer_frac"] == 0.25


def test_explore_advantages_historical_updates_counts_over_steps():
    counts = AnswerCounts()
    config = ExplorationConfig(enable=True, method="historical", bonus_coef=0.2, mask_answer_tokens=False)
    responses, mask = _batch([r"\boxed{2}", r"\boxed{2.0}", "x"])
    zeros = torch.zeros(responses.shape)
    # Step 1: "2" has N = 2 (both forms), the unanswered row N = 1 (bonus still the cap 1).
    for step, expected in enumerate([[0.1, 0.1, 0.1], [0.2 * (2**-0.5 - 0.5)] * 2 + [0.1]]):
        shaped, _ = explore_advantages(
            config, counts, CharTokenizer(), ["p"] * 3, [f"u{step}"] * 3, responses, mask, zeros, np.zeros(3, bool)
        )
        assert shaped[:, 0].tolist() == pytest.approx(expected)
    assert counts.count("p", "sym:2") == 4 and counts.count("p", NO_ANSWER) == 2


def test_block_is_read_from_the_trainer_config():
    config = OmegaConf.create({"exploration": {"enable": True, "method": "batch"}})
    assert exploration_config_from_trainer_config(config) == ExplorationConfig(enable=True, method="batch")
    assert exploration_config_from_trainer_config(OmegaConf.create({})) == ExplorationConfig()
    with pytest.raises(ValueError, match="Unknown config key"):
        exploration_config_from_trainer_config(OmegaConf.create({"exploration": {"coef": 1}}))


def test_counts_file_round_trips_exactly_and_is_not_a_memory(tmp_path):
    counts = AnswerCounts()
    counts.update(["p", "p", "q"], ["sym:1/2", "sym:1/2", NO_ANSWER])
    path = counts_path(str(tmp_path / "global_step_2"))
    assert path.endswith(os.path.join("global_step_2", "explore_counts.pkl"))
    save_state(counts, path, 2, COUNTS_FORMAT)
    restored = AnswerCounts()
    digest = load_state(restored, path, COUNTS_FORMAT)
    assert restored.state_dict() == counts.state_dict() and digest == state_digest(counts)
    assert read_state(path, COUNTS_FORMAT)["counts"] == {"p": {"sym:1/2": 2}, "q": {NO_ANSWER: 1}}
    # A memory file is not a counts file, and the other way round.
    mem = memory_path(str(tmp_path))
    save_memory(ErrorMemory(MEDSConfig()), mem, 2)
    with pytest.raises(ValueError, match="not a verl_meds answer-counts file"):
        load_state(AnswerCounts(), mem, COUNTS_FORMAT)
    with pytest.raises(ValueError, match="not a verl_meds memory file"):
        read_state(path)
    with pytest.raises(ValueError, match="fmt must be one of"):
        save_state(counts, path, 2, "pickle")


class _NoDecode:
    def decode(self, token_ids):
        raise AssertionError("the keys were in the reward info; nothing should be decoded")


def test_keys_from_the_reward_info_skip_decoding():
    from verl_meds.verl.explore import batch_answer_keys, keys_from_reward_info

    infos = [
        {"reward_extra_info": {"answer_key": "sym:1/2", "answer_key_timeout": 0.0, "answer_key_error": 0.0}},
        {"reward_extra_info": {"answer_key": "", "answer_key_timeout": 1.0, "answer_key_error": 0.0}},
        {"reward_extra_info": {"answer_key": "sym:3", "answer_key_timeout": 0.0, "answer_key_error": 0.0}},
    ]
    responses, mask = torch.zeros(3, 4, dtype=torch.long), torch.ones(3, 4)
    keys, metrics = batch_answer_keys(_NoDecode(), responses, mask, infos)
    assert keys == ["sym:1/2", None, "sym:3"]
    assert metrics == {"answer_key/timeouts": 1.0, "answer_key/errors": 0.0, "answer_key/from_reward": 1.0}
    # A row without a key (another reward function): the keys are computed from the decoded responses instead.
    assert keys_from_reward_info([*infos[:2], {"reward_extra_info": {"acc": 1.0}}]) is None
    assert keys_from_reward_info(None) is None and keys_from_reward_info([]) is None


def test_keys_fall_back_to_decoding_without_reward_keys():
    from verl_meds.verl.explore import batch_answer_keys

    texts = [r"ab\boxed{1/2}", r"cd\boxed{0.5}", "none"]
    responses, mask = _batch(texts)
    keys, _ = batch_answer_keys(CharTokenizer(), responses, mask, [{"reward_extra_info": {"acc": 0.0}}] * 3)
    assert keys == ["sym:1/2", "sym:1/2", None]


@pytest.mark.parametrize("method", ["batch", "historical"])
@pytest.mark.parametrize("mask_answer_tokens", [True, False])
def test_reward_records_and_keys_give_the_same_advantages_without_the_responses(method, mask_answer_tokens):
    """With the reward workers' answer records and keys, nothing is decoded or located here, and the advantages
    equal those computed from the responses."""
    from verl_meds.answer import extract_boxed
    from verl_meds.grading import answer_keys
    from verl_meds.step import ANSWER_RECORD_KEY, answer_record, read_answer_records

    rng = np.random.default_rng(0)
    answers = [r"\boxed{1/2}", r"\boxed{0.5}", r"\boxed{7}", "no answer", r"\fbox {3}"]
    texts = [f"{'x' * int(rng.integers(0, 6))} so {answers[int(rng.integers(0, 5))]}." for _ in range(12)]
    responses, mask = _batch(texts)
    advantages = torch.from_numpy(rng.normal(size=responses.shape)).float() * mask  # (N, T)
    config = ExplorationConfig(enable=True, method=method, bonus_coef=0.2, mask_answer_tokens=mask_answer_tokens)
    prompts, groups = [f"p{i % 3}" for i in range(12)], [f"u{i % 3}" for i in range(12)]
    correct = rng.random(12) < 0.3
    keys, _ = answer_keys([extract_boxed(t) for t in texts])
    infos = [
        {
            "reward_extra_info": {
                "answer_key": k or "",
                "answer_key_timeout": 0.0,
                "answer_key_error": 0.0,
                ANSWER_RECORD_KEY: answer_record(r[m.bool()], CharTokenizer()),
            }
        }
        for k, r, m in zip(keys, responses, mask, strict=True)
    ]
    records = [info["reward_extra_info"][ANSWER_RECORD_KEY] for info in infos]
    index = read_answer_records(records, torch.zeros(12, dtype=torch.long))[0].index
    here, _ = explore_advantages(
        config, AnswerCounts(), CharTokenizer(), prompts, groups, responses, mask, advantages, correct
    )
    recorded, metrics = explore_advantages(
        config, AnswerCounts(), _NoDecode(), prompts, groups, None, mask, advantages, correct, infos, index
    )
    assert torch.equal(here, recorded)
    assert metrics["answer_key/from_reward"] == 1.0
    with pytest.raises(ValueError, match="responses are needed"):
        explore_advantages(config, AnswerCounts(), _NoDecode(), prompts, groups, None, mask, advantages, correct)
