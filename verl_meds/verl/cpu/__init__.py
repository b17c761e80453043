"""CPU support for verl 0.9: a `cpu` platform, and the two process-level fixes verl needs on CPU.

This subpackage is everything the project needs only to run verl on a CPU: this module (platform and fixes),
`hf_rollout` (an HF-transformers rollout server, verl rollout `hf`) and `vllm_extension` (the vLLM worker extension
of verl's vLLM rollout on CPU, `docs/vllm-cpu.md`). The MEDS method does not import it.

verl 0.9.1 trains on CPU once it is told the machine is a `cpu` platform. This module holds what that takes,
and nothing here is active unless CPU mode is requested (`VERL_MEDS_CPU=1`, which `enable_cpu_mode` sets
for the driver and every Ray worker). GPU users are never affected: the platform is registered only in CPU mode
and even then reports itself unavailable to verl's auto-detection, so only `VERL_PLATFORM=cpu` selects it.

What CPU mode changes, and why:

- **Platform** (`CPUPlatform`, registered with verl's `PlatformRegistry` as `cpu`): device `cpu`,
  collective backend `gloo`, and a device module (`CPUDeviceModule`) that answers verl's memory and
  stream calls with neutral values (0 bytes allocated, no-op synchronise).
- **Ray resources**: verl places its workers on Ray `GPU` bundles, so the driver's Ray cluster is started with
  one logical GPU (`ray_init.num_gpus=1`); no CUDA is ever touched, the resource is only a placement token.
- **Process-group backend**: verl builds `f"cpu:gloo,{device}:{backend}"`, which on CPU reads
  `cpu:gloo,cpu:gloo` and is rejected by `torch.distributed` ("Duplicate device type cpu").
  `_dedupe_backend` removes the repeated `device:backend` pair before the call reaches torch.
- **Engine lookup**: verl registers its FSDP engines for `cuda`/`npu` only; `VERL_ENGINE_DEVICE=cuda` makes the
  lookup return the FSDP engine, which then runs on whatever device the platform names (here `cpu`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
from types import ModuleType
from typing import Any

import torch

logger = logging.getLogger(__name__)

CPU_MODE_ENV = "VERL_MEDS_CPU"
"""Environment variable that switches CPU mode on (value `"1"`) in the driver and in every Ray worker."""

CPU_ENV_VARS: dict[str, str] = {
    CPU_MODE_ENV: "1",
    "VERL_PLATFORM": "cpu",
    "VERL_ENGINE_DEVICE": "cuda",
    # One intra-op thread per process: on small machines more threads measured ~10x slower (oversubscription).
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # TransferQueue's (de)serialisation threads; its default of 8 is capped (with a warning each call) on small hosts.
    "TQ_NUM_THREADS": "1",
    "RAY_DEDUP_LOGS": "1",
}
"""Environment set by `enable_cpu_mode`; forwarded to Ray workers through `ray_init.runtime_env`."""


def cpu_mode_requested() -> bool:
    """Whether CPU mode was asked for in this process (`VERL_MEDS_CPU=1`)."""
    return os.environ.get(CPU_MODE_ENV, "0").strip().lower() in ("1", "true", "yes")


def enable_cpu_mode() -> dict[str, str]:
    """Switch this process to CPU mode and return the environment that Ray workers must inherit.

    Returns:
        `dict[str, str]`: the variables of `CPU_ENV_VARS`, already exported to `os.environ`.
    """
    os.environ.update(CPU_ENV_VARS)
    install()
    return dict(CPU_ENV_VARS)


class _NullStream:
    """Stand-in for a device stream: every operation is immediate on CPU."""

    def synchronize(self) -> None:
        return None

    def wait_stream(self, other: Any) -> None:
        return None

    def wait_event(self, event: Any) -> None:
        return None

    def record_event(self, event: Any = None) -> _NullEvent:
        return _NullEvent()

    def __enter__(self) -> _NullStream:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _NullEvent:
    """Stand-in for a device event."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        return None

    def record(self, stream: Any = None) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def wait(self, stream: Any = None) -> None:
        return None

    def query(self) -> bool:
        return True

    def elapsed_time(self, other: Any) -> float:
        return 0.0


class CPUDeviceModule(ModuleType):
    """The `torch.cuda`-like module verl calls through `get_torch_device()`, answered for the CPU.

    Memory queries report 0 bytes used by the device allocator (CPU tensors live in process memory, which verl
    logs separately as `perf/cpu_memory_used_gb`); `mem_get_info` reports system memory. Unknown attributes
    raise `AttributeError` naming the attribute, so a verl release that needs more fails with a clear message.
    """

    Stream = _NullStream
    Event = _NullEvent

    def __init__(self) -> None:
        super().__init__("verl_meds_cpu_device")

    # device management
    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def current_device(self) -> int:
        return 0

    def set_device(self, device: Any) -> None:
        return None

    def get_device_name(self, device: Any = None) -> str:
        return "cpu"

    def synchronize(self, device: Any = None) -> None:
        return None

    def current_stream(self, device: Any = None) -> _NullStream:
        return _NullStream()

    def stream(self, stream: Any = None) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    # memory
    def empty_cache(self) -> None:
        return None

    def ipc_collect(self) -> None:
        return None

    def memory_allocated(self, device: Any = None) -> int:
        return 0

    def max_memory_allocated(self, device: Any = None) -> int:
        return 0

    def memory_reserved(self, device: Any = None) -> int:
        return 0

    def max_memory_reserved(self, device: Any = None) -> int:
        return 0

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        return None

    def set_per_process_memory_fraction(self, fraction: float, device: Any = None) -> None:
        return None

    def mem_get_info(self, device: Any = None) -> tuple[int, int]:
        """(free, total) system memory in bytes."""
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.available), int(vm.total)

    # random state
    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def get_rng_state(self, device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"verl_meds CPU mode: the CPU device module has no '{name}'. verl called a device function that CPU "
            "mode does not provide; please report it with your verl version."
        )


