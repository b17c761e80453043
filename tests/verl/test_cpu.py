"""Tests for `verl_meds.verl.cpu`: backend-string dedupe, CPU-mode guard, device module, and install() end to end.

`install()` registers a verl platform and wraps `torch.distributed.init_process_group` for the whole process, so
every test that installs runs in a fresh interpreter (`subprocess`) and reports what it saw as JSON.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("verl") is None:  # checked without importing verl, which takes seconds
    pytest.skip("verl is not installed", allow_module_level=True)

from verl_meds.verl import cpu  # noqa: E402  (imports torch only; verl is imported by install())

pytestmark = pytest.mark.requires_verl

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU_ENV = ("VERL_MEDS_CPU", "VERL_PLATFORM", "VERL_ENGINE_DEVICE")


def _env(extra_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CPU_ENV}
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **extra_env})
    return env


def _run_json_parallel(jobs: dict[str, tuple[str, dict[str, str]]]) -> dict[str, dict]:
    """Run each `(code, extra_env)` in a fresh interpreter, all at once; parse each one's last stdout line as JSON.

    CPU-mode variables of the test process are cleared first, then `extra_env` is applied.
    """
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=_env(extra_env),
        )
        for name, (code, extra_env) in jobs.items()
    }
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"subprocess {name!r} failed:\n{stderr[-4000:]}"
        results[name] = json.loads(stdout.strip().splitlines()[-1])
    return results


# ---------------------------------------------------------------------------------------------- _dedupe_backend


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        ("cpu:gloo,cpu:gloo", "cpu:gloo"),  # what verl builds on a CPU platform
        ("cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl"),  # what verl builds on GPU: untouched
        ("cpu:gloo, cpu:gloo", "cpu:gloo"),  # spaces around the comma
        ("cpu:gloo,cuda:nccl,cpu:gloo", "cpu:gloo,cuda:nccl"),  # a later duplicate of the first device type
        ("cpu:gloo,cpu:mpi", "cpu:gloo"),  # the first backend named for a device type wins
        ("gloo", "gloo"),  # a plain backend name
        ("nccl", "nccl"),
        ("", ""),
    ],
)
def test_dedupe_backend_strings(backend, expected):
    assert cpu._dedupe_backend(backend) == expected


@pytest.mark.parametrize("backend", [None, 3, ["cpu:gloo", "cpu:gloo"]])
def test_dedupe_backend_leaves_non_strings_alone(backend):
    assert cpu._dedupe_backend(backend) is backend


# ---------------------------------------------------------------------------------------------- CPU-mode guard


@pytest.mark.parametrize("value", [None, "0", "false", ""])
def test_install_refuses_outside_cpu_mode(monkeypatch, value):
    # install() checks the variable before touching anything, so this can run in the test process.
    if value is None:
        monkeypatch.delenv("VERL_MEDS_CPU", raising=False)
    else:
        monkeypatch.setenv("VERL_MEDS_CPU", value)
    original = torch.distributed.init_process_group
    assert not cpu.cpu_mode_requested()
    with pytest.raises(RuntimeError, match="VERL_MEDS_CPU"):
        cpu.install()
    assert torch.distributed.init_process_group is original


@pytest.mark.parametrize(("value", "requested"), [("1", True), ("true", True), (" YES ", True), ("2", False)])
def test_cpu_mode_requested_values(monkeypatch, value, requested):
    monkeypatch.setenv("VERL_MEDS_CPU", value)
    assert cpu.cpu_mode_requested() is requested


# ---------------------------------------------------------------------------------------------- device module


def test_device_module_memory_answers():
    module = cpu.CPUDeviceModule()
    free, total = module.mem_get_info()
    assert type(free) is int and type(total) is int
    assert 0 < free <= total
    assert module.memory_allocated() == 0 and module.max_memory_reserved(0) == 0
    assert module.is_available() is True and module.device_count() == 1 and module.current_device() == 0
    assert module.get_device_name() == "cpu"
    with module.stream(module.current_stream()):
        pass
    event = module.Event(enable_timing=True)
    event.record()
    assert event.query() is True and event.elapsed_time(module.Event()) == 0.0


def test_device_module_random_state_is_torch_cpu_state():
    module = cpu.CPUDeviceModule()
    module.manual_seed(123)
    first = torch.rand(3)
    state = module.get_rng_state()
    second = torch.rand(3)
    module.set_rng_state(state)
    assert torch.equal(torch.rand(3), second)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), first)


def test_device_module_unknown_attribute_names_it():
    module = cpu.CPUDeviceModule()
    with pytest.raises(AttributeError, match="'graph_pool_handle'"):
        module.graph_pool_handle  # noqa: B018
    assert not hasattr(module, "is_bf16_supported")


# ---------------------------------------------------------------------------------------------- install() end to end

INSTALL_CHECK = """
import json, logging, socket
import torch
import torch.distributed as dist

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

