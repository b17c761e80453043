"""Outcome-based exploration (historical or batch bonus on verl's advantages), see `verl_meds.verl.explore`."""

from __future__ import annotations

import time

import numpy as np
import torch

from verl_meds.config import ExplorationConfig
from verl_meds.exploration import AnswerCounts
from verl_meds.step import ANSWER_RECORD_KEY, read_answer_records, stable_prompt_ids
from verl_meds.verl.checkpoint import COUNTS_FILENAME, COUNTS_FORMAT
from verl_meds.verl.explore import explore_advantages, keys_from_reward_info
from verl_meds.verl.hooks import CheckpointSpec, TrainerHook
from verl_meds.verl.hooks.grading import accuracy, reward_info
from verl_meds.verl.step_data import StepData

COUNTS_RESTORE_RECORD = "explore_counts_restored.json"
"""Written into `trainer.default_local_dir` on resume: which answer-counts file was restored, and its SHA-256."""


class ExplorationHook(TrainerHook):
    """Adds `c * bonus` to verl's per-token advantages; historical counts N(x, a) change once per step.

    Args:
        config (`ExplorationConfig`): the `exploration` block.
        tokenizer: the policy's tokenizer.
    """

    name = "exploration"

    def __init__(self, config: ExplorationConfig, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.counts = AnswerCounts()
        if config.method == "historical":
            self.checkpoint = CheckpointSpec(
                filename=COUNTS_FILENAME,
                fmt=COUNTS_FORMAT,
                restore_record=COUNTS_RESTORE_RECORD,
                missing="historical exploration would silently restart from N(x, a) = 0. Resume from a "
                "checkpoint of the same method or set exploration.enable=false.",
            )

    def state_dict(self):
        return self.counts.state_dict()

    def load_state_dict(self, state) -> None:
        self.counts.load_state_dict(state)

    def restore_info(self) -> dict:
        return {}

    def after_advantage(self, step: StepData) -> None:
        from verl.workers.utils.padding import response_to_nested

        lap = time.perf_counter()
        advantages = step.padded("advantages", 0.0)  # (N, T)
        response_mask = step.padded("response_mask")  # (N, T)
        extra_fields, uids = step.list_of("extra_fields"), step.list_of("uid")
        extra_infos = step.list_of("extra_info")
        prompt_key = self.config.prompt_key
        prompts = None
        if not all(isinstance(info, dict) and info.get(prompt_key) is not None for info in extra_infos):
            prompts = step.list_of("prompts")
        prompt_ids = stable_prompt_ids(extra_infos, prompts, prompt_key)
        # verl's synthetic padding rows copy a real row's reward info: they must not count as answers.
        real = np.flatnonzero(step.real()).tolist()
        records = [reward_info(extra_fields[i]).get(ANSWER_RECORD_KEY) for i in real]
        located = read_answer_records(records, torch.zeros(len(real), dtype=torch.long))
        keyed = keys_from_reward_info([extra_fields[i] for i in real]) is not None
        responses = None
        if not keyed or (located is None and self.config.mask_answer_tokens):  # read only when the workers did not
            responses = step.padded("responses", self.tokenizer.pad_token_id or 0)[real]  # (N_real, T)
        step.metrics["explore/located_in_reward"] = float(located is not None)
        shaped, metrics = explore_advantages(
            self.config,
            self.counts,
            self.tokenizer,
            [prompt_ids[i] for i in real],
            [uids[i] for i in real],
            responses,
            response_mask[real],  # (N_real, T)
            advantages[real],  # (N_real, T)
            np.array([accuracy(extra_fields[i]) for i in real], dtype=bool),
            extra_fields=[extra_fields[i] for i in real],
            answer_index=None if located is None else located[0].index,
        )
        advantages[real] = shaped
        step.put({"advantages": response_to_nested(advantages, step.get("response_mask")["response_mask"])})
        step.metrics.update(metrics)
        step.lap("explore", lap)
