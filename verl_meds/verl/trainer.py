"""The MEDS step hook: verl's synchronous V1 trainer with three thin overrides (registered as trainer mode ``meds``).

Per step, in verl's own order (``_step_once``), MEDS adds:

1. **old_log_prob** (:meth:`MEDSTrainer._compute_old_log_prob`): locate each response's final-answer token, ask the
   actor workers to capture logit-lens features during the recompute (:mod:`verl_meds.verl.worker`), then update the
   per-prompt memory and compute the penalty of every response (:class:`verl_meds.memory.ErrorMemory`,
   :func:`verl_meds.shaping.penalty_from_cluster_sizes`).
2. **advantage** (:meth:`MEDSTrainer._compute_advantage`): shape the rewards (:func:`verl_meds.shaping.shape_rewards`),
   keep the raw ones in the metrics, write the shaped reward into verl's token-level scores and let verl's
   ``compute_advantage`` call the registered ``meds`` estimator (GRPO normalisation).
3. **checkpoints**: the memory is written atomically into each ``global_step_N`` folder *before* verl writes its
   ``latest_checkpointed_iteration.txt``, and restored on resume (a config whose features differ is refused).

With ``meds.clustering.method=answer`` the memory is keyed by the normalised final answer of each response
(:func:`verl_meds.answer.answer_key` of the decoded response's last ``\\boxed{}``) instead of its logit-lens features;
features are then not captured at all, unless ``meds_dump`` is on (the dump then holds both, for comparing the two).

The same trainer also runs outcome-based exploration (top-level ``exploration`` block, :mod:`verl_meds.verl.explore`):
after verl's estimator, :meth:`MEDSTrainer._add_exploration_bonus` adds the historical or batch bonus to the
advantages; historical answer counts are checkpointed like the memory (``explore_counts.pkl``).

With ``meds.enable=false`` (and exploration off) the trainer is verl's ``PPOTrainerSync`` unchanged (the baselines'
code path).
Nothing of verl's long methods is copied: each override adds its work and calls ``super()``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import numpy as np
import ray
import torch
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer

from verl_meds.answer import locate_answer_tokens
from verl_meds.config import MEDSConfig
from verl_meds.exploration import AnswerCounts
from verl_meds.features import finalize_features
from verl_meds.memory import ErrorMemory
from verl_meds.shaping import penalty_from_cluster_sizes, shape_rewards
from verl_meds.verl.checkpoint import (
    COUNTS_FORMAT,
    counts_path,
    load_memory,
    load_state,
    memory_path,
    save_memory,
    save_state,
)
from verl_meds.verl.dump import AnalysisDump, DumpConfig
from verl_meds.verl.entropy_adv import EntropyAdvantageConfig, entropy_advantage
from verl_meds.verl.explore import batch_answer_keys, exploration_config_from_trainer_config, explore_advantages
from verl_meds.verl.worker import ANSWER_TOKEN_KEY, FEATURES_KEY, PRED_POS_KEY, MEDSActorRolloutRefWorker

logger = logging.getLogger(__name__)

SHAPED_FILTER_METRIC = "meds_shaped"
"""``algorithm.filter_groups.metric`` value: dynamic sampling on the MEDS-shaped reward (``_drop_flat_groups``)."""

RESTORE_RECORD = "meds_memory_restored.json"
"""Written into ``trainer.default_local_dir`` on resume: which memory file was restored, and its SHA-256."""

COUNTS_RESTORE_RECORD = "explore_counts_restored.json"
"""Like ``RESTORE_RECORD``, for the answer counts of historical exploration."""


def meds_config_from_trainer_config(config: DictConfig) -> MEDSConfig:
    """The validated :class:`MEDSConfig` of a verl trainer config's top-level ``meds`` block.

    Raises:
        ValueError: for unknown keys or invalid values (the message names the field, the value and what is allowed).
    """
    block = config.get("meds", None)
    return MEDSConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block is not None else None)


def model_num_layers(config: DictConfig) -> int:
    """Number of decoder layers L of the policy named by ``actor_rollout_ref.model.path`` (read from its config)."""
    from transformers import AutoConfig
    from verl.utils.fs import copy_to_local

    path = copy_to_local(config.actor_rollout_ref.model.path)
    hf_config = AutoConfig.from_pretrained(
        path, trust_remote_code=config.actor_rollout_ref.model.get("trust_remote_code", False)
    )
    hf_config = getattr(hf_config, "text_config", hf_config)
    return int(hf_config.num_hidden_layers)


def stable_prompt_ids(extra_infos: list, prompts: list[torch.Tensor] | None, prompt_key: str) -> list[str]:
    """Stable id of each rollout's prompt: ``extra_info[prompt_key]`` when present, else a hash of the prompt ids.

    The fallback is ``"sha1:" + sha1(int64 little-endian bytes of the prompt token ids)``, which is the same for the
    same prompt in every step (verl's ``uid`` is not: it is a new uuid4 per batch).

    Args:
        extra_infos (`list` of length N): each row's dataset ``extra_info`` (a dict, or `None`).
        prompts (`list[torch.Tensor]` of length N, *optional*): each row's prompt ids; needed only when a row's
            ``extra_info`` lacks ``prompt_key``.
        prompt_key (`str`): the ``extra_info`` field that identifies a prompt.

    Raises:
        ValueError: if a row needs the hash and ``prompts`` is `None`.
    """
    ids = []
    for row, info in enumerate(extra_infos):
        value = info.get(prompt_key) if isinstance(info, dict) else None
        if value is not None:
            ids.append(str(value))
            continue
        if prompts is None:
            raise ValueError(f"row {row} has no extra_info[{prompt_key!r}]; its prompt ids are needed for the hash")
        digest = hashlib.sha1(prompts[row].to(torch.int64).numpy().astype("<i8").tobytes()).hexdigest()
        ids.append(f"sha1:{digest}")
    if prompts is not None and len(prompts) != len(extra_infos):
        raise ValueError(f"{len(extra_infos)} extra_info rows but {len(prompts)} prompts")
    return ids


STEP_FIELDS = ["responses", "response_mask", "extra_info", "extra_fields", "rm_scores", "uid"]
"""TransferQueue fields the MEDS step reads, in one call per step, before verl's log-prob recompute (verl wrote the
rewards already); the advantage stage reuses them instead of reading again."""


def real_rows(tags: list[dict]) -> np.ndarray:
    """`np.ndarray` of shape `(N,)`, bool: False for the synthetic padding rows verl adds to make a batch divisible
    by the data-parallel size (tag ``is_padding``; they copy a real row's prompt and reward info)."""
    return np.array([not bool(tag.get("is_padding", False)) for tag in tags], dtype=bool)


def prompt_lengths(tags: list[dict]) -> torch.Tensor | None:
    """`torch.LongTensor` of shape `(N,)`: the prompt length verl's agent loop put in each row's tag
    (``prompt_len``), or `None` when a tag lacks it (the caller then reads the prompts)."""
    values = [tag.get("prompt_len") for tag in tags]
    if any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) for v in values):
        return None
    return torch.tensor(values, dtype=torch.long)