facts = {}
try:  # torch itself rejects the string verl builds on a CPU platform
    dist.init_process_group(backend="cpu:gloo,cpu:gloo", rank=0, world_size=1,
                            init_method=f"tcp://127.0.0.1:{free_port()}")
    facts["raw_duplicate_error"] = None
except ValueError as exc:
    facts["raw_duplicate_error"] = str(exc)

overrides = []
class Catch(logging.Handler):
    def emit(self, record):
        if "overriding" in record.getMessage():
            overrides.append(record.getMessage())
logging.getLogger("verl.plugin.platform.platform_manager").addHandler(Catch())

from verl_meds.verl import cpu
original = dist.init_process_group
cpu.install()
wrapped = dist.init_process_group
cpu.install()  # idempotent
facts["wrapped_once"] = dist.init_process_group is wrapped and wrapped.__wrapped__ is original

from verl.plugin.platform import PlatformRegistry, get_platform
from verl.utils.device import get_device_name, get_torch_device
facts["device_name"] = get_device_name()
facts["platform_is_registered_class"] = type(get_platform()) is PlatformRegistry.get("cpu")
facts["platform_overrides"] = overrides
facts["device_module"] = type(get_torch_device()).__name__
facts["backend_name"] = get_platform().communication_backend_name()
facts["auto_detectable"] = get_platform().is_platform_available(use_smi_check=True)
facts["torch_threads"] = torch.get_num_threads()

dist.init_process_group(backend="cpu:gloo,cpu:gloo", rank=0, world_size=1,
                        init_method=f"tcp://127.0.0.1:{free_port()}")
value = torch.tensor([2.5, -1.0])
dist.all_reduce(value)
facts["all_reduce"] = value.tolist()
facts["world_size"] = dist.get_world_size()
dist.destroy_process_group()
print(json.dumps(facts))
"""


REENTRY_CHECK = """
import json, logging
overrides = []
class Catch(logging.Handler):
    def emit(self, record):
        if "overriding cpu" in record.getMessage():
            overrides.append(record.getMessage())
logging.getLogger("verl.plugin.platform.platform_manager").addHandler(Catch())
logging.getLogger("verl.plugin.platform.platform_manager").setLevel(logging.INFO)
from verl_meds.verl import cpu
cpu.install()
from verl.plugin.platform import PlatformRegistry, get_platform
print(json.dumps({"overrides": overrides,
                  "same_class": type(get_platform()) is PlatformRegistry.get("cpu"),
                  "device": get_platform().device_name}))
"""


@pytest.fixture(scope="module")
def subprocess_facts() -> dict[str, dict]:
    """Both install checks, run side by side (each pays verl's import time once)."""
    return _run_json_parallel(
        {
            # Plugins off: install() alone (test_plugin.py covers the entry point).
            "install": (INSTALL_CHECK, {"VERL_MEDS_CPU": "1", "VERL_USE_EXTERNAL_PLUGINS": "none"}),
            # Plugins on: importing verl inside install() runs the plugin, which installs too.
            "reentry": (REENTRY_CHECK, {"VERL_MEDS_CPU": "1"}),
        }
    )


@pytest.fixture(scope="module")
def installed_facts(subprocess_facts) -> dict:
    return subprocess_facts["install"]


def test_torch_rejects_the_duplicate_backend_string(installed_facts):
    # The reason _dedupe_backend exists; if a torch release accepts the string, the wrapper becomes a no-op.
    assert "Duplicate device type cpu" in installed_facts["raw_duplicate_error"]


def test_install_selects_the_cpu_platform(installed_facts):
    assert installed_facts["device_name"] == "cpu"
    assert installed_facts["device_module"] == "CPUDeviceModule"
    assert installed_facts["backend_name"] == "gloo"
    assert installed_facts["platform_is_registered_class"] is True
    assert installed_facts["auto_detectable"] is False  # only VERL_PLATFORM=cpu selects it
    assert installed_facts["torch_threads"] == 1


def test_install_is_idempotent(installed_facts):
    assert installed_facts["wrapped_once"] is True
    assert installed_facts["platform_overrides"] == []


def test_process_group_accepts_verl_backend_string_after_install(installed_facts):
    assert installed_facts["world_size"] == 1
    assert installed_facts["all_reduce"] == [2.5, -1.0]


def test_install_before_importing_verl_registers_the_platform_once(subprocess_facts):
    # The platform verl caches must be the class left in the registry, registered exactly once.
    facts = subprocess_facts["reentry"]
    assert facts["device"] == "cpu"
    assert facts["overrides"] == []
    assert facts["same_class"] is True


def test_cpu_mode_replaces_a_platform_verl_resolved_earlier():
    """In one process (e.g. a test session), verl code may resolve the platform before CPU mode is asked for."""
    code = (
        "from verl.utils.device import get_device_name\n"
        "first = get_device_name()\n"
        "from verl_meds.verl import cpu\n"
        "cpu.enable_cpu_mode()\n"
        "print(first, get_device_name())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_MEDS_CPU", "VERL_PLATFORM")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first, after = out.stdout.split()[-2:]
    assert first != "cpu" and after == "cpu"