def _platform_base() -> type:
    from verl.plugin.platform.platform_base import PlatformBase

    return PlatformBase


def _make_platform_class() -> type:
    PlatformBase = _platform_base()

    class CPUPlatform(PlatformBase):
        """verl platform for CPU-only machines (device `cpu`, collectives over `gloo`)."""

        _device_module = CPUDeviceModule()

        @property
        def device_name(self) -> str:
            return "cpu"

        @property
        def vendor_name(self) -> str:
            return "cpu"

        @property
        def device_module(self) -> ModuleType:
            return self._device_module

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            # Never chosen by auto-detection: only an explicit VERL_PLATFORM=cpu selects it.
            return False

        def current_device(self) -> str:
            # verl passes this to `.to(...)` and `torch.device(...)`; "cpu" is valid for both, an int is not.
            return "cpu"

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            return None

        def synchronize(self, device_index: int | None = None) -> None:
            return None

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)
            random.seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            return None

        def empty_cache(self) -> None:
            return None

        def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
            return None, None

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        def ray_resource_name(self) -> str:
            return "GPU"

        def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
            return {"num_gpus": num_gpus}

        def ray_noset_envvars(self) -> list[str]:
            return ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"]

        def is_ipc_supported(self) -> bool:
            return False

        def rollout_env_vars(self) -> dict[str, str]:
            return {}

        def get_collective_module(self) -> Any:
            return None

        @contextlib.contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            return None

        def profiler_stop(self) -> None:
            return None

        def get_device_uuid(self, device_id: Any) -> str:
            return f"cpu-{os.getpid()}"

        def apply_model_patches(self, model_type: str) -> None:
            return None

        def cudart(self) -> Any:
            return None

    return CPUPlatform


def _dedupe_backend(backend: Any) -> Any:
    """Drop repeated `device:backend` pairs from a custom backend string (`cpu:gloo,cpu:gloo` -> `cpu:gloo`).

    Args:
        backend (`str` or `None`): the `backend` argument of `torch.distributed.init_process_group`.

    Returns:
        The same value with later duplicates of a device type removed; anything that is not a string unchanged.
    """
    if not isinstance(backend, str) or "," not in backend:
        return backend
    seen: dict[str, str] = {}
    for part in backend.split(","):
        part = part.strip()
        device = part.split(":", 1)[0] if ":" in part else part
        seen.setdefault(device, part)
    return ",".join(seen.values())


_installed = False


def install() -> None:
    """Register the CPU platform and the backend-string fix in this process (idempotent; CPU mode only).

    Raises:
        RuntimeError: when called outside CPU mode (`VERL_MEDS_CPU` not set), so GPU runs can never get it.
    """
    global _installed
    if not cpu_mode_requested():
        raise RuntimeError(f"verl_meds CPU support was asked to install but {CPU_MODE_ENV} is not '1'")
    if _installed:
        return
    for key, value in CPU_ENV_VARS.items():
        os.environ.setdefault(key, value)
    from verl.plugin.platform.platform_manager import PlatformRegistry

    if _installed:
        # The import above may have imported verl for the first time, which runs the verl_meds plugin, which has
        # installed already: registering again would replace the class of the platform verl has just cached.
        return
    PlatformRegistry.register(platform="cpu")(_make_platform_class())
    from verl.plugin.platform import platform_manager

    current = platform_manager._current_platform
    if current is not None and current.device_name != "cpu":
        # verl already resolved a platform in this process (e.g. verl code ran before CPU mode was asked for):
        # CPU mode is an explicit choice, so replace it through verl's own override.
        platform_manager.set_platform(PlatformRegistry.get("cpu")())

    import torch.distributed as dist

    original = dist.init_process_group
    if not getattr(original, "_verl_meds_dedupe", False):

        @functools.wraps(original)
        def init_process_group(*args: Any, **kwargs: Any) -> Any:
            if "backend" in kwargs:
                kwargs["backend"] = _dedupe_backend(kwargs["backend"])
            elif args:
                args = (_dedupe_backend(args[0]),) + tuple(args[1:])
            return original(*args, **kwargs)

        init_process_group._verl_meds_dedupe = True  # type: ignore[attr-defined]
        dist.init_process_group = init_process_group
    torch.set_num_threads(1)
    _installed = True
    logger.info("verl_meds: CPU platform installed (pid %s)", os.getpid())
