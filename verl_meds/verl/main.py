"""Hydra entry point: `python -m verl_meds.verl.main [--config-path DIR --config-name NAME] key=value ...`.

It composes verl's own `ppo_trainer` config with the `meds` block (see `config/meds_trainer.yaml`), switches
CPU mode on when `trainer.device=cpu`, registers verl_meds with verl (and checks the registration), validates the
MEDS options, and hands over to verl's `run_ppo` with verl's V1 task runner. Nothing of verl is copied: the
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


def _select(config: DictConfig, key: str, default=None):
    return OmegaConf.select(config, key, default=default)


def unsupported_settings(config: DictConfig) -> list[str]:
    """Settings of `config` that MEDS cannot serve, each as `"field=value: why, and what to do"`.

    Checked before Ray starts (`prepare`), so that a run does not fail after the model loaded and a first
    rollout finished. Feature capture (`meds.enable` with a feature memory, or `meds_dump`) reads hidden states
    in the actor's log-prob recompute, which rules out: Ulysses sequence parallelism (each rank holds a slice of
    every sequence, not the answer positions), verl's fused log-prob kernels (the forward returns no per-layer
    states to the hooks), rollout-correction bypass mode (no recompute at all) and non-FSDP actor strategies. The
    `meds` estimator cannot take verl's multi-turn session grouping (only `grpo` gets it).

    Args:
        config (`DictConfig`): a composed verl trainer config with the top-level `meds` block.

    Returns:
        `list[str]`: empty when every setting is supported.
    """
    problems = []
    estimator = str(_select(config, "algorithm.adv_estimator", ""))
    if estimator == "meds" and bool(_select(config, "actor_rollout_ref.rollout.multi_turn.enable", False)):
        problems.append(
            "actor_rollout_ref.rollout.multi_turn.enable=true: algorithm.adv_estimator=meds does not support it; "
            "verl groups multi-turn sessions by their last output only for its own 'grpo' estimator. Turn multi_turn "
            "off."
        )
    meds = _select(config, "meds", None)
    method = str(_select(config, "meds.clustering.method", "hdbscan"))
    dump = bool(_select(config, "meds_dump.enable", False))
    captures = bool(meds is not None and _select(config, "meds.enable", False)) and (method != "answer" or dump)
    if not captures:
        return problems
    for key in (
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
        "actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size",
    ):
        size = _select(config, key, 1)
        if size is not None and int(size) > 1:
            problems.append(
                f"{key}={size}: MEDS feature capture needs whole sequences on each rank; set it to 1 (or use "
                "meds.clustering.method=answer, which needs no features)."
            )
    if bool(_select(config, "actor_rollout_ref.model.use_fused_kernels", False)):
        problems.append(
            "actor_rollout_ref.model.use_fused_kernels=true: the fused log-prob kernels give the feature hooks no "
            "per-layer states; set it to false."
        )
    if bool(_select(config, "algorithm.rollout_correction.bypass_mode", False)):
        problems.append(
            "algorithm.rollout_correction.bypass_mode=true: bypass mode skips the log-prob recompute in which MEDS "
            "captures its features; set it to false."
        )
    strategy = str(_select(config, "actor_rollout_ref.actor.strategy", "fsdp"))
    if strategy not in ("fsdp", "fsdp2"):
        problems.append(
            f"actor_rollout_ref.actor.strategy={strategy}: MEDS captures features on FSDP workers only; use fsdp or "
            "fsdp2."
        )
    return problems


def check_supported_settings(config: DictConfig) -> None:
    """Raise on the first settings that MEDS cannot serve (`unsupported_settings`).

    Raises:
        ValueError: naming every unsupported field, its value and what to do.
    """
    problems = unsupported_settings(config)
    if problems:
        raise ValueError("verl_meds cannot serve these settings:\n- " + "\n- ".join(problems))


def locate_in_reward_workers(config: DictConfig) -> bool:
    """With MEDS or outcome-based exploration on, swap verl's `naive` / `dapo` reward manager for the same manager
    that also records each response's answer location (`verl_meds.verl.reward_manager`), so the trainer never scans
    the responses.

    Returns:
        `bool`: whether the reward workers record the answers (False: neither method on, or another reward manager;
        the hooks then locate the answers on the driver, which is logged).
    """
    from verl_meds.verl.explore import exploration_config_from_trainer_config
    from verl_meds.verl.hooks.meds import meds_config_from_trainer_config
    from verl_meds.verl.reward_manager import WRAPPED

    manager = config.reward.reward_manager
    if not (meds_config_from_trainer_config(config).enable or exploration_config_from_trainer_config(config).enable):
        return False
    if manager.get("source", "register") != "register":
        logger.warning(
            "verl_meds: reward manager from %s; the trainer locates the answers on the driver", manager.source
        )
        return False
    if manager.name in WRAPPED.values():
        return True
    if manager.name not in WRAPPED:
        logger.warning(
            "verl_meds: reward manager '%s' does not record answer locations (only %s do); the trainer locates "
            "the answers on the driver",
            manager.name,
            ", ".join(WRAPPED),
        )
        return False
    logger.info(
        "verl_meds: reward manager '%s' -> '%s' (records answer locations)", manager.name, WRAPPED[manager.name]
    )
    with open_dict(config):
        manager.name = WRAPPED[manager.name]
    return True


def prepare(config: DictConfig) -> DictConfig:
    """Set up the process for `config` and validate it (no Ray start). Returns the same, completed config.

    Raises:
        ValueError: for an invalid `meds` or `exploration` block (names the field, the value and what is allowed),
            or a setting MEDS cannot serve (`check_supported_settings`).
        RuntimeError: when the verl_meds registration with verl is incomplete.
    """
    from verl_meds.verl import cpu

    env = {key: os.environ[key] for key in FORWARDED_ENV if key in os.environ}
    if config.trainer.device == "cpu":
        env.update(cpu.enable_cpu_mode())
    if env:
        with open_dict(config):
            for key, value in env.items():
                OmegaConf.update(config, f"ray_kwargs.ray_init.runtime_env.env_vars.{key}", value, force_add=True)
    from verl_meds.verl import plugin

    plugin.register()
    if config.trainer.device == "cpu":
        from verl.utils.device import get_device_name

        if get_device_name() != "cpu":
            raise RuntimeError(
                f"trainer.device=cpu but verl already chose platform '{get_device_name()}'; "
                f"export {cpu.CPU_MODE_ENV}=1 before starting (the recipes do)"
            )
    from verl_meds.verl.hooks.meds import meds_config_from_trainer_config

    meds = meds_config_from_trainer_config(config)  # validates; raises ValueError naming the bad field
    from verl_meds.verl.explore import exploration_config_from_trainer_config

    exploration_config_from_trainer_config(config)  # the same for the `exploration` block
    check_supported_settings(config)
    locate_in_reward_workers(config)
    model_path = os.path.expanduser(str(config.actor_rollout_ref.model.path))
    if meds.enable and os.path.isdir(model_path):
        # Layer numbers that the model does not have fail here, before Ray starts (hub ids are checked at start-up).
        from verl_meds.verl.hooks.meds import model_num_layers

        meds.features.resolve_layers(model_num_layers(config))
    return config


def run(config: DictConfig) -> None:
    """Prepare, validate with verl's own checks, and train through verl's `run_ppo`."""
    prepare(config)
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    if not config.trainer.use_v1:
        raise ValueError("verl_meds needs verl's V1 trainer: trainer.use_v1 must be true")
    _wait_for_free_resources(config)
    logger.info("verl_meds: starting verl (pid %s)", os.getpid())
    env_vars = OmegaConf.to_container(config.ray_kwargs.get("ray_init", {}).get("runtime_env", {}).get("env_vars", {}))
    # When Ray is already running (several runs in one process, as in the tests), ray_init's runtime_env is not
    # applied; giving it to the task runner as well makes verl's actors (its children) inherit it either way.
    runner = _OwnedRunner(TaskRunnerV1.options(runtime_env={"env_vars": env_vars}) if env_vars else TaskRunnerV1)
    placement_groups_before = _placement_group_ids()
    try:
        run_ppo(config, task_runner_class=runner)
    finally:
        runner.kill()
        _remove_placement_groups(_placement_group_ids() - placement_groups_before)


def _placement_group_ids() -> set[str]:
    import ray

    if not ray.is_initialized():
        return set()
    return {pg_id for pg_id, info in ray.util.placement_group_table().items() if info.get("state") != "REMOVED"}


def _remove_placement_groups(pg_ids: set[str]) -> None:
    """Remove the placement groups a finished run created (Ray keeps them after their creator actor is killed)."""
    import ray
    from ray.util.placement_group import PlacementGroup

    for pg_id in pg_ids:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(pg_id)))


class _OwnedRunner:
    """Hands verl's `run_ppo` its task-runner actor class and keeps the handle, so the run's actors can be ended.

    verl's task runner owns every actor of the run (workers, rollout servers, TransferQueue). Killing it when
    `run_ppo` returns releases their Ray resources at once, which lets several runs share one Ray cluster.
    """

    def __init__(self, actor_class) -> None:
        self._actor_class = actor_class
        self.handle = None

    def remote(self, *args, **kwargs):
        self.handle = self._actor_class.remote(*args, **kwargs)
        return self.handle

    def options(self, **kwargs):
        return _OwnedRunner(self._actor_class.options(**kwargs))._adopt(self)

    def _adopt(self, parent: _OwnedRunner) -> _OwnedRunner:
        original = self.remote

        def remote(*args, **kwargs):
            parent.handle = original(*args, **kwargs)
            return parent.handle

        self.remote = remote
        return self

    def kill(self) -> None:
        import ray

        if self.handle is not None:
            ray.kill(self.handle)
            self.handle = None


def _wait_for_free_resources(config: DictConfig, timeout_seconds: float = 120.0) -> None:
    """In a Ray cluster shared by several runs, wait until the previous run's workers have released their GPUs."""
    import time

    import ray

    if not ray.is_initialized():
        return
    needed = config.trainer.n_gpus_per_node * config.trainer.nnodes
    deadline = time.monotonic() + timeout_seconds

    def free_gpus() -> float:
        # The same per-node view verl's resource-pool check reads (ray.available_resources() can lag behind it).
        per_node = ray._private.state.available_resources_per_node()
        return sum(info.get("GPU", 0.0) for info in per_node.values())

    while free_gpus() < needed and time.monotonic() < deadline:
        time.sleep(0.5)


@hydra.main(config_path="config", config_name="meds_trainer", version_base=None)
def main(config: DictConfig) -> None:
    """Hydra main: compose, then `run`."""
    run(config)


if __name__ == "__main__":
    main()
