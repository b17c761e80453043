"""Registration of verl_meds with verl's extension points (idempotent, checks itself).

What is registered, and where it lives in verl (no verl source is patched):

- trainer mode `meds` (`verl.trainer.ppo.v1.register_trainer`): `verl_meds.verl.trainer.MEDSTrainer`.
- advantage estimator `meds` (`verl.trainer.ppo.core_algos.register_adv_est`): GRPO normalisation of the
  shaped rewards (`verl_meds.verl.advantage.compute_meds_outcome_advantage`).
- reward managers `meds_naive` and `meds_dapo` (`verl.experimental.reward_loop.reward_manager.register`): verl's
  `naive` and `dapo` plus the answer record MEDS reads (`verl_meds.verl.reward_manager`).
- CPU mode only (`VERL_MEDS_CPU=1`): platform `cpu` (`PlatformRegistry`) and rollout `hf`
  (`RolloutReplicaRegistry` plus verl's `(name, "async")` adapter table).
"""

from __future__ import annotations

import logging

from verl_meds.verl import cpu

logger = logging.getLogger(__name__)

TRAINER_MODE = "meds"
ADV_ESTIMATOR = "meds"
ROLLOUT_NAME = "hf"


def _register_rollout() -> None:
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    def _load_hf():
        from verl_meds.verl.cpu.hf_rollout import HFRolloutReplica

        return HFRolloutReplica

    RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_hf)
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "verl_meds.verl.cpu.hf_rollout.HFServerAdapter"


def register() -> None:
    """Register everything listed in the module docstring (safe to call more than once), then `check`.

    Raises:
        RuntimeError: when a registration is missing afterwards (see `check`).
    """
    # The platform must exist before anything asks verl for one (importing verl's trainer and engines does).
    if cpu.cpu_mode_requested():
        cpu.install()
        _register_rollout()
    from verl_meds.verl import advantage, reward_manager, trainer  # noqa: F401  (decorators register on import)

    check()


def check() -> None:
    """Verify that verl resolves each verl_meds name to verl_meds' own object.

    Raises:
        RuntimeError: naming the first registration that is missing or points elsewhere.
    """
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    from verl.trainer.ppo.v1 import get_trainer_cls

    from verl_meds.verl.advantage import compute_meds_outcome_advantage
    from verl_meds.verl.trainer import MEDSTrainer

    problems = []
    try:
        if get_trainer_cls(TRAINER_MODE) is not MEDSTrainer:
            problems.append(f"trainer mode '{TRAINER_MODE}' resolves to another class")
    except Exception as exc:  # verl raises its own error type for unknown names
        problems.append(f"trainer mode '{TRAINER_MODE}' is not registered ({exc})")
    try:
        if get_adv_estimator_fn(ADV_ESTIMATOR) is not compute_meds_outcome_advantage:
            problems.append(f"advantage estimator '{ADV_ESTIMATOR}' resolves to another function")
    except Exception as exc:
        problems.append(f"advantage estimator '{ADV_ESTIMATOR}' is not registered ({exc})")
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls

    from verl_meds.verl import reward_manager

    for name in reward_manager.WRAPPED.values():
        try:
            if not issubclass(get_reward_manager_cls(name), reward_manager.AnswerRecordMixin):
                problems.append(f"reward manager '{name}' resolves to another class")
        except ValueError as exc:
            problems.append(f"reward manager '{name}' is not registered ({exc})")
    if cpu.cpu_mode_requested():
        from verl.plugin.platform.platform_manager import PlatformRegistry
        from verl.workers.rollout.base import _ROLLOUT_REGISTRY

        if PlatformRegistry.get("cpu") is None:
            problems.append("CPU mode is on but platform 'cpu' is not registered")
        if (ROLLOUT_NAME, "async") not in _ROLLOUT_REGISTRY:
            problems.append(f"CPU mode is on but rollout '{ROLLOUT_NAME}' is not registered")
    if problems:
        raise RuntimeError("verl_meds plugin registration failed: " + "; ".join(problems))