def shaped_token_scores(scores: list[torch.Tensor], rewards: torch.Tensor, shaped: torch.Tensor) -> list[torch.Tensor]:
    """Put each shaped reward on the last response token of verl's token-level scores.

    Args:
        scores (`list[torch.Tensor]`, N tensors of shape `(T_i,)`): verl's token-level scores (the outcome reward on
            the last response token).
        rewards (`torch.Tensor` of shape `(N,)`): the raw rewards (row sums of ``scores``).
        shaped (`torch.Tensor` of shape `(N,)`): the shaped rewards (NaN where the raw reward is not finite; see
            ``shape_rewards``).

    Returns:
        `list[torch.Tensor]`: float32 scores whose row sums are ``shaped``. A row whose raw reward is not finite is
        rebuilt from zeros with NaN on its last token, so the ``meds`` estimator sees one non-finite row sum and
        gives that row advantage 0 without moving its group's statistics.
    """
    out = []
    for score, old, new in zip(scores, rewards, shaped, strict=True):
        score = score.clone().float()
        if score.numel():
            if bool(torch.isfinite(old)):
                score[-1] += new - old
            else:
                score = torch.zeros_like(score)
                score[-1] = new
        out.append(score)
    return out


def groups_with_signal(shaped: torch.Tensor, group_ids: list, atol: float = 1e-9) -> torch.Tensor:
    """Which rows belong to a group whose shaped rewards are not all equal.

    Args:
        shaped (`torch.Tensor` of shape `(N,)`, float): shaped rewards.
        group_ids (`list` of length N): group of each row (verl's per-step ``uid``).
        atol (`float`, *optional*, defaults to `1e-9`): spread at or below which a group counts as flat.

    Returns:
        `torch.Tensor` of shape `(N,)`, bool. Singleton groups are flat (no within-group signal); non-finite rewards
        (no reward) are left out of the spread, as the ``meds`` estimator leaves them out of the group statistics.
    """
    keep = torch.zeros(len(group_ids), dtype=torch.bool)
    rows_of: dict = {}
    for row, gid in enumerate(group_ids):
        rows_of.setdefault(gid, []).append(row)
    for rows in rows_of.values():
        values = shaped[rows]
        values = values[torch.isfinite(values)]
        if values.numel() > 1 and float(values.max() - values.min()) > atol:
            keep[rows] = True
    return keep


