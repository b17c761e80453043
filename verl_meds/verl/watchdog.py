"""Stage watchdog: a rollout stage that stops making progress ends the run with an error naming the stage.

Without it, a failure inside verl's rollout can turn into a silent hang: in verl 0.9.1 the weight sync sends each
bucket over a ZeroMQ socket and waits for the vLLM worker's acknowledgement with a blocking `recv` and no
timeout, so when the worker fails to load a bucket the trainer waits forever (docs/vllm-cpu.md, "No silent hang").
The watchdog bounds the two rollout stages that the trainer waits on:

- **weight sync** (`CheckpointEngineManager.update_weights`: FSDP actor -> rollout servers, once before the first
  step and after every step), bounded by `weight_sync_s`;
- **generate** (`AgentLoopManager.generate_sequences`: the agent loop's rollouts of one training or validation
  batch), bounded by `generate_s`.

A stage that runs past its bound raises `StageTimeoutError` in the trainer, which ends the run; verl's
shutdown of Ray then ends the stuck workers. The stage runs in a helper thread while the trainer waits on it with a
deadline (a blocked `recv` or `ray.get` cannot be interrupted from outside); the helper thread is a daemon and
is abandoned with the run.

Switched on with verl's own extension points, no verl file changed (the recipe option
`recipes/meds/config/rollout_engine/vllm_cpu.yaml` sets all three keys):

- `actor_rollout_ref.rollout.checkpoint_engine.custom_backend_module=verl_meds.verl.watchdog_hook`: verl imports
  that module when it builds its `CheckpointEngineManager` (in the trainer's process, before the first weight
  sync), and the import bounds `CheckpointEngineManager.update_weights` in that process (`watch_weight_sync`);
  importing this module alone changes nothing;
- `actor_rollout_ref.rollout.agent.agent_loop_manager_class=verl_meds.verl.watchdog.WatchedAgentLoopManager`:
  verl's TransferQueue agent-loop manager whose `generate_sequences` runs under the watchdog;
- the bounds, in seconds (`null`: unbounded), in verl's free-form rollout block `custom`, read at every call:

```yaml
actor_rollout_ref:
  rollout:
    custom:
      stage_watchdog:
        weight_sync_s: 300
        generate_s: 900
```

The bounds cover the synchronous trainers (`sync` and the MEDS trainer), which call both stages from plain code.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONFIG_KEY = "stage_watchdog"
"""Key of the bounds in `actor_rollout_ref.rollout.custom` (verl's free-form block of the rollout config)."""

WEIGHT_SYNC = "weight sync (FSDP actor -> rollout server)"
GENERATE = "generate (agent loop -> rollout server)"
"""Stage names as they appear in `StageTimeoutError` messages."""


class StageTimeoutError(TimeoutError):
    """A watched stage did not finish within its bound.

    Attributes:
        stage (`str`): the stage's name (`WEIGHT_SYNC`, `GENERATE` or a caller's own).
        timeout_s (`float`): the bound in seconds.
    """

    def __init__(self, stage: str, timeout_s: float, hint: str = "") -> None:
        self.stage = stage
        self.timeout_s = timeout_s
        message = f"verl_meds stage watchdog: stage '{stage}' did not finish within {timeout_s:g} s"
        super().__init__(f"{message}; {hint}" if hint else message)


@dataclass(frozen=True)
class WatchdogConfig:
    """Bounds of the watched stages, in seconds; `None` leaves a stage unbounded.

    weight_sync_s (`float`, *optional*, defaults to `600.0`): one weight sync (a few seconds on CPU for the tiny
        model, well under a minute for 8B models on GPUs).
    generate_s (`float`, *optional*, defaults to `1800.0`): one batch of rollouts (training or validation).
    """

    weight_sync_s: float | None = 600.0
    generate_s: float | None = 1800.0

    def __post_init__(self) -> None:
        for name in ("weight_sync_s", "generate_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{CONFIG_KEY}.{name} must be > 0 or null, got {value}")

    @classmethod
    def from_custom(cls, custom: Any) -> WatchdogConfig:
        """The bounds in a rollout config's `custom` block (a dict, a DictConfig or `None`; defaults when missing).

        Raises:
            ValueError: on a key the block does not know, or a bound that is not positive.
        """
        block = custom.get(CONFIG_KEY) if custom else None
        values = dict(block) if block else {}
        unknown = sorted(set(values) - {"weight_sync_s", "generate_s"})
        if unknown:
            raise ValueError(f"unknown keys in {CONFIG_KEY}: {unknown}; valid keys: ['generate_s', 'weight_sync_s']")
        return cls(**{k: None if v is None else float(v) for k, v in values.items()})

    @classmethod
    def from_trainer_config(cls, config: Any) -> WatchdogConfig:
        """The bounds of a verl trainer config (`actor_rollout_ref.rollout.custom.stage_watchdog`)."""
        return cls.from_custom(config.actor_rollout_ref.rollout.get("custom"))


def run_stage(stage: str, fn: Callable[[], T], timeout_s: float | None, hint: str = "") -> T:
    """Run `fn()` and return its result, or raise `StageTimeoutError` once `timeout_s` has passed.

    `fn` runs in a daemon thread; the caller waits for it with a deadline. An exception raised by `fn` is
    re-raised in the caller unchanged. After a timeout the thread is left running (it cannot be stopped from
    outside) and its eventual result is dropped.

    Args:
        stage (`str`): name used in the error message and the log.
        fn (`Callable[[], T]`): the stage.
        timeout_s (`float`, *optional*): bound in seconds; `None` calls `fn` directly, with no thread.
        hint (`str`, *optional*): appended to the error message (what to look at, which key sets the bound).

    Returns:
        `T`: what `fn` returned.

    Raises:
        StageTimeoutError: when `fn` is still running after `timeout_s` seconds.

    >>> run_stage("add", lambda: 1 + 1, timeout_s=5.0)
    2
    """
    if timeout_s is None:
        return fn()
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc
        finally:
            done.set()

    started = time.monotonic()
    threading.Thread(target=target, name=f"stage-watchdog[{stage}]", daemon=True).start()
    if not done.wait(timeout_s):
        error = StageTimeoutError(stage, timeout_s, hint)
        logger.error("%s", error)
        raise error
    logger.debug("stage '%s' took %.2f s", stage, time.monotonic() - started)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def watched(stage: str, method: Callable[..., T], timeout_s: Callable[[Any], float | None], hint: str = ""):
    """`method` (a plain function taking `self`) wrapped in `run_stage`; `timeout_s(self)` is its bound.

    The wrapper is marked (`__stage_watchdog__`) so that wrapping twice is detected by `is_watched`.
    """

    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any) -> T:
        return run_stage(stage, lambda: method(self, *args, **kwargs), timeout_s(self), hint)

    wrapper.__stage_watchdog__ = stage
    return wrapper


