"""Every verl, TransferQueue, torch and Ray name the glue relies on that is private, or whose shape it assumes.

verl_meds overrides six private `PPOTrainerSync` methods, swaps the actor engine's class at runtime, writes verl's
private registries in CPU mode and reads fields and tags that verl's agent loop writes. None of that is verl's public
API, so a verl upgrade can move any of it. Each case below names one assumption, where the glue makes it and what to
do when it fails; a verl upgrade that breaks the glue fails here with that message, not deep inside a training run.
"""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("verl")

pytestmark = pytest.mark.requires_verl


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _trainer_methods():
    from verl.trainer.ppo.v1 import PPOTrainerSync

    wanted = {
        "_compute_old_log_prob": ["self", "batch", "metrics"],
        "_compute_advantage": ["self", "batch", "metrics"],
        "_init_resource_pool_mgr": ["self"],
        "_resolve_filter_groups_metric": ["self"],
        "_save_checkpoint": ["self"],
        "_load_checkpoint": ["self"],
    }
    for name, params in wanted.items():
        method = getattr(PPOTrainerSync, name, None)
        assert method is not None, f"PPOTrainerSync.{name} is gone"
        assert _params(method) == params, f"PPOTrainerSync.{name}{inspect.signature(method)}, expected {params}"


def _trainer_step_order():
    from verl.trainer.ppo.v1 import PPOTrainerSync

    source = inspect.getsource(PPOTrainerSync._step_once)
    calls = [source.find(f"self.{name}(") for name in ("_compute_old_log_prob", "_compute_advantage")]
    assert -1 not in calls and calls[0] < calls[1], "_step_once() no longer calls old_log_prob before advantage"
    reward = source.find("self._compute_reward_colocate(")
    assert reward == -1 or reward < calls[0], "the reward is no longer written before old_log_prob"


def _trainer_attributes():
    from verl.trainer.ppo.utils import Role
    from verl.trainer.ppo.v1 import get_trainer_cls, register_trainer, trainer_base

    for role in ("ActorRollout", "ActorRolloutRef", "Actor"):
        assert hasattr(Role, role), f"Role.{role} is gone"
    assert callable(register_trainer) and callable(get_trainer_cls)
    source = inspect.getsource(trainer_base)
    for attribute in ("self.tokenizer", "self.global_steps", "self.role_worker_mapping", "timing_raw"):
        assert attribute in source, f"PPOTrainer no longer has {attribute}"


def _kv_batch_meta():
    import dataclasses

    from transfer_queue.metadata import KVBatchMeta

    fields = {f.name for f in dataclasses.fields(KVBatchMeta)}
    assert {"keys", "tags", "partition_id", "extra_info"} <= fields, f"KVBatchMeta fields: {sorted(fields)}"


def _tq_calls():
    import transfer_queue as tq

    assert _params(tq.kv_batch_get)[:3] == ["keys", "partition_id", "select_fields"], inspect.signature(
        tq.kv_batch_get
    )
    assert {"keys", "partition_id", "fields"} <= set(_params(tq.kv_batch_put)), inspect.signature(tq.kv_batch_put)


def _agent_loop_fields_and_tags():
    from verl.trainer.ppo.v1 import agent_loop_tq

    source = inspect.getsource(agent_loop_tq)
    for needle in ('"prompt_len"', 'field["prompts"]', 'field["responses"]', "response_mask", "extra_fields"):
        assert needle in source, f"verl's agent loop no longer writes {needle}"


def _padding_rows():
    from verl.trainer.ppo import padding_utils

    source = inspect.getsource(padding_utils.construct_minimal_padding_template)
    assert "is_padding=True" in source and "prompt_len=" in source, "padding rows no longer tagged is_padding"


def _response_to_nested():
    from verl.workers.utils.padding import response_to_nested

    assert _params(response_to_nested)[:2] == ["tensor", "response_mask"] or len(_params(response_to_nested)) >= 2