def group_degeneracy(shaped: torch.Tensor, group_ids: list) -> dict[str, float]:
    """Degenerate groups of a step, as metrics: both give every row of the group a zero advantage under GRPO.

    Args:
        shaped (`torch.Tensor` of shape `(N,)`, float): shaped rewards.
        group_ids (`list` of length N): group of each row (verl's per-step ``uid``).

    Returns:
        `dict[str, float]`: ``meds/groups/singleton_frac`` (fraction of rows alone in their group) and
        ``meds/groups/flat_frac`` (fraction of rows in a group whose shaped rewards are all equal, singletons
        included); both 0.0 for an empty step.
    """
    n = len(group_ids)
    if n == 0:
        return {"meds/groups/singleton_frac": 0.0, "meds/groups/flat_frac": 0.0}
    sizes: dict = {}
    for gid in group_ids:
        sizes[gid] = sizes.get(gid, 0) + 1
    singletons = sum(1 for gid in group_ids if sizes[gid] == 1)
    flat = n - int(groups_with_signal(shaped, group_ids).sum())
    return {"meds/groups/singleton_frac": singletons / n, "meds/groups/flat_frac": flat / n}


def rollout_index(key: str) -> tuple:
    """``(session_id, index)`` parsed from verl's TransferQueue key ``"{uid}_{session_id}_{index}"``;
    ``(key,)`` when the key has another form."""
    parts = str(key).rsplit("_", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return (int(parts[1]), int(parts[2]))
    return (str(key),)


def canonical_order(prompt_ids: list[str], keys: list[str], tiebreak: list[bytes] | None = None) -> np.ndarray:
    """Row order by (prompt id, rollout index, content): the same whatever order or worker split verl gave the batch.

    Two rows share (prompt id, rollout index) when one prompt fills two groups of a step (dynamic sampling
    concatenating generation batches, or two dataset rows with the same prompt id). Such rows are ordered by
    ``tiebreak`` (their content); rows whose tiebreak is also equal are interchangeable for the memory.

    Args:
        prompt_ids (`list[str]` of length N): stable prompt id of each row.
        keys (`list[str]` of length N): verl's TransferQueue keys, ``"{uid}_{session_id}_{index}"``, where
            ``session_id`` is the rollout's index within its group.
        tiebreak (`list[bytes]` of length N, *optional*): content of each row (the trainer passes the response
            tokens and the feature bytes). Without it, tied rows keep the batch order.

    Returns:
        `np.ndarray` of shape `(N,)`, int64: row indices in canonical order.

    Raises:
        ValueError: when the three lists differ in length.
    """
    n = len(keys)
    if len(prompt_ids) != n or (tiebreak is not None and len(tiebreak) != n):
        lengths = (len(prompt_ids), n, None if tiebreak is None else len(tiebreak))
        raise ValueError(f"canonical_order: prompt_ids, keys and tiebreak lengths differ: {lengths}")
    ties = tiebreak if tiebreak is not None else [b""] * n
    return np.array(
        sorted(range(n), key=lambda r: (prompt_ids[r], rollout_index(keys[r]), bytes(ties[r]))), dtype=np.int64
    )


def content_tiebreak(responses: torch.Tensor, response_mask: torch.Tensor, features: np.ndarray) -> list[bytes]:
    """Each row's content as bytes, the ``tiebreak`` of [`canonical_order`]: its response tokens, then its features.

    Args:
        responses (`torch.Tensor` of shape `(N, T)`, int): response token ids, padded.
        response_mask (`torch.Tensor` of shape `(N, T)`): 1 on response tokens.
        features (`np.ndarray` of shape `(N, F)`, float): the rows' features (NaN where missing).

    Returns:
        `list[bytes]` of length N.
    """
    rows = zip(responses.cpu(), response_mask.cpu(), features, strict=True)
    return [r[m.bool()].numpy().tobytes() + np.ascontiguousarray(f).tobytes() for r, m, f in rows]


@register_trainer("meds")
class MEDSTrainer(PPOTrainerSync):
    """verl ``PPOTrainerSync`` + MEDS reward shaping (see the module docstring for what each override adds)."""

    def __init__(self, config: DictConfig):
        super().__init__(config)
        self.meds_config = meds_config_from_trainer_config(config)
        self.meds_enabled = self.meds_config.enable
        self.meds_memory = ErrorMemory(self.meds_config)
        self.meds_layers = self.meds_config.features.resolve_layers(model_num_layers(config))
        self._meds_step: dict | None = None
        self.entropy_adv_config = entropy_adv_config_from_trainer_config(config)
        self.explore_config = exploration_config_from_trainer_config(config)
        self.explore_counts = AnswerCounts()
        block = config.get("meds_dump", None)
        self.dump_config = DumpConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block else None)
        self.dump = None
        if self.meds_enabled and self.dump_config.enable:
            self.dump = AnalysisDump(os.path.join(config.trainer.default_local_dir, self.dump_config.filename))

    # ------------------------------------------------------------------ set-up
    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        if not self.meds_enabled:
            return
        for role in (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(MEDSActorRolloutRefWorker)

    # ------------------------------------------------------------------ 1. features, memory, penalties
    def _meds_lap(self, name: str, start: float) -> float:
        """Add the seconds since ``start`` to this step's ``timing_s/meds_<name>`` (verl's timing metrics); returns
        ``time.perf_counter()``. Stages: ``prepare`` (answer positions, before the log-prob call), ``features``
        (reading them back, or decoding answer keys), ``memory`` (memory update, clustering, penalties), ``shaping``
        (shaped rewards), ``explore`` (outcome-based exploration bonus)."""
        now = time.perf_counter()
        timing_raw = getattr(self, "timing_raw", None)
        if timing_raw is not None:
            timing_raw[f"meds_{name}"] = timing_raw.get(f"meds_{name}", 0.0) + now - start
        return now

    def _compute_old_log_prob(self, batch, metrics: dict):
        if not self.meds_enabled:
            return super()._compute_old_log_prob(batch, metrics)
        lap = time.perf_counter()
        n = len(batch)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=STEP_FIELDS)
        responses = data["responses"].to_padded_tensor(padding=self.tokenizer.pad_token_id or 0)  # (N, T)
        response_mask = data["response_mask"].to_padded_tensor(padding=0)  # (N, T)
        extra_fields = list(data["extra_fields"])
        extra_infos = list(data["extra_info"]) if "extra_info" in data.keys() else [None] * n
        real = real_rows(batch.tags)  # (N,) bool, False for verl's synthetic padding rows
        prompts = None
        prompt_len = prompt_lengths(batch.tags)  # (N,) or None when a tag lacks it
        key = self.meds_config.memory.prompt_key
        if prompt_len is None or not all(isinstance(i, dict) and i.get(key) is not None for i in extra_infos):
            out = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["prompts"])
            prompts = list(out["prompts"].unbind())
            prompt_len = torch.tensor([p.numel() for p in prompts], dtype=torch.long)
        answer_index = locate_answer_tokens(responses, response_mask, self.tokenizer)  # (N,), -1 = none
        has_answer = answer_index >= 0
        pred_pos = torch.where(has_answer, prompt_len + answer_index - 1, torch.full_like(answer_index, -1))
        answer_token = torch.where(
            has_answer, responses.gather(1, answer_index.clamp(min=0).unsqueeze(1)).squeeze(1), 0
        )
        keyed = self.meds_memory.keyed_by_answer
        capture = not keyed or self.dump is not None  # answer keys need no features; the dump keeps both
        if capture:
            tq.kv_batch_put(
                keys=batch.keys,
                partition_id=batch.partition_id,
                fields=tq_fields({PRED_POS_KEY: pred_pos, ANSWER_TOKEN_KEY: answer_token}, n),
            )
            batch.extra_info.update(
                {
                    "meds_capture": True,
                    "meds_layers": list(self.meds_layers),
                    "meds_final_norm": self.meds_config.features.final_norm,
                }
            )
        self._meds_lap("prepare", lap)
        try:
            batch = super()._compute_old_log_prob(batch, metrics)
        finally:
            batch.extra_info["meds_capture"] = False
        lap = time.perf_counter()
        if capture:
            out = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=[FEATURES_KEY])
            raw = out[FEATURES_KEY].to_padded_tensor(padding=float("nan"))  # (N, L_sel)
        else:
            raw = torch.full((n, len(self.meds_layers)), float("nan"))  # (N, L_sel), nothing captured
        features = finalize_features(raw, self.meds_config.features.diff).numpy()  # (N, F)
        has_feature = has_answer.numpy() & np.isfinite(features).all(axis=1)
        valid = has_feature
        answer_keys = None
        if keyed:
            answer_keys, key_metrics = batch_answer_keys(self.tokenizer, responses, response_mask, extra_fields)
            metrics.update(key_metrics)
            valid = np.array([key is not None for key in answer_keys], dtype=bool)
        lap = self._meds_lap("features", lap)

        prompt_ids = stable_prompt_ids(extra_infos, prompts, key)
        correct = np.array([_accuracy(f) for f in extra_fields], dtype=bool)
        # verl reorders the batch to balance workers; visiting rows in a fixed order (prompt id, then rollout index)
        # makes the memory, and so every penalty, independent of that order and of the number of workers.
        # verl's synthetic padding rows (copies of a real row's prompt and reward info) never reach the memory.
        tiebreak = content_tiebreak(responses, response_mask, features)
        order = canonical_order(prompt_ids, list(batch.keys), tiebreak=tiebreak)
        order = order[real[order]]
        sorted_sizes, memory_metrics = self.meds_memory.step(
            [prompt_ids[r] for r in order],
            features[order].astype(np.float32),
            valid[order],
            correct[order],
            answer_keys=[answer_keys[r] for r in order] if keyed else None,
        )
        sizes = np.zeros(n, dtype=np.int64)
        sizes[order] = sorted_sizes
        shaping = self.meds_config.shaping
        penalties = penalty_from_cluster_sizes(torch.as_tensor(sizes), shaping.alpha, shaping.beta)  # (N,)
        self._meds_lap("memory", lap)
        if self.dump is not None:
            infos = [f.get("reward_extra_info", {}) if isinstance(f, dict) else {} for f in extra_fields]
            texts = None
            if self.dump_config.responses:
                texts = [self.tokenizer.decode(r[m.bool()]) for r, m in zip(responses, response_mask, strict=True)]
            self.dump.write_step(
                self.global_steps,
                order,
                prompt_ids,
                [rollout_index(k)[0] if isinstance(rollout_index(k)[0], int) else -1 for k in batch.keys],
                correct,
                [str(i.get("pred") or "") for i in infos],
                features,
                has_feature,
                sizes,
                penalties.numpy(),
                texts,
            )
        self._meds_step = {
            "keys": list(batch.keys),
            "penalties": penalties,
            "correct": torch.as_tensor(correct),
            "real": torch.as_tensor(real),
            "extra_fields": extra_fields,
            "scores": list(data["rm_scores"].unbind()) if "rm_scores" in data.keys() else None,
            "uids": list(data["uid"]) if "uid" in data.keys() else None,
        }
        metrics.update(memory_metrics)
        metrics["meds/features/answer_found_frac"] = float(has_answer[real].float().mean()) if real.any() else 0.0
        return batch

    # ------------------------------------------------------------------ 2. shaped rewards -> advantage
    def _compute_advantage(self, batch, metrics: dict):
        step = self._meds_step
        if step is not None and step["keys"] == list(batch.keys):
            extra_fields = step["extra_fields"]  # read once per step, in old_log_prob
        else:
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
            extra_fields = list(data["extra_fields"])
        metrics.update(grading_metrics(extra_fields))
        batch = self._compute_shaped_advantage(batch, metrics)
        if self.explore_config.enable:
            batch = self._add_exploration_bonus(batch, metrics)
        if self.entropy_adv_config.enable:
            batch = self._add_entropy_bonus(batch, metrics)
        return batch

    def _add_exploration_bonus(self, batch, metrics: dict):
        """Outcome-based exploration: ``c * bonus`` on verl's per-token advantages, see :mod:`verl_meds.verl.explore`.

        Adds ``timing_s/meds_explore``. The historical counts change here, once per step, in the driver process.
        """
        lap = time.perf_counter()
        fields = ["prompts", "responses", "response_mask", "extra_info", "extra_fields", "uid", "advantages"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        prompts = list(data["prompts"].unbind())
        response_mask_nested = data["response_mask"]
        extra_infos = list(data["extra_info"]) if "extra_info" in data.keys() else [None] * len(prompts)
        advantages = data["advantages"].to_padded_tensor(padding=0.0)  # (N, T)
        extra_fields, uids = list(data["extra_fields"]), list(data["uid"])
        # verl's synthetic padding rows copy a real row's reward info: they must not count as answers.
        real = np.flatnonzero(real_rows(batch.tags)).tolist()
        prompt_ids = stable_prompt_ids(extra_infos, prompts, self.explore_config.prompt_key)
        shaped, explore_metrics = explore_advantages(
            self.explore_config,
            self.explore_counts,
            self.tokenizer,
            [prompt_ids[i] for i in real],
            [uids[i] for i in real],
            data["responses"].to_padded_tensor(padding=self.tokenizer.pad_token_id or 0)[real],  # (N_real, T)
            response_mask_nested.to_padded_tensor(padding=0)[real],  # (N_real, T)
            advantages[real],  # (N_real, T)
            np.array([_accuracy(extra_fields[i]) for i in real], dtype=bool),
            extra_fields=[extra_fields[i] for i in real],
        )
        advantages[real] = shaped
        from verl.workers.utils.padding import response_to_nested

        nested = response_to_nested(advantages, response_mask_nested)
        tq.kv_batch_put(
            keys=batch.keys, partition_id=batch.partition_id, fields=tq_fields({"advantages": nested}, len(batch))
        )
        metrics.update(explore_metrics)
        self._meds_lap("explore", lap)
        return batch

    def _add_entropy_bonus(self, batch, metrics: dict):
        """GRPO with entropy advantage (baseline): bonus on verl's per-token advantages, see ``entropy_adv``."""
        fields = ["advantages", "entropy", "response_mask"]
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
        response_mask = data["response_mask"]
        padded = data.to_padded_tensor()
        cfg = self.entropy_adv_config
        shaped, bonus_metrics = entropy_advantage(
            padded["advantages"], padded["entropy"], padded["response_mask"], cfg.alpha, cfg.kappa
        )
        from verl.workers.utils.padding import response_to_nested

        nested = response_to_nested(shaped, response_mask)
        tq.kv_batch_put(
            keys=batch.keys, partition_id=batch.partition_id, fields=tq_fields({"advantages": nested}, len(batch))
        )
        metrics.update(bonus_metrics)
        return batch

    def _compute_shaped_advantage(self, batch, metrics: dict):
        step, self._meds_step = self._meds_step, None
        if not self.meds_enabled or step is None:
            return super()._compute_advantage(batch, metrics)
        if step["keys"] != list(batch.keys):
            raise RuntimeError("MEDS: the batch changed between old_log_prob and advantage; penalties would misalign")
        lap = time.perf_counter()
        scores, uids = step["scores"], step["uids"]
        if scores is None or uids is None:
            fields = ["rm_scores", "uid"]
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=fields)
            scores, uids = list(data["rm_scores"].unbind()), list(data["uid"])
        rewards = torch.stack([s.sum() for s in scores]).float()  # (N,)
        real = step["real"]  # (N,) bool
        shaped_real, shaping_metrics = shape_rewards(
            rewards[real], step["correct"][real], step["penalties"][real], self.meds_config.shaping.penalty_target
        )
        shaped = rewards.clone()  # (N,); synthetic padding rows keep their (zero) reward
        shaped[real] = shaped_real
        changed = torch.nonzero(shaped != rewards).reshape(-1).tolist()  # NaN != NaN: a NaN row is rewritten too
        if changed:
            rows = shaped_token_scores([scores[i] for i in changed], rewards[changed], shaped[changed])
            nested = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
            tq.kv_batch_put(
                keys=[batch.keys[i] for i in changed],
                partition_id=batch.partition_id,
                fields=tq_fields({"rm_scores": nested}, len(changed)),
            )
        metrics.update(shaping_metrics)
        metrics["meds/penalty/count"] = float((step["penalties"][real] > 0).sum())
        metrics.update(group_degeneracy(shaped[real], [u for u, r in zip(uids, real.tolist(), strict=True) if r]))
        if self._filter_on_shaped:
            self._drop_flat_groups(batch, shaped, metrics)
        self._meds_lap("shaping", lap)
        return super()._compute_advantage(batch, metrics)

    # ------------------------------------------------------------------ dynamic sampling on the shaped reward
    def _resolve_filter_groups_metric(self):
        # Called by verl while building the replay buffer (inside PPOTrainer.__init__).
        filter_groups = self.config.algorithm.get("filter_groups", None)
        on_shaped = bool(filter_groups and filter_groups.get("enable", False))
        on_shaped = on_shaped and filter_groups.get("metric", None) == SHAPED_FILTER_METRIC
        self._filter_on_shaped = on_shaped
        if not on_shaped:
            return super()._resolve_filter_groups_metric()
        if not self.config.get("meds", {}).get("enable", True):
            raise ValueError(f"algorithm.filter_groups.metric={SHAPED_FILTER_METRIC} needs meds.enable=true")
        return None  # no filtering at sampling time: the shaped reward exists only after old_log_prob

    def _drop_flat_groups(self, batch, shaped: torch.Tensor, metrics: dict) -> None:
        """Dynamic sampling on the shaped reward: groups whose shaped rewards are all equal leave the loss.

        verl's dynamic sampling filters on accuracy when rollouts finish, so an all-wrong group never reaches MEDS.
        Here every group is trained unless its *shaped* rewards have zero variance: an all-wrong group whose errors
        fall in clusters of different sizes keeps a learning signal. Dropped groups are masked out of the policy
        loss (``response_mask`` and ``loss_mask`` set to 0); unlike verl's sampling-time filter they are not
        replaced by new prompts. If every group would be dropped, none is (the step then has zero advantages).
        """
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["uid", "response_mask", "loss_mask"]
        )
        keep = groups_with_signal(shaped, list(data["uid"]))  # (N,)
        kept_frac = float(keep.float().mean()) if keep.numel() else 1.0
        metrics["meds/dynamic_sampling/kept_frac"] = kept_frac if bool(keep.any()) else 1.0
        if bool(keep.all()) or not bool(keep.any()):
            return
        masks = {}
        for name in ("response_mask", "loss_mask"):
            rows = [row * int(k) for row, k in zip(data[name].unbind(), keep.tolist(), strict=True)]
            masks[name] = torch.nested.as_nested_tensor(rows, layout=torch.jagged)
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=tq_fields(masks, len(batch)))

    # ------------------------------------------------------------------ 3. checkpoints
    @property
    def _counts_enabled(self) -> bool:
        """Whether this run keeps historical answer counts (exploration on, method ``historical``)."""
        return self.explore_config.enable and self.explore_config.method == "historical"

    def _save_checkpoint(self):
        folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        if self.meds_enabled:
            save_memory(self.meds_memory, memory_path(folder), self.global_steps)
        if self._counts_enabled:
            save_state(self.explore_counts, counts_path(folder), self.global_steps, COUNTS_FORMAT)
        super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps == 0 or not (self.meds_enabled or self._counts_enabled):
            return
        if self.config.trainer.resume_mode == "resume_path":
            folder = self.config.trainer.resume_from_path
        else:
            folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        if not os.path.isabs(folder):
            folder = os.path.join(os.getcwd(), folder)
        if self._counts_enabled:
            self._restore_explore_counts(folder)
        if not self.meds_enabled:
            return
        path = memory_path(folder)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"MEDS: resuming from {folder} but it has no MEDS memory ({os.path.basename(path)}); the run would "
                "silently restart MEDS with an empty memory. Resume from a MEDS checkpoint or set meds.enable=false."
            )
        digest = load_memory(self.meds_memory, path)
        logger.info("MEDS memory restored from %s (%d entries)", path, self.meds_memory.num_entries)
        record = {
            "global_step": self.global_steps,
            "path": path,
            "sha256": digest,
            "num_entries": self.meds_memory.num_entries,
        }
        with open(os.path.join(self.config.trainer.default_local_dir, RESTORE_RECORD), "w", encoding="utf-8") as f:
            json.dump(record, f)

    def _restore_explore_counts(self, folder: str) -> None:
        """Historical exploration: restore N(x, a) from ``folder``; a checkpoint without counts is refused."""
        path = counts_path(folder)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"exploration: resuming from {folder} but it has no answer counts ({os.path.basename(path)}); "
                "historical exploration would silently restart from N(x, a) = 0. Resume from a checkpoint of the "
                "same method or set exploration.enable=false."
            )
        digest = load_state(self.explore_counts, path, COUNTS_FORMAT)
        logger.info("Exploration answer counts restored from %s (%d answers)", path, self.explore_counts.num_answers)
        record = {"global_step": self.global_steps, "path": path, "sha256": digest}
        record_path = os.path.join(self.config.trainer.default_local_dir, COUNTS_RESTORE_RECORD)
        with open(record_path, "w", encoding="utf-8") as f:
            json.dump(record, f)


