"""vLLM worker extension that lets verl's weight sync load into vLLM's CPU model (docs/vllm-cpu.md).

verl 0.9.1 syncs the FSDP actor's weights into its vLLM rollout server every step: the actor sends buckets of named
tensors over ZeroMQ (through shared memory on CPU), and verl's worker extension (`vLLMColocateWorkerExtension`)
hands each bucket to `model.load_weights` of the live vLLM model. On vLLM's CPU platform that load fails: after the
first load vLLM repacks every linear layer's weight for its CPU kernels and leaves an empty parameter without a
`weight_loader` (`AttributeError: 'Parameter' object has no attribute 'weight_loader'`). vLLM's own in-place
reload of a running model (`model_runner.reload_weights`, layer-wise: it restores the layers' loading form, loads,
and repacks again) handles those layers.

`CPUReloadWorkerExtension` is verl's extension with one method replaced, `update_weights_from_ipc`:

1. receive verl's buckets with verl's own receiver, copying each tensor (the bucket buffer is reused for the next
   bucket), with a bound on each wait for the trainer (`VERL_MEDS_VLLM_RECEIVE_TIMEOUT_S`, default 300 s);
2. after the last bucket, load them all with `model_runner.reload_weights`.

Errors never leave the trainer waiting: a failure while copying a bucket is held until the last bucket has been
acknowledged, and the reload runs only after that, so verl's sender (which waits for each acknowledgement without a
timeout) always finishes and the error reaches the trainer through verl's `collective_rpc` call. LoRA syncs are
refused.

It is selected by configuration alone, in the vLLM engine arguments that verl forwards:
`actor_rollout_ref.rollout.engine_kwargs.vllm.worker_extension_cls=verl_meds.verl.cpu.vllm_extension.CPUReloadWorkerExtension`
(`recipes/meds/config/rollout_engine/vllm_cpu.yaml`). No verl or vLLM file is changed.

Importing this module needs neither verl nor vLLM: the class is built on first access (vLLM resolves it by name
inside its worker process), so the digest helpers below also serve tests that run without vLLM.

With `VERL_MEDS_VLLM_SYNC_LOG=<file>` every sync appends one JSON line: sync index, tensors, bytes,
`weights_digest` of what was loaded (computed only then), and the receive and reload times. The e2e test compares
these digests with the actor's checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

RECEIVE_TIMEOUT_ENV = "VERL_MEDS_VLLM_RECEIVE_TIMEOUT_S"
"""Seconds the vLLM worker waits for each message of a weight sync before it gives up (default 300)."""

SYNC_LOG_ENV = "VERL_MEDS_VLLM_SYNC_LOG"
"""When set, the path of a JSON-lines file that gets one record per weight sync."""

DEFAULT_RECEIVE_TIMEOUT_S = 300.0


def weights_digest(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over the tensors sorted by name: each name, dtype, shape and raw bytes.

    Two state dicts have the same digest exactly when they hold the same names with bit-identical values.

    Args:
        named_tensors (`Iterable[tuple[str, torch.Tensor]]`): `(name, tensor)` pairs; the names must be unique.

    Returns:
        `str`: 64 hex digits.

    >>> weights_digest([("b", torch.zeros(2)), ("a", torch.ones(1))]) == weights_digest(
    ...     [("a", torch.ones(1)), ("b", torch.zeros(2))])
    True
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def receive_timeout_s() -> float:
    """`float`: the bound of `RECEIVE_TIMEOUT_ENV` (default `DEFAULT_RECEIVE_TIMEOUT_S`).

    Raises:
        ValueError: when the variable is set to something that is not a positive number.
    """
    raw = os.environ.get(RECEIVE_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_RECEIVE_TIMEOUT_S
    value = float(raw)
    if not value > 0:
        raise ValueError(f"{RECEIVE_TIMEOUT_ENV} must be > 0, got {raw!r}")
    return value


def _append_sync_record(record: dict[str, Any]) -> None:
    path = os.environ.get(SYNC_LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


SHM_DIR = Path("/dev/shm")
SHM_PATTERNS = ("psm_*", "verl_weights_*", "sem.loky-*")
"""Shared-memory files a vLLM CPU run creates: vLLM's message queues (`psm_*`, Python's unnamed segments), verl's
weight buckets, and the semaphores of joblib's worker pools in vLLM's processes. When Ray ends the rollout server,
they stay behind (about 400 MB per run)."""


def shm_segments() -> set[str]:
    """`set[str]`: names of the segments in `SHM_DIR` that match `SHM_PATTERNS`."""
    return {path.name for pattern in SHM_PATTERNS for path in SHM_DIR.glob(pattern)}


def segments_in_use() -> set[str]:
    """Names of `SHM_DIR` segments that a live process has open or mapped (those readable in /proc)."""
    used: set[str] = set()
    prefix = str(SHM_DIR) + "/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith(prefix):
                    used.add(target[len(prefix) :].split(" ")[0])
            for line in (proc / "maps").read_text().splitlines():
                fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
                path = fields[5] if len(fields) == 6 else ""
                if path.startswith(prefix):
                    used.add(path[len(prefix) :].split(" ")[0])
        except OSError:  # the process ended, or is not ours to read
            continue
    return used


def remove_stale_shm(before: set[str]) -> list[str]:
    """Remove the segments that appeared since `before` (a `shm_segments` snapshot) and no process uses.

    Segments that existed before, or that a live process still has open or mapped (another run's), are kept.

    Args:
        before (`set[str]`): segment names taken before the run.

    Returns:
        `list[str]`: the names removed, sorted.
    """
    candidates = shm_segments() - set(before)
    if not candidates:
        return []
    removed = []
    for name in sorted(candidates - segments_in_use()):
        try:
            (SHM_DIR / name).unlink()
            removed.append(name)
        except OSError:
            continue
    return removed


def _build_receiver_class():
    """verl's `BucketedWeightReceiver` whose waits are bounded (a stalled sender raises instead of hanging)."""
    import zmq
    from verl.workers.rollout.vllm_rollout.bucketed_weight_transfer import BucketedWeightReceiver

    class BoundedWeightReceiver(BucketedWeightReceiver):
        def __init__(self, *args: Any, timeout_s: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.timeout_s = timeout_s

        def _init_socket(self) -> None:
            super()._init_socket()
            self.socket.setsockopt(zmq.RCVTIMEO, int(self.timeout_s * 1000))

        def receive_weights(self, on_bucket_received) -> None:
            try:
                super().receive_weights(on_bucket_received)
            except zmq.Again as exc:
                raise TimeoutError(
                    f"verl_meds vLLM CPU weight sync: stage 'receive bucket' got no message from the trainer within "
                    f"{self.timeout_s:g} s ({RECEIVE_TIMEOUT_ENV} sets the bound)"
                ) from exc

    return BoundedWeightReceiver


def _build_extension_class():
    from verl.workers.rollout.vllm_rollout.utils import vLLMColocateWorkerExtension

    receiver_cls = _build_receiver_class()

    class CPUReloadWorkerExtension(vLLMColocateWorkerExtension):
        """verl's colocated vLLM worker extension, loading each weight sync with vLLM's layer-wise reload."""

        _syncs_done = 0

        def update_weights_from_ipc(self, peft_config: dict | None = None, base_sync_done=False, use_shm=False):
            """Receive one weight sync from verl's sender, then reload the live model with it (module docstring).

            Raises:
                NotImplementedError: for a LoRA sync (`peft_config` set).
                TimeoutError: when the trainer sends nothing for `receive_timeout_s` seconds.
                RuntimeError: when a bucket could not be copied, or the reload failed (the cause is chained).
            """
            if peft_config:
                raise NotImplementedError("CPUReloadWorkerExtension syncs full weights only; LoRA is not supported")
            if self.device is None:
                self.device = torch.device("cpu")
            received: list[tuple[str, torch.Tensor]] = []
            failures: list[BaseException] = []

            def on_bucket_received(weights: list[tuple[str, torch.Tensor]], is_last: bool) -> None:
                if failures:
                    return
                try:
                    # The bucket is a view of verl's shared buffer, which the next bucket overwrites.
                    received.extend((name, tensor.detach().clone()) for name, tensor in weights)
                except BaseException as exc:  # held until the sender has had its last acknowledgement
                    failures.append(exc)

            started = time.monotonic()
            receiver = receiver_cls(
                zmq_handle=self._get_zmq_handle(), device=self.device, use_shm=use_shm, timeout_s=receive_timeout_s()
            )
            receiver.receive_weights(on_bucket_received=on_bucket_received)
            if failures:
                raise RuntimeError(
                    "verl_meds vLLM CPU weight sync: stage 'copy bucket' failed; the sync was received but not loaded"
                ) from failures[0]
            received_at = time.monotonic()
            digest = weights_digest(received) if os.environ.get(SYNC_LOG_ENV) else None
            try:
                self.model_runner.reload_weights(weights_iterator=received, is_checkpoint_format=True)
            except Exception as exc:
                raise RuntimeError(
                    f"verl_meds vLLM CPU weight sync: stage 'reload' (vLLM model_runner.reload_weights) failed on "
                    f"{len(received)} tensors"
                ) from exc
            done = time.monotonic()
            record = {
                "sync": type(self)._syncs_done,
                "pid": os.getpid(),
                "tensors": len(received),
                "bytes": sum(t.nbytes for _, t in received),
                "digest": digest,
                "receive_s": round(received_at - started, 4),
                "reload_s": round(done - received_at, 4),
            }
            type(self)._syncs_done += 1
            logger.info("verl_meds vLLM CPU weight sync: %s", record)
            _append_sync_record(record)

    CPUReloadWorkerExtension.__module__ = __name__
    CPUReloadWorkerExtension.__qualname__ = "CPUReloadWorkerExtension"
    return CPUReloadWorkerExtension


_classes: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """Build `CPUReloadWorkerExtension` on first access (it needs verl and vLLM; the rest of the module does not)."""
    if name == "CPUReloadWorkerExtension":
        if name not in _classes:
            _classes[name] = _build_extension_class()
        return _classes[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
