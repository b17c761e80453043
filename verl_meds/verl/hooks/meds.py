"""The MEDS hook: logit-lens features captured during verl's log-prob pass, the error memory, shaped rewards.

Per step (verl's stage order), on top of `verl_meds.step.MEDSStep`:

1. `before_log_prob`: read the reward info, which holds each response's answer location when verl's reward workers
   recorded it (`verl_meds.verl.reward_manager`; otherwise read the responses and locate the answers here), write
   the predicting position (prompt lengths come from verl's tags) and answer token next to the rows and ask the
   actor workers to capture there (`verl_meds.verl.worker`); the prompt info and token-level scores are read in the
   background meanwhile.
2. `after_log_prob`: read the captured features back (or take the answer keys, `clustering.method=answer`), update
   the memory and compute each row's penalty; append the step to the analysis dump when `meds_dump` is on.
3. `before_advantage`: shape the rewards, write the token-level scores of the rows whose reward changed, and with
   dynamic sampling on the shaped reward mask the flat groups out of the loss; verl's estimator (`meds`) follows.

The memory is checkpointed in each `global_step_N` folder (`meds_memory.pkl`) and restored on resume.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from verl_meds.config import MEDSConfig
from verl_meds.step import (
    ANSWER_RECORD_KEY,
    MEDSStep,
    changed_rows,
    groups_with_signal,
    read_answer_records,
    response_digests,
    rollout_index,
    shaped_token_scores,
    stable_prompt_ids,
)
from verl_meds.verl.checkpoint import FORMAT, MEMORY_FILENAME
from verl_meds.verl.dump import AnalysisDump, DumpConfig
from verl_meds.verl.explore import batch_answer_keys, keys_from_reward_info
from verl_meds.verl.hooks import CheckpointSpec, TrainerHook
from verl_meds.verl.hooks.grading import accuracy, reward_info
from verl_meds.verl.step_data import StepData
from verl_meds.verl.worker import ANSWER_TOKEN_KEY, FEATURES_KEY, PRED_POS_KEY

RESTORE_RECORD = "meds_memory_restored.json"
"""Written into `trainer.default_local_dir` on resume: which memory file was restored, and its SHA-256."""

PREFETCH_FIELDS = ("extra_info", "rm_scores", "uid")
"""Read in the background while the workers run the log-prob pass (verl wrote them before it); `extra_fields`
(reward info with the answer records) is read before, since the workers need the answer positions."""


def meds_config_from_trainer_config(config: DictConfig) -> MEDSConfig:
    """The validated `MEDSConfig` of a verl trainer config's top-level `meds` block.

    Raises:
        ValueError: for unknown keys or invalid values (the message names the field, the value and what is allowed).
    """
    block = config.get("meds", None)
    return MEDSConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block is not None else None)


def model_num_layers(config: DictConfig) -> int:
    """Number of decoder layers L of the policy named by `actor_rollout_ref.model.path` (read from its config)."""
    from transformers import AutoConfig
    from verl.utils.fs import copy_to_local

    path = copy_to_local(config.actor_rollout_ref.model.path)
    hf_config = AutoConfig.from_pretrained(
        path, trust_remote_code=config.actor_rollout_ref.model.get("trust_remote_code", False)
    )
    hf_config = getattr(hf_config, "text_config", hf_config)
    return int(hf_config.num_hidden_layers)


class MEDSHook(TrainerHook):
    """MEDS on verl's step (see the module docstring).

    Args:
        config (`DictConfig`): verl's trainer config (for `meds_dump` and the output folder).
        meds_config (`MEDSConfig`): the validated `meds` block.
        tokenizer: the policy's tokenizer.
        filter_on_shaped (`bool`): dynamic sampling on the shaped reward.
        num_layers (`int`, *optional*): decoder layers L of the policy; read from the model's config if omitted.
    """

    name = "meds"
    checkpoint = CheckpointSpec(
        filename=MEMORY_FILENAME,
        fmt=FORMAT,
        restore_record=RESTORE_RECORD,
        missing="the run would silently restart MEDS with an empty memory. Resume from a MEDS checkpoint or set "
        "meds.enable=false.",
    )

    def __init__(
        self,
        config: DictConfig,
        meds_config: MEDSConfig,
        tokenizer,
        filter_on_shaped: bool = False,
        num_layers: int | None = None,
    ):
        self.step = MEDSStep(meds_config, model_num_layers(config) if num_layers is None else num_layers)
        self.tokenizer = tokenizer
        self.filter_on_shaped = filter_on_shaped
        block = config.get("meds_dump", None)
        self.dump_config = DumpConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block else None)
        self.dump = None
        if self.dump_config.enable:
            self.dump = AnalysisDump(os.path.join(config.trainer.default_local_dir, self.dump_config.filename))
        self._pending: dict | None = None

    @property
    def memory(self):
        """The `ErrorMemory`."""
        return self.step.memory

    @property
    def captures_features(self) -> bool:
        # Answer keys need no features; the dump keeps both.
        return not self.step.keyed_by_answer or self.dump is not None

    def state_dict(self):
        return self.step.state_dict()

    def load_state_dict(self, state) -> None:
        self.step.load_state_dict(state)

    def restore_info(self) -> dict:
        return {"num_entries": self.memory.num_entries}

    def before_log_prob(self, step: StepData) -> None:
        lap = time.perf_counter()
        self._pending = None
        extra_fields = step.list_of("extra_fields")
        step.prefetch(*PREFETCH_FIELDS)
        prompt_lengths = step.prompt_lengths()
        if prompt_lengths is None:
            prompt_lengths = torch.tensor([p.numel() for p in step.list_of("prompts")], dtype=torch.long)
        records = [reward_info(f).get(ANSWER_RECORD_KEY) for f in extra_fields]
        located = read_answer_records(records, prompt_lengths)
        if located is None:  # another reward manager, or multi-turn rows: locate here
            responses, response_mask = self._responses(step)
            location = self.step.locate(responses, response_mask, prompt_lengths, self.tokenizer)
            digests = response_digests(responses, response_mask)
        else:
            location, digests = located
        step.metrics["meds/features/located_in_reward"] = float(located is not None)
        step.shared.setdefault("meds", {}).update(location=location, digests=digests)
        if self.captures_features:
            step.put({PRED_POS_KEY: location.pred_pos, ANSWER_TOKEN_KEY: location.token})
            step.batch.extra_info.update(
                {
                    "meds_capture": True,
                    "meds_layers": list(self.step.layers),
                    "meds_final_norm": self.step.config.features.final_norm,
                }
            )
        step.lap("prepare", lap)

    def _responses(self, step: StepData) -> tuple[torch.Tensor, torch.Tensor]:
        """The responses `(N, T)` and response mask `(N, T)`, padded, read once per step (only when needed)."""
        shared = step.shared.setdefault("meds", {})
        if "responses" not in shared:
            data = step.get("responses", "response_mask")
            shared["responses"] = data["responses"].to_padded_tensor(padding=self.tokenizer.pad_token_id or 0)
            shared["response_mask"] = data["response_mask"].to_padded_tensor(padding=0)
        return shared["responses"], shared["response_mask"]

    def after_log_prob(self, step: StepData) -> None:
        lap = time.perf_counter()
        shared = step.shared["meds"]
        raw = None
        if self.captures_features:
            raw = step.get(FEATURES_KEY)[FEATURES_KEY].to_padded_tensor(padding=float("nan"))  # (N, L_sel)
        extra_fields = step.list_of("extra_fields")
        answer_keys = None
        if self.step.keyed_by_answer:
            found = keys_from_reward_info(extra_fields)
            if found is None:
                found = batch_answer_keys(self.tokenizer, *self._responses(step), extra_fields)
            answer_keys, key_metrics = found
            step.metrics.update(key_metrics)
        lap = step.lap("features", lap)
        prompt_key = self.step.config.memory.prompt_key
        extra_infos = step.list_of("extra_info")
        prompts = None
        if not all(isinstance(info, dict) and info.get(prompt_key) is not None for info in extra_infos):
            prompts = step.list_of("prompts")
        prompt_ids = stable_prompt_ids(extra_infos, prompts, prompt_key)
        correct = np.array([accuracy(f) for f in extra_fields], dtype=bool)
        real = step.real()
        out = self.step.penalties(
            step.keys,
            prompt_ids,
            shared["digests"],
            shared["location"],
            raw,
            correct,
            real=real,
            answer_keys=answer_keys,
        )
        step.lap("memory", lap)
        if self.dump is not None:
            self._write_dump(step, shared, prompt_ids, correct, extra_fields, out)
        self._pending = {"keys": step.keys, "penalties": out.penalties, "correct": correct, "real": real}
        step.metrics.update(out.metrics)

    def _write_dump(self, step: StepData, shared: dict, prompt_ids, correct, extra_fields, out) -> None:
        infos = [reward_info(f) for f in extra_fields]
        texts = None
        if self.dump_config.responses:
            rows = zip(*self._responses(step), strict=True)
            texts = [self.tokenizer.decode(r[m.bool()]) for r, m in rows]
        indices = [rollout_index(k)[0] for k in step.keys]
        self.dump.write_step(
            step.global_step,
            out.order,
            prompt_ids,
            [i if isinstance(i, int) else -1 for i in indices],
            correct,
            [str(i.get("pred") or "") for i in infos],
            out.features,
            out.has_feature,
            out.cluster_sizes,
            out.penalties.numpy(),
            texts,
        )

    def before_advantage(self, step: StepData) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        if pending["keys"] != step.keys:
            raise RuntimeError("MEDS: the batch changed between old_log_prob and advantage; penalties would misalign")
        lap = time.perf_counter()
        scores = step.list_of("rm_scores")
        uids = step.list_of("uid")
        rewards = torch.stack([s.sum() for s in scores]).float()  # (N,)
        shaped, metrics = self.step.shape(rewards, pending["correct"], pending["penalties"], uids, pending["real"])
        changed = changed_rows(rewards, shaped)
        if changed:
            rows = shaped_token_scores([scores[i] for i in changed], rewards[changed], shaped[changed])
            step.put({"rm_scores": torch.nested.as_nested_tensor(rows, layout=torch.jagged)}, rows=changed)
        step.metrics.update(metrics)
        if self.filter_on_shaped:
            drop_flat_groups(step, shaped, uids)
        step.lap("shaping", lap)


def drop_flat_groups(step: StepData, shaped: torch.Tensor, uids: list) -> None:
    """Dynamic sampling on the shaped reward: groups whose shaped rewards are all equal leave the loss.

    verl's dynamic sampling filters on accuracy when rollouts finish, so an all-wrong group never reaches MEDS.
    Here every group is trained unless its *shaped* rewards have zero variance: an all-wrong group whose errors
    fall in clusters of different sizes keeps a learning signal. Dropped groups are masked out of the policy loss
    (`response_mask` and `loss_mask` set to 0); unlike verl's sampling-time filter they are not replaced by new
    prompts. If every group would be dropped, none is (the step then has zero advantages). Adds the metric
    `meds/dynamic_sampling/kept_frac`.
    """
    keep = groups_with_signal(shaped, uids)  # (N,)
    kept_frac = float(keep.float().mean()) if keep.numel() else 1.0
    step.metrics["meds/dynamic_sampling/kept_frac"] = kept_frac if bool(keep.any()) else 1.0
    if bool(keep.all()) or not bool(keep.any()):
        return
    data = step.get("response_mask", "loss_mask")
    masks = {}
    for name in ("response_mask", "loss_mask"):
        rows = [row * int(k) for row, k in zip(data[name].unbind(), keep.tolist(), strict=True)]
        masks[name] = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
    step.put(masks)
