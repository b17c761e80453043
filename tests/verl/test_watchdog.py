"""The stage watchdog (verl_meds.verl.watchdog): a stuck stage ends with an error naming it; no vLLM needed."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from verl_meds.verl import watchdog
from verl_meds.verl.watchdog import GENERATE, WEIGHT_SYNC, StageTimeoutError, WatchdogConfig, run_stage

pytestmark = pytest.mark.requires_verl


RELEASE = threading.Event()
"""What the stuck stages below wait for: set after each test, so no thread outlives it."""


def hang_forever() -> None:
    RELEASE.wait()


@pytest.fixture(autouse=True)
def release_stuck_stages():
    RELEASE.clear()
    yield
    RELEASE.set()


def test_run_stage_returns_result_and_reraises_errors():
    assert run_stage("sum", lambda: 40 + 2, timeout_s=5.0) == 42
    assert run_stage("sum", lambda: 40 + 2, timeout_s=None) == 42

    def fail() -> None:
        raise KeyError("inner")

    with pytest.raises(KeyError, match="inner"):
        run_stage("failing stage", fail, timeout_s=5.0)


def test_stage_that_sleeps_forever_ends_with_an_error_naming_it():
    started = time.monotonic()
    with pytest.raises(
        StageTimeoutError, match=r"stage 'load buckets' did not finish within 0\.3 s; look here"
    ) as info:
        run_stage("load buckets", hang_forever, timeout_s=0.3, hint="look here")
    assert 0.3 <= time.monotonic() - started < 5.0
    assert info.value.stage == "load buckets" and info.value.timeout_s == 0.3
    assert isinstance(info.value, TimeoutError)


def test_config_block_defaults_and_validation():
    assert WatchdogConfig.from_custom(None) == WatchdogConfig.from_custom({}) == WatchdogConfig()
    custom = {"stage_watchdog": {"weight_sync_s": 5, "generate_s": None}}
    assert WatchdogConfig.from_custom(custom) == WatchdogConfig(weight_sync_s=5.0, generate_s=None)
    with pytest.raises(ValueError, match="unknown keys in stage_watchdog: \\['sync_s'\\]"):
        WatchdogConfig.from_custom({"stage_watchdog": {"sync_s": 5}})
    with pytest.raises(ValueError, match="weight_sync_s must be > 0"):
        WatchdogConfig(weight_sync_s=0)


def test_weight_sync_of_verl_is_bounded(monkeypatch):
    """The bound goes onto verl's CheckpointEngineManager.update_weights (restored after the test) and is read from
    the replicas' rollout config at each call."""
    from verl.checkpoint_engine import CheckpointEngineManager

    calls = []

    def stuck_update(self, global_steps=None):
        calls.append(global_steps)
        hang_forever()

    monkeypatch.setattr(CheckpointEngineManager, "update_weights", stuck_update)
    watchdog.watch_weight_sync()
    watchdog.watch_weight_sync()  # idempotent: wrapped once
    wrapped = CheckpointEngineManager.update_weights
    assert watchdog.is_watched(wrapped) and wrapped.__wrapped__ is stuck_update
    manager = object.__new__(CheckpointEngineManager)
    rollout_config = SimpleNamespace(custom={"stage_watchdog": {"weight_sync_s": 0.2}})
    manager.replicas = [SimpleNamespace(config=rollout_config)]
    with pytest.raises(
        StageTimeoutError, match=r"weight sync \(FSDP actor -> rollout server\).*weight_sync_s"
    ) as info:
        manager.update_weights(3)
    assert calls == [3] and info.value.stage == WEIGHT_SYNC and info.value.timeout_s == 0.2


def test_the_hook_module_bounds_weight_syncs_on_import(monkeypatch):
    """What verl's checkpoint_engine.custom_backend_module import does in the trainer's process."""
    import importlib
    import sys

    from verl.checkpoint_engine import CheckpointEngineManager

    monkeypatch.setattr(CheckpointEngineManager, "update_weights", lambda self, global_steps=None: "synced")
    monkeypatch.delitem(sys.modules, "verl_meds.verl.watchdog_hook", raising=False)
    assert not watchdog.is_watched(CheckpointEngineManager.update_weights)
    importlib.import_module("verl_meds.verl.watchdog_hook")
    assert watchdog.is_watched(CheckpointEngineManager.update_weights)
    manager = object.__new__(CheckpointEngineManager)
    manager.replicas = []
    assert manager.update_weights(1) == "synced"


def test_generate_of_the_watched_agent_loop_manager_is_bounded(monkeypatch):
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ

    monkeypatch.setattr(AgentLoopManagerTQ, "generate_sequences", lambda self, prompts: hang_forever())
    manager = object.__new__(watchdog.WatchedAgentLoopManager)
    manager.watchdog = WatchdogConfig(generate_s=0.2)
    with pytest.raises(StageTimeoutError, match=r"stage 'generate \(agent loop -> rollout server\)'") as info:
        manager.generate_sequences(prompts=None)
    assert info.value.stage == GENERATE

    monkeypatch.setattr(AgentLoopManagerTQ, "generate_sequences", lambda self, prompts: ("done", prompts))
    assert manager.generate_sequences("batch") == ("done", "batch")
