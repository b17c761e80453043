"""Tests for `verl_meds.verl.reward_manager` (verl's `naive` / `dapo` reward managers plus the answer record) and
its selection in `verl_meds.verl.main.locate_in_reward_workers`.

The managers run on `DataProto` items built the way verl's agent loop builds them for its reward workers
(`AgentLoopWorker._compute_score`: prompts, responses, all-ones attention mask, `__num_turns__`).
"""

import asyncio
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("verl")

from omegaconf import OmegaConf  # noqa: E402
from tiny_tokenizers import byte_level  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager  # noqa: E402
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager  # noqa: E402

from verl_meds.step import ANSWER_RECORD_KEY, answer_record  # noqa: E402
from verl_meds.verl.main import locate_in_reward_workers  # noqa: E402
from verl_meds.verl.reward import compute_score  # noqa: E402
from verl_meds.verl.reward_manager import MEDSDAPORewardManager, MEDSNaiveRewardManager  # noqa: E402

pytestmark = pytest.mark.requires_verl


@pytest.fixture(scope="module")
def tokenizer():
    return byte_level()


def _item(tokenizer, prompt: str, response: str, num_turns: int = 2) -> DataProto:
    prompt_ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.long)
    response_ids = torch.tensor(tokenizer.encode(response), dtype=torch.long)
    input_ids = torch.cat([prompt_ids, response_ids])
    batch = {
        "prompts": prompt_ids[None],
        "responses": response_ids[None],
        "attention_mask": torch.ones_like(input_ids)[None],
        "input_ids": input_ids[None],
        "position_ids": torch.arange(input_ids.numel())[None],
    }
    non_tensor = {
        "data_source": np.array(["test"], dtype=object),
        "reward_model": np.array([{"ground_truth": "42"}], dtype=object),
        "extra_info": np.array([{"index": 0}], dtype=object),
        "__num_turns__": np.array([num_turns]),
        "prompt_len": np.array([prompt_ids.numel()]),
        "response_len": np.array([response_ids.numel()]),
    }
    return DataProto.from_dict(tensors=batch, non_tensors=non_tensor)


def _outputs(tokenizer, prompt: str, responses: list[str]) -> DataProto:
    """A trajectory of several outputs, padded as verl's `_compute_score` pads them (verl rewards the last one)."""
    items = [_item(tokenizer, prompt, r) for r in responses]
    width = max(i.batch["responses"].shape[1] for i in items)
    full = max(i.batch["input_ids"].shape[1] for i in items)
    tensors = {}
    for name, size in (("responses", width), ("attention_mask", full), ("input_ids", full), ("position_ids", full)):
        rows = [torch.nn.functional.pad(i.batch[name][0], (0, size - i.batch[name].shape[1])) for i in items]
        tensors[name] = torch.stack(rows)
    tensors["prompts"] = torch.cat([i.batch["prompts"] for i in items])
    non_tensor = {k: np.concatenate([i.non_tensor_batch[k] for i in items]) for k in items[0].non_tensor_batch}
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensor)


def _config(overlong: bool):
    return OmegaConf.create(
        {
            "reward": {
                "reward_kwargs": {
                    "overlong_buffer_cfg": {"enable": overlong, "len": 8, "penalty_factor": 1.0, "log": False},
                    "max_resp_len": 24,
                }
            }
        }
    )


def _run(cls, config, tokenizer, item) -> dict:
    async def go():
        return await cls(config, tokenizer, compute_score).run_single(item)

    return asyncio.run(go())


RESPONSES = [
    "so \\boxed{42}",
    "so the answer is \\boxed{41}, a long answer that runs past the overlong buffer",
    "first \\boxed{1} then \\fbox {42}.",
    "no box at all",
    "",
    "\\boxed{}",
]


@pytest.mark.parametrize("response", RESPONSES)
@pytest.mark.parametrize(
    ("ours", "verls"), [(MEDSDAPORewardManager, DAPORewardManager), (MEDSNaiveRewardManager, NaiveRewardManager)]
)
def test_same_reward_as_verl_plus_the_record(tokenizer, response, ours, verls):
    config = _config(overlong=verls is DAPORewardManager)
    item = _item(tokenizer, "Question: what is 6 x 7? ", response)
    mine, theirs = _run(ours, config, tokenizer, item), _run(verls, config, tokenizer, item)
    record = mine["reward_extra_info"].pop(ANSWER_RECORD_KEY)
    assert mine == theirs
    assert record == answer_record(tokenizer.encode(response), tokenizer)


@pytest.mark.parametrize("num_turns", [0, 1, 3, 4, None])
def test_only_single_turn_rows_get_a_record(tokenizer, num_turns):
    item = _item(tokenizer, "Q ", "tool says \\boxed{7}", num_turns=num_turns)
    if num_turns is None:
        item.non_tensor_batch.pop("__num_turns__")
    assert _run(MEDSNaiveRewardManager, _config(False), tokenizer, item)["reward_extra_info"][ANSWER_RECORD_KEY] == ""


def test_multi_output_trajectories_get_an_empty_record(tokenizer):
    """verl copies the last output's reward info to every output of the trajectory: no record fits them all."""
    data = _outputs(tokenizer, "Q ", ["first try \\boxed{3} and more words", "so \\boxed{7}"])
    assert _run(MEDSDAPORewardManager, _config(True), tokenizer, data)["reward_extra_info"][ANSWER_RECORD_KEY] == ""
    single = _outputs(tokenizer, "Q ", ["so \\boxed{7}"])
    record = _run(MEDSDAPORewardManager, _config(True), tokenizer, single)["reward_extra_info"][ANSWER_RECORD_KEY]
    assert record == answer_record(tokenizer.encode("so \\boxed{7}"), tokenizer)


@pytest.mark.parametrize(
    ("meds", "explore", "name", "source", "expected", "records"),
    [
        (True, False, "dapo", "register", "meds_dapo", True),
        (True, False, "naive", "register", "meds_naive", True),
        (False, True, "naive", "register", "meds_naive", True),
        (True, True, "dapo", "register", "meds_dapo", True),
        (True, False, "meds_dapo", "register", "meds_dapo", True),
        (True, False, "gdpo", "register", "gdpo", False),
        (True, False, "MyManager", "importlib", "MyManager", False),
        (False, False, "dapo", "register", "dapo", False),
        (None, False, "dapo", "register", "meds_dapo", True),  # a `meds` block without `enable`: MEDS is on
    ],
)
def test_recording_manager_selected_only_for_meds_or_exploration_with_verls_managers(
    meds, explore, name, source, expected, records, caplog
):
    config = OmegaConf.create(
        {
            "meds": {"enable": meds} if meds is not None else {"shaping": {"alpha": 0.1}},
            "exploration": {"enable": explore},
            "reward": {"reward_manager": {"name": name, "source": source}},
        }
    )
    with caplog.at_level(logging.INFO, logger="verl_meds.verl.main"):
        assert locate_in_reward_workers(config) is records
    assert config.reward.reward_manager.name == expected
    if (meds is not False or explore) and not records:
        assert "the trainer locates the answers on the driver" in caplog.text
