"""Add-ons of the MEDS trainer: each method is one hook object with the same few methods.

`verl_meds.verl.trainer.MEDSTrainer` calls every enabled hook at four points of verl's step, in the order of
`build_hooks`, and checkpoints every stateful hook in one loop:

| stage | verl's step | hooks that act |
|---|---|---|
| `before_log_prob` | before the actor's log-prob recompute | MEDS (answer positions, feature capture) |
| `after_log_prob` | after it | MEDS (features, memory, penalties, analysis dump) |
| `before_advantage` | before verl's advantage estimator | grading metrics, MEDS (shaped rewards) |
| `after_advantage` | after it | exploration bonus, entropy advantage |

A new method is a new module here with a `TrainerHook` subclass, added to `build_hooks`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl_meds.verl.step_data import StepData


@dataclass(frozen=True)
class CheckpointSpec:
    """How a stateful hook is saved in each `global_step_N` folder and restored on resume.

    Attributes:
        filename (`str`): file name inside the folder.
        fmt (`str`): the record format of `verl_meds.verl.checkpoint.save_state`.
        restore_record (`str`): JSON file written into `trainer.default_local_dir` on resume (what was restored).
        missing (`str`): what a resume from a folder without the file would silently lose (the error's message).
    """

    filename: str
    fmt: str
    restore_record: str
    missing: str


class TrainerHook:
    """One add-on of the trainer. Every stage receives the step's `StepData`; the default stages do nothing."""

    name = "hook"
    checkpoint: CheckpointSpec | None = None

    @property
    def captures_features(self) -> bool:
        """Whether the actor workers must capture logit-lens features (`verl_meds.verl.worker`)."""
        return False

    def before_log_prob(self, step: StepData) -> None:
        """Before verl's log-prob recompute."""

    def after_log_prob(self, step: StepData) -> None:
        """After verl's log-prob recompute."""

    def before_advantage(self, step: StepData) -> None:
        """Before verl's advantage estimator."""

    def after_advantage(self, step: StepData) -> None:
        """After verl's advantage estimator wrote `advantages`."""

    def state_dict(self) -> dict[str, Any]:
        """The hook's checkpointed state (only for hooks with a `checkpoint`)."""
        raise NotImplementedError(f"{type(self).__name__} has no checkpointed state")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        raise NotImplementedError(f"{type(self).__name__} has no checkpointed state")

    def restore_info(self) -> dict[str, Any]:
        """Extra fields of the restore record (for example the number of restored entries)."""
        return {}


def build_hooks(config, tokenizer, filter_on_shaped: bool = False) -> list[TrainerHook]:
    """The enabled hooks of a verl trainer config, in stage order (grading metrics, MEDS, exploration, entropy).

    Args:
        config (`DictConfig`): verl's trainer config with the `meds`, `exploration`, `entropy_advantage` and
            `meds_dump` blocks.
        tokenizer: the policy's tokenizer.
        filter_on_shaped (`bool`, *optional*, defaults to `False`): dynamic sampling on the shaped reward
            (`algorithm.filter_groups.metric=meds_shaped`).

    Raises:
        ValueError: for invalid blocks (the message names the field).
    """
    from verl_meds.verl.explore import exploration_config_from_trainer_config
    from verl_meds.verl.hooks.entropy import EntropyAdvantageHook, entropy_adv_config_from_trainer_config
    from verl_meds.verl.hooks.exploration import ExplorationHook
    from verl_meds.verl.hooks.grading import GradingMetricsHook
    from verl_meds.verl.hooks.meds import MEDSHook, meds_config_from_trainer_config

    hooks: list[TrainerHook] = [GradingMetricsHook()]
    meds_config = meds_config_from_trainer_config(config)
    if meds_config.enable:
        hooks.append(MEDSHook(config, meds_config, tokenizer, filter_on_shaped))
    explore_config = exploration_config_from_trainer_config(config)
    if explore_config.enable:
        hooks.append(ExplorationHook(explore_config, tokenizer))
    entropy_config = entropy_adv_config_from_trainer_config(config)
    if entropy_config.enable:
        hooks.append(EntropyAdvantageHook(entropy_config))
    return hooks
