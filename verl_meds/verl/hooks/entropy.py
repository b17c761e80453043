"""GRPO with entropy advantage (baseline): the bonus of `verl_meds.verl.entropy_adv` on verl's advantages."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from verl_meds.verl.entropy_adv import EntropyAdvantageConfig, entropy_advantage
from verl_meds.verl.hooks import TrainerHook
from verl_meds.verl.step_data import StepData


def entropy_adv_config_from_trainer_config(config: DictConfig) -> EntropyAdvantageConfig:
    """The validated entropy-advantage options of a trainer config's top-level `entropy_advantage` block."""
    block = config.get("entropy_advantage", None)
    return EntropyAdvantageConfig.from_dict(OmegaConf.to_container(block, resolve=True) if block is not None else None)


class EntropyAdvantageHook(TrainerHook):
    """Adds min(alpha * H_t, |A_t| / kappa) to every response token's advantage after verl's estimator."""

    name = "entropy_advantage"

    def __init__(self, config: EntropyAdvantageConfig):
        self.config = config

    def after_advantage(self, step: StepData) -> None:
        from verl.workers.utils.padding import response_to_nested

        data = step.get("advantages", "entropy", "response_mask")
        padded = {name: value.to_padded_tensor(padding=0) for name, value in data.items()}  # (N, T) each
        shaped, metrics = entropy_advantage(
            padded["advantages"], padded["entropy"], padded["response_mask"], self.config.alpha, self.config.kappa
        )
        step.put({"advantages": response_to_nested(shaped, data["response_mask"])})
        step.metrics.update(metrics)
