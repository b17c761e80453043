"""The MEDS trainer: verl's synchronous V1 trainer composed with the hooks of `verl_meds.verl.hooks`.

Registered as verl trainer mode `meds`. Per step, in verl's own order (`_step_once`), each enabled hook runs at four
points (see `verl_meds.verl.hooks` for which hook does what):

1. around the actor's log-prob recompute (`_compute_old_log_prob`): `before_log_prob`, verl's call, `after_log_prob`;
2. around verl's advantage estimator (`_compute_advantage`): `before_advantage`, verl's call, `after_advantage`.

Stateful hooks (the MEDS memory, the historical answer counts) are written atomically into each `global_step_N`
folder *before* verl writes its `latest_checkpointed_iteration.txt`, and restored on resume; a checkpoint that lacks
one is refused. With every add-on off, only the grading metrics are added to verl's `PPOTrainerSync` (the baselines'
code path). verl's long methods are not copied: each override adds the hooks and calls `super()`.
"""

from __future__ import annotations

import json
import logging
import os

import ray
from omegaconf import DictConfig
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import PPOTrainerSync, register_trainer

from verl_meds.verl.checkpoint import load_state, save_state
from verl_meds.verl.hooks import TrainerHook, build_hooks
from verl_meds.verl.hooks.meds import meds_config_from_trainer_config
from verl_meds.verl.step_data import StepData
from verl_meds.verl.worker import MEDSActorRolloutRefWorker

logger = logging.getLogger(__name__)

SHAPED_FILTER_METRIC = "meds_shaped"
"""`algorithm.filter_groups.metric` value: dynamic sampling on the MEDS-shaped reward (`drop_flat_groups`)."""


@register_trainer("meds")
class MEDSTrainer(PPOTrainerSync):
    """verl `PPOTrainerSync` + the enabled hooks (see the module docstring)."""

    def __init__(self, config: DictConfig):
        self._hooks: list[TrainerHook] | None = None
        self._step: StepData | None = None
        super().__init__(config)

    @property
    def hooks(self) -> list[TrainerHook]:
        """The enabled hooks (`build_hooks`), built on first use: verl loads the tokenizer after `__init__`."""
        if self._hooks is None:
            self._hooks = build_hooks(self.config, self.tokenizer, getattr(self, "_filter_on_shaped", False))
        return self._hooks

    def hook(self, name: str) -> TrainerHook | None:
        """The enabled hook called `name` (`"meds"`, `"exploration"`, ...), or `None`."""
        return next((h for h in self.hooks if h.name == name), None)

    def _init_resource_pool_mgr(self):
        super()._init_resource_pool_mgr()
        if not meds_config_from_trainer_config(self.config).enable:
            return
        for role in (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor):
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(MEDSActorRolloutRefWorker)

    def _compute_old_log_prob(self, batch, metrics: dict):
        step = self._step = StepData(batch, metrics, getattr(self, "timing_raw", None), self.global_steps)
        for hook in self.hooks:
            hook.before_log_prob(step)
        try:
            batch = super()._compute_old_log_prob(batch, metrics)
        finally:
            batch.extra_info["meds_capture"] = False
        step.after_verl(batch)
        for hook in self.hooks:
            hook.after_log_prob(step)
        return batch

    def _compute_advantage(self, batch, metrics: dict):
        step = self._step if self._step is not None and self._step.matches(batch) else None
        step = step or StepData(batch, metrics, getattr(self, "timing_raw", None), self.global_steps)
        step.metrics, self._step = metrics, None
        for hook in self.hooks:
            hook.before_advantage(step)
        batch = super()._compute_advantage(step.batch, metrics)
        step.after_verl(batch)
        for hook in self.hooks:
            hook.after_advantage(step)
        return batch

    def _resolve_filter_groups_metric(self):
        # Called by verl while building the replay buffer (inside PPOTrainer.__init__, before the hooks exist).
        filter_groups = self.config.algorithm.get("filter_groups", None)
        on_shaped = bool(filter_groups and filter_groups.get("enable", False))
        self._filter_on_shaped = on_shaped and filter_groups.get("metric", None) == SHAPED_FILTER_METRIC
        if not self._filter_on_shaped:
            return super()._resolve_filter_groups_metric()
        if not self.config.get("meds", {}).get("enable", True):
            raise ValueError(f"algorithm.filter_groups.metric={SHAPED_FILTER_METRIC} needs meds.enable=true")
        return None  # no filtering at sampling time: the shaped reward exists only after old_log_prob

    def _step_folder(self) -> str:
        return os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")

    def _save_checkpoint(self):
        for hook in self.hooks:
            if hook.checkpoint is not None:
                save_state(
                    hook,
                    os.path.join(self._step_folder(), hook.checkpoint.filename),
                    self.global_steps,
                    hook.checkpoint.fmt,
                )
        super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        stateful = [hook for hook in self.hooks if hook.checkpoint is not None]
        if self.global_steps == 0 or not stateful:
            return
        folder = self._step_folder()
        if self.config.trainer.resume_mode == "resume_path":
            folder = self.config.trainer.resume_from_path
        folder = folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)
        for hook in stateful:
            self._restore(hook, folder)

    def _restore(self, hook: TrainerHook, folder: str) -> None:
        """Load `hook`'s state from `folder` and record what was restored; a folder without it is refused."""
        spec = hook.checkpoint
        path = os.path.join(folder, spec.filename)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{hook.name}: resuming from {folder}, which has no {spec.filename}: {spec.missing}"
            )
        digest = load_state(hook, path, spec.fmt)
        record = {"global_step": self.global_steps, "path": path, "sha256": digest, **hook.restore_info()}
        logger.info("%s state restored from %s", hook.name, path)
        with open(
            os.path.join(self.config.trainer.default_local_dir, spec.restore_record), "w", encoding="utf-8"
        ) as f:
            json.dump(record, f)
