"""Hydra entry point: ``python -m verl_meds.verl.main [--config-path DIR --config-name NAME] key=value ...``.

It composes verl's own ``ppo_trainer`` config with the ``meds`` block (see ``config/meds_trainer.yaml``), switches
CPU mode on when ``trainer.device=cpu``, registers verl_meds with verl (and checks the registration), validates the
MEDS options, and hands over to verl's ``run_ppo`` with verl's V1 task runner. Nothing of verl is copied: the
training loop, Ray start-up and checkpointing are verl's.
"""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

logger = logging.getLogger(__name__)

FORWARDED_ENV = ("VERL_FILE_LOGGER_PATH", "VERL_FILE_LOGGER_ROOT")
"""Driver environment variables passed on to verl's Ray actors (where verl's file logger runs)."""


def prepare(config: DictConfig) -> DictConfig:
    """Set up the process for ``config`` and validate it (no Ray start). Returns the same, completed config.

    Raises:
        ValueError: for an invalid ``meds`` block (names the field, the value and what is allowed).
        RuntimeError: when the verl_meds registration with verl is incomplete.
    """
    from verl_meds.verl import cpu

    env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
    if config.trainer.device == "cpu":
        env.update(cpu.enable_cpu_mode())
    if env:
        with open_dict(config):
            ray_init = config.ray_kwargs.setdefault("ray_init", {})
            runtime_env = ray_init.setdefault("runtime_env", {})
            env_vars = runtime_env.setdefault("env_vars", {})
            for key, value in env.items():
                env_vars[key] = value
    from verl_meds.verl import plugin

    plugin.register()
    if config.trainer.device == "cpu":
        from verl.utils.device import get_device_name

        if get_device_name() != "cpu":
            raise RuntimeError(
                f"trainer.device=cpu but verl already chose platform '{get_device_name()}'; "
                f"export {cpu.CPU_MODE_ENV}=1 before starting (the recipes do)"
            )
    from verl_meds.verl.trainer import meds_config_from_trainer_config

    meds_config_from_trainer_config(config)  # validates; raises ValueError naming the bad field
    return config


def run(config: DictConfig) -> None:
    """Prepare, validate with verl's own checks, and train through verl's ``run_ppo``."""
    prepare(config)
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    if not config.trainer.use_v1:
        raise ValueError("verl_meds needs verl's V1 trainer: trainer.use_v1 must be true")
    logger.info("verl_meds: starting verl (pid %s)", os.getpid())
    run_ppo(config, task_runner_class=TaskRunnerV1)


@hydra.main(config_path="config", config_name="meds_trainer", version_base=None)
def main(config: DictConfig) -> None:
    """Hydra main: compose, then :func:`run`."""
    run(config)


if __name__ == "__main__":
    main()
