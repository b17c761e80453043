"""The recipe option `+rollout_engine=vllm_cpu` (docs/vllm-cpu.md) composes and validates; its model fits vLLM's CPU
attention. No vLLM is needed: tests/e2e/test_vllm_cpu.py runs the option for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.tiny_model import ATTENTION_PRESETS, VLLM_CPU_MIN_HEAD_DIM, TinyModelConfig, make_model

pytestmark = pytest.mark.requires_verl

CONFIG_DIR = Path(__file__).resolve().parents[2] / "recipes" / "meds" / "config"


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    base = ["setup=tiny_cpu", "data.train_files=train.parquet", "data.val_files=test.parquet"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose("paper", overrides=[*base, "actor_rollout_ref.model.path=m", *overrides])


@pytest.mark.parametrize("method", ["meds_dapo", "dapo", "grpo"])
def test_vllm_cpu_option_composes_and_validates(method):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils import omega_conf_to_dataclass
    from verl.utils.config import validate_config
    from verl.utils.import_utils import load_class_from_fqn

    from verl_meds.verl.watchdog import WatchdogConfig, WatchedAgentLoopManager

    config = compose(f"method={method}", "+rollout_engine=vllm_cpu")
    OmegaConf.resolve(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    rollout = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    assert rollout.name == "vllm" and rollout.mode == "async"
    assert not rollout.enable_sleep_mode and not rollout.free_cache_engine and rollout.enforce_eager
    assert rollout.dtype == "float32" and rollout.load_format == "dummy"
    assert rollout.checkpoint_engine.update_weights_bucket_megabytes == 16
    extension = rollout.engine_kwargs["vllm"]["worker_extension_cls"]
    assert extension == "verl_meds.verl.cpu.vllm_extension.CPUReloadWorkerExtension"
    manager = config.actor_rollout_ref.rollout.agent.agent_loop_manager_class
    assert load_class_from_fqn(manager, "AgentLoopManager") is WatchedAgentLoopManager
    assert WatchdogConfig.from_trainer_config(config) == WatchdogConfig(weight_sync_s=300.0, generate_s=900.0)
    assert WatchdogConfig.from_custom(rollout.custom) == WatchdogConfig(weight_sync_s=300.0, generate_s=900.0)
    assert rollout.checkpoint_engine.custom_backend_module == "verl_meds.verl.watchdog_hook"
    # Everything else is the tiny setup's: the option changes only the rollout engine.
    plain = compose(f"method={method}")
    assert config.data == plain.data and config.actor_rollout_ref.actor == plain.actor_rollout_ref.actor
    assert config.meds == plain.meds and config.algorithm == plain.algorithm


def test_vllm_cpu_model_layout():
    default, vllm_cpu = TinyModelConfig(), TinyModelConfig.with_attention("vllm_cpu")
    assert TinyModelConfig.with_attention("default") == default  # the default build (and its cache hash) is unchanged
    assert default.head_dim < VLLM_CPU_MIN_HEAD_DIM <= vllm_cpu.head_dim
    assert vllm_cpu.num_attention_heads == ATTENTION_PRESETS["vllm_cpu"]["num_attention_heads"]
    assert vllm_cpu.config_hash(0) != default.config_hash(0)
    sizes = [sum(p.numel() for p in make_model(c, 311, 2, 0).parameters()) for c in (default, vllm_cpu)]
    assert sizes[0] == sizes[1] == 435136
    with pytest.raises(ValueError, match="unknown attention preset 'wide'"):
        TinyModelConfig.with_attention("wide")