def entropy_adv_config_from_trainer_config(config: DictConfig) -> EntropyAdvantageConfig:
    """The validated entropy-advantage options of a trainer config's top-level ``entropy_advantage`` block."""
    block = config.get("entropy_advantage", None)
    return EntropyAdvantageConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block is not None else None)


GRADING_FLAGS = {"grading_timeout": "reward/grading_timeout_frac", "grading_error": "reward/grading_error_frac"}
"""Flags of ``verl_meds.verl.reward`` in verl's reward info -> the step metric of their mean."""

ANSWER_FOUND_METRIC = "reward/answer_found_frac"
"""Fraction of a step's responses whose reward function extracted a final answer (every method logs it)."""


def grading_metrics(extra_fields: list) -> dict[str, float]:
    """Fraction of the step's responses whose grading hit its time bound or failed (graded wrong).

    Args:
        extra_fields (`list` of length N): verl's per-response ``extra_fields`` (``reward_extra_info`` inside).

    Returns:
        `dict[str, float]`: ``reward/grading_timeout_frac`` and ``reward/grading_error_frac`` over the responses
        whose reward function reported the flag (a reward function of another library reports none: no metric), and
        ``reward/answer_found_frac``, the fraction whose reward found a closed final box (a non-empty ``pred``).
    """
    metrics = {}
    infos = [f.get("reward_extra_info", {}) if isinstance(f, dict) else {} for f in extra_fields]
    for flag, name in GRADING_FLAGS.items():
        values = [float(info[flag]) for info in infos if info.get(flag) is not None]
        if values:
            metrics[name] = sum(values) / len(values)
    preds = [info["pred"] for info in infos if isinstance(info.get("pred"), str)]
    if preds:
        metrics[ANSWER_FOUND_METRIC] = sum(1 for pred in preds if pred) / len(preds)
    return metrics


def _accuracy(extra_fields) -> float:
    info = extra_fields.get("reward_extra_info", {}) if isinstance(extra_fields, dict) else {}
    if "acc" not in info:
        raise KeyError("MEDS needs the reward function to return 'acc' (see verl_meds.verl.reward.compute_score)")
    return float(info["acc"]) > 0.5


def tq_fields(values: dict[str, torch.Tensor], batch_size: int):
    """Wrap per-sample tensors as the TensorDict that TransferQueue's ``kv_batch_put`` takes."""
    from tensordict import TensorDict

    return TensorDict(values, batch_size=batch_size)