def _estimator_registry():
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.v1 import utils

    assert callable(core_algos.register_adv_est) and callable(core_algos.get_adv_estimator_fn)
    source = inspect.getsource(utils.compute_advantage_for_multi_trajectories)
    assert "config=config" in source, "registered estimators no longer receive the algorithm config"


def _engine_forward_step():
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    params = _params(FSDPEngine.forward_step)
    assert params[:4] == ["self", "micro_batch", "loss_function", "forward_only"], params


def _worker_class():
    from verl.workers.engine_workers import ActorRolloutRefWorker

    assert hasattr(ActorRolloutRefWorker, "init_model"), "ActorRolloutRefWorker.init_model is gone"
    assert "self.actor" in inspect.getsource(ActorRolloutRefWorker), "the worker no longer holds self.actor"


def _non_tensor_data():
    from verl.utils import tensordict_utils as tu

    assert {"data", "key", "default"} <= set(_params(tu.get_non_tensor_data))


def _platform_internals():
    from verl.plugin.platform import platform_manager
    from verl.plugin.platform.platform_base import PlatformBase
    from verl.plugin.platform.platform_manager import PlatformRegistry

    assert hasattr(platform_manager, "_current_platform"), "platform_manager._current_platform is gone"
    assert callable(platform_manager.set_platform)
    assert callable(PlatformRegistry.register) and callable(PlatformRegistry.get)
    assert inspect.isclass(PlatformBase)


def _rollout_registries():
    from verl.workers.rollout import base
    from verl.workers.rollout.base import BaseRollout
    from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

    assert isinstance(base._ROLLOUT_REGISTRY, dict), "verl.workers.rollout.base._ROLLOUT_REGISTRY is not a dict"
    assert callable(RolloutReplicaRegistry.register)
    assert hasattr(RolloutReplica, "launch_servers") and hasattr(RolloutReplica, "rollout_worker_use_gpu")
    assert _params(BaseRollout.__init__)[:4] == ["self", "config", "model_config", "device_mesh"]
    assert TokenOutput is not None


def _ray_private_state():
    import ray._private.state as state

    assert callable(state.available_resources_per_node), "ray._private.state.available_resources_per_node is gone"


def _torch_process_group():
    import torch.distributed as dist

    assert "backend" in _params(dist.init_process_group)


CONTRACT = {
    "PPOTrainerSync private methods the trainer overrides (verl_meds/verl/trainer.py)": _trainer_methods,
    "verl's step order: reward, old_log_prob, advantage (hooks assume it)": _trainer_step_order,
    "PPOTrainer attributes and Role names the trainer reads": _trainer_attributes,
    "TransferQueue KVBatchMeta fields (verl_meds/verl/step_data.py)": _kv_batch_meta,
    "TransferQueue kv_batch_get / kv_batch_put signatures (step_data.py)": _tq_calls,
    "agent-loop fields and the prompt_len tag (hooks/meds.py)": _agent_loop_fields_and_tags,
    "synthetic padding rows tagged is_padding (StepData.real)": _padding_rows,
    "response_to_nested (hooks/exploration.py, hooks/entropy.py)": _response_to_nested,
    "estimator registry and config passing (advantage.py)": _estimator_registry,
    "FSDP engine forward_step signature (worker.py mixin)": _engine_forward_step,
    "ActorRolloutRefWorker.init_model and self.actor (worker.py engine swap)": _worker_class,
    "tensordict_utils.get_non_tensor_data (worker.py)": _non_tensor_data,
    "platform manager internals (cpu/__init__.py)": _platform_internals,
    "rollout registries and base classes (plugin.py, cpu/hf_rollout.py)": _rollout_registries,
    "ray._private.state (main.py, waiting for free resources)": _ray_private_state,
    "torch.distributed.init_process_group (cpu/__init__.py backend dedupe)": _torch_process_group,
}


@pytest.mark.parametrize("assumption", list(CONTRACT))
def test_verl_still_provides(assumption):
    try:
        CONTRACT[assumption]()
    except (AssertionError, AttributeError, ImportError, TypeError, OSError) as exc:
        pytest.fail(f"verl upgrade broke an assumption of verl_meds: {assumption}: {type(exc).__name__}: {exc}")
