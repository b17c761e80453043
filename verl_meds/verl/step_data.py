"""One training step's rows in verl's TransferQueue, as the MEDS hooks see them.

verl's V1 trainer keeps a step's rows in TransferQueue and hands its stages a `KVBatchMeta` (keys, per-row tags). The
hooks of `verl_meds.verl.hooks` read and write those rows through `StepData`, which reads each field at most once per
step (a field read for one hook is reused by the next), can start a read in a background thread so that it overlaps
verl's log-prob pass on the workers, and forgets the fields verl itself may rewrite between stages.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from tensordict import TensorDict

MUTABLE_FIELDS = ("response_mask", "loss_mask", "advantages", "returns", "entropy", "old_log_probs")
"""Fields verl may write during its own stages (log-prob pass, estimator, rollout correction): never reused across
a call into verl."""

_READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verl_meds_prefetch")


def tq_fields(values: dict[str, torch.Tensor], batch_size: int) -> TensorDict:
    """Wrap per-row tensors as the `TensorDict` that TransferQueue's `kv_batch_put` takes."""
    return TensorDict(values, batch_size=batch_size)


class StepData:
    """The rows of one step (`batch`: verl's `KVBatchMeta`) with per-step reads, metrics and timers.

    Args:
        batch: verl's `KVBatchMeta` of the step (keys, tags, partition id, `extra_info`).
        metrics (`dict`): verl's step metrics; hooks add theirs here.
        timing_raw (`dict`, *optional*): verl's step timers; `lap` adds `meds_<stage>` seconds.
        global_step (`int`): the training step.

    Attributes:
        shared (`dict`): values one hook leaves for a later stage or another hook of the same step.
    """

    def __init__(self, batch, metrics: dict, timing_raw: dict | None, global_step: int):
        self.batch = batch
        self.metrics = metrics
        self.timing_raw = timing_raw
        self.global_step = global_step
        self.shared: dict[str, Any] = {}
        self._cache: dict[str, Any] = {}
        self._pending: dict[str, Future] = {}

    @property
    def keys(self) -> list[str]:
        """Row keys, `"{uid}_{session_id}_{index}"`, in verl's current order."""
        return list(self.batch.keys)

    def __len__(self) -> int:
        return len(self.batch)

    def matches(self, batch) -> bool:
        """Whether `batch` holds the same rows in the same order."""
        return list(batch.keys) == self.keys and batch.partition_id == self.batch.partition_id

    def real(self) -> np.ndarray:
        """`np.ndarray` of shape `(N,)`, bool: False for the synthetic padding rows verl adds to make a batch
        divisible by the data-parallel size (tag `is_padding`; they copy a real row's prompt and reward info)."""
        return np.array([not bool(tag.get("is_padding", False)) for tag in self.batch.tags], dtype=bool)

    def prompt_lengths(self) -> torch.Tensor | None:
        """`torch.LongTensor` of shape `(N,)`: the prompt lengths verl's agent loop put in the tags (`prompt_len`),
        or `None` when a tag lacks it."""
        values = [tag.get("prompt_len") for tag in self.batch.tags]
        if any(not isinstance(v, (int, np.integer)) or isinstance(v, bool) for v in values):
            return None
        return torch.tensor(values, dtype=torch.long)

    def _read(self, fields: list[str]) -> dict[str, Any]:
        data = tq.kv_batch_get(keys=self.batch.keys, partition_id=self.batch.partition_id, select_fields=fields)
        return {name: data[name] for name in fields if name in data.keys()}

    def prefetch(self, *fields: str) -> None:
        """Start reading `fields` in a background thread (one TransferQueue call); `get` waits for it."""
        wanted = [f for f in fields if f not in self._cache and f not in self._pending]
        if wanted:
            future = _READER.submit(self._read, wanted)
            for name in wanted:
                self._pending[name] = future

    def get(self, *fields: str) -> dict[str, Any]:
        """The values of `fields` (TransferQueue's nested tensors or lists), read at most once per step.

        Fields not cached or prefetched are read in one call. A field the rows do not have is left out of the result.
        """
        for future in {id(f): f for name, f in self._pending.items() if name in fields}.values():
            self._cache.update(future.result())
        for name in fields:
            self._pending.pop(name, None)
        missing = [f for f in fields if f not in self._cache]
        if missing:
            values = self._read(missing)
            self._cache.update(values)
            for name in missing:
                self._cache.setdefault(name, _ABSENT)
        return {name: self._cache[name] for name in fields if self._cache[name] is not _ABSENT}

    def list_of(self, name: str, default: Any = None) -> list:
        """Field `name` as a list of N per-row values (`[default] * N` when the rows lack it)."""
        values = self.get(name)
        if name not in values:
            return [default] * len(self)
        value = values[name]
        return list(value.unbind()) if isinstance(value, torch.Tensor) else list(value)

    def padded(self, name: str, padding: float | int = 0) -> torch.Tensor:
        """Field `name` right-padded to `(N, T)` (a nested per-row field such as `responses`)."""
        return self.get(name)[name].to_padded_tensor(padding=padding)

    def put(self, values: dict[str, torch.Tensor], rows: list[int] | None = None) -> None:
        """Write per-row `values` for all rows, or only for `rows` (indices into `keys`); forgets those fields."""
        keys = self.keys if rows is None else [self.batch.keys[i] for i in rows]
        if not keys:
            return
        tq.kv_batch_put(keys=keys, partition_id=self.batch.partition_id, fields=tq_fields(values, len(keys)))
        self.forget(*values)

    def forget(self, *fields: str) -> None:
        """Drop cached values of `fields` (the next `get` reads them again)."""
        for name in fields:
            self._cache.pop(name, None)
            self._pending.pop(name, None)

    def after_verl(self, batch) -> None:
        """Call after each call into verl: takes its returned batch meta and forgets `MUTABLE_FIELDS`."""
        self.batch = batch
        self.forget(*MUTABLE_FIELDS)

    def lap(self, stage: str, start: float) -> float:
        """Add the seconds since `start` to verl's timer `meds_<stage>` (logged as `timing_s/meds_<stage>`);
        returns `time.perf_counter()`."""
        now = time.perf_counter()
        if self.timing_raw is not None:
            self.timing_raw[f"meds_{stage}"] = self.timing_raw.get(f"meds_{stage}", 0.0) + now - start
        return now


_ABSENT = object()
