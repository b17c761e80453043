"""Tests for `verl_meds.verl.plugin`: what `import verl` registers through the `verl.plugins` entry point.

Registration changes process-wide registries, so each mode runs in a fresh interpreter that imports verl and prints
what verl resolves as JSON. The CPU-mode and GPU-mode interpreters run side by side.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("verl") is None:
    pytest.skip("verl is not installed", allow_module_level=True)

pytestmark = pytest.mark.requires_verl

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU_ENV = ("VERL_MEDS_CPU", "VERL_PLATFORM", "VERL_ENGINE_DEVICE", "VERL_USE_EXTERNAL_PLUGINS")

PROBE = """
import json, sys
import torch.distributed as dist
import verl  # loads the verl.plugins entry points, among them verl_meds.verl.autoload

from verl.plugin.platform import PlatformRegistry
from verl.trainer.ppo import core_algos
from verl.trainer.ppo.v1 import get_trainer_cls
from verl.trainer.ppo.v1 import trainer_base
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, get_rollout_class
from verl.workers.rollout.replica import RolloutReplicaRegistry

facts = {"autoload_imported": "verl_meds.verl.autoload" in sys.modules}
from verl_meds.verl import plugin
from verl_meds.verl.advantage import compute_meds_outcome_advantage
from verl_meds.verl.trainer import MEDSTrainer

plugin.check()  # raises when something is missing
plugin.register()  # a second registration is harmless
facts["trainer_is_meds"] = get_trainer_cls("meds") is MEDSTrainer
facts["estimator_is_meds"] = core_algos.get_adv_estimator_fn("meds") is compute_meds_outcome_advantage
facts["cpu_platform_registered"] = PlatformRegistry.get("cpu") is not None
facts["hf_adapter_registered"] = ("hf", "async") in _ROLLOUT_REGISTRY
facts["hf_replica_registered"] = "hf" in RolloutReplicaRegistry._registry
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl_meds.verl.reward_manager import MEDSDAPORewardManager, MEDSNaiveRewardManager
facts["reward_managers_are_meds"] = (
    get_reward_manager_cls("meds_dapo") is MEDSDAPORewardManager
    and get_reward_manager_cls("meds_naive") is MEDSNaiveRewardManager
)
facts["init_process_group_wrapped"] = getattr(dist.init_process_group, "_verl_meds_dedupe", False)
if facts["hf_adapter_registered"]:
    from verl_meds.verl.cpu.hf_rollout import HFRolloutReplica, HFServerAdapter
    facts["hf_adapter_resolves"] = get_rollout_class("hf", "async") is HFServerAdapter
    facts["hf_replica_resolves"] = RolloutReplicaRegistry.get("hf") is HFRolloutReplica
if facts["cpu_platform_registered"]:
    from verl.utils.device import get_device_name
    facts["device_name"] = get_device_name()

# check() must notice a missing or foreign registration.
saved = trainer_base.TRAINER_REGISTRY.pop("meds")
try:
    plugin.check()
except RuntimeError as exc:
    facts["missing_trainer_error"] = str(exc)
trainer_base.TRAINER_REGISTRY["meds"] = saved
core_algos.ADV_ESTIMATOR_REGISTRY["meds"] = core_algos.compute_grpo_outcome_advantage
try:
    plugin.check()
except RuntimeError as exc:
    facts["foreign_estimator_error"] = str(exc)
core_algos.ADV_ESTIMATOR_REGISTRY["meds"] = compute_meds_outcome_advantage
from verl.experimental.reward_loop.reward_manager import registry as reward_registry
reward_registry.REWARD_MANAGER["meds_dapo"] = reward_registry.REWARD_MANAGER["dapo"]
try:
    plugin.check()
except RuntimeError as exc:
    facts["foreign_reward_manager_error"] = str(exc)
reward_registry.REWARD_MANAGER["meds_dapo"] = MEDSDAPORewardManager
print(json.dumps(facts))
"""


@pytest.fixture(scope="module")
def facts() -> dict[str, dict]:
    """What verl resolves after `import verl`, with CPU mode on ("cpu") and off ("gpu")."""
    base = {k: v for k, v in os.environ.items() if k not in CPU_ENV}
    base.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    envs = {"cpu": {**base, "VERL_MEDS_CPU": "1"}, "gpu": base}
    procs = {
        mode: subprocess.Popen(
            [sys.executable, "-c", PROBE],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=env,
        )
        for mode, env in envs.items()
    }
    results = {}
    for mode, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{mode} probe failed:\n{stderr[-4000:]}"
        results[mode] = json.loads(stdout.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("mode", ["cpu", "gpu"])
def test_entry_point_registers_trainer_estimator_and_reward_managers(facts, mode):
    assert facts[mode]["autoload_imported"] is True
    assert facts[mode]["trainer_is_meds"] is True
    assert facts[mode]["estimator_is_meds"] is True
    assert facts[mode]["reward_managers_are_meds"] is True


def test_cpu_mode_registers_platform_and_rollout(facts):
    cpu = facts["cpu"]
    assert cpu["cpu_platform_registered"] is True
    assert cpu["device_name"] == "cpu"
    assert cpu["init_process_group_wrapped"] is True
    assert cpu["hf_adapter_registered"] is True and cpu["hf_adapter_resolves"] is True
    assert cpu["hf_replica_registered"] is True and cpu["hf_replica_resolves"] is True


def test_gpu_users_get_no_cpu_platform(facts):
    gpu = facts["gpu"]
    assert gpu["cpu_platform_registered"] is False
    assert gpu["hf_adapter_registered"] is False
    assert gpu["hf_replica_registered"] is False
    assert gpu["init_process_group_wrapped"] is False


@pytest.mark.parametrize("mode", ["cpu", "gpu"])
def test_check_names_the_broken_registration(facts, mode):
    assert "trainer mode 'meds' is not registered" in facts[mode]["missing_trainer_error"]
    assert "advantage estimator 'meds' resolves to another function" in facts[mode]["foreign_estimator_error"]
    assert "reward manager 'meds_dapo' resolves to another class" in facts[mode]["foreign_reward_manager_error"]