def is_watched(method: Any) -> bool:
    """Whether `method` is a wrapper made by `watched`."""
    return getattr(method, "__stage_watchdog__", None) is not None


def _weight_sync_bound(manager: Any) -> float | None:
    """The weight-sync bound of a `CheckpointEngineManager`, from its replicas' rollout config."""
    replicas = getattr(manager, "replicas", None) or []
    return WatchdogConfig.from_custom(replicas[0].config.custom).weight_sync_s if replicas else None


def watch_weight_sync() -> None:
    """Bound verl's `CheckpointEngineManager.update_weights` in this process (idempotent).

    The bound is read at every call from the manager's rollout config (`custom.stage_watchdog.weight_sync_s`,
    default `WatchdogConfig.weight_sync_s`).
    """
    from verl.checkpoint_engine import CheckpointEngineManager

    if not is_watched(CheckpointEngineManager.update_weights):
        CheckpointEngineManager.update_weights = watched(
            WEIGHT_SYNC,
            CheckpointEngineManager.update_weights,
            _weight_sync_bound,
            hint=f"the actor or a rollout worker is stuck or died (see their logs); rollout.custom.{CONFIG_KEY}."
            "weight_sync_s sets the bound",
        )
        logger.info("stage watchdog: weight syncs are bounded")


def _agent_loop_manager_base():
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ

    return AgentLoopManagerTQ


class WatchedAgentLoopManager(_agent_loop_manager_base()):
    """verl's TransferQueue agent-loop manager with the stage watchdog (module docstring).

    Select it with `actor_rollout_ref.rollout.agent.agent_loop_manager_class=
    verl_meds.verl.watchdog.WatchedAgentLoopManager`; the bounds come from `rollout.custom.stage_watchdog`.
    """

    def __init__(self, config, *args: Any, **kwargs: Any) -> None:
        self.watchdog = WatchdogConfig.from_trainer_config(config)
        watch_weight_sync()  # the syncs after this point, also when custom_backend_module is not set
        super().__init__(config, *args, **kwargs)

    def generate_sequences(self, prompts):
        """verl's `generate_sequences`, bounded by `stage_watchdog.generate_s`."""
        return run_stage(
            GENERATE,
            lambda: super(WatchedAgentLoopManager, self).generate_sequences(prompts),
            self.watchdog.generate_s,
            hint="a rollout server or agent-loop worker is stuck or died (see their logs); "
            f"rollout.custom.{CONFIG_KEY}.generate_s sets the bound",
        )
