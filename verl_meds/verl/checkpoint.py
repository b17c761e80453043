"""MEDS memory and exploration counts inside verl checkpoints: atomic writes, a format version and a checksum.

File layout (`<checkpoint>/global_step_N/meds_memory.pkl`; `explore_counts.pkl` for the answer counts of
historical exploration): a pickled dict
`{"format": "verl_meds.memory", "format_version": 1, "global_step": N, "sha256": hex, "payload": bytes}`
where `payload` is the pickled `state_dict()` of the object (`verl_meds.memory.ErrorMemory.state_dict`, or
`verl_meds.exploration.AnswerCounts.state_dict` with format `"verl_meds.answer_counts"`) and `sha256` its
digest. The file is written to a temporary name in the same folder, flushed and fsynced, then renamed over the target
(`os.replace` is atomic on POSIX), so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from typing import Any, Protocol

MEMORY_FILENAME = "meds_memory.pkl"
FORMAT = "verl_meds.memory"
COUNTS_FILENAME = "explore_counts.pkl"
COUNTS_FORMAT = "verl_meds.answer_counts"
FORMAT_VERSION = 1
_WHAT = {FORMAT: "memory", COUNTS_FORMAT: "answer-counts"}


class Stateful(Protocol):
    """Anything with `state_dict()` and `load_state_dict(state)` (`ErrorMemory`, `AnswerCounts`)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def memory_path(global_step_folder: str) -> str:
    """Path of the memory file inside a verl `global_step_N` checkpoint folder."""
    return os.path.join(global_step_folder, MEMORY_FILENAME)


def counts_path(global_step_folder: str) -> str:
    """Path of the exploration-counts file inside a verl `global_step_N` checkpoint folder."""
    return os.path.join(global_step_folder, COUNTS_FILENAME)


def _check_format(fmt: str) -> None:
    if fmt not in _WHAT:
        raise ValueError(f"fmt must be one of {sorted(_WHAT)}, got {fmt!r}")


def save_state(obj: Stateful, path: str, global_step: int, fmt: str = FORMAT) -> int:
    """Write `obj.state_dict()` to `path` atomically, tagged with `fmt`. Returns the file size in bytes.

    Raises:
        ValueError: for an unknown `fmt`.
    """
    _check_format(fmt)
    payload = pickle.dumps(obj.state_dict(), protocol=pickle.HIGHEST_PROTOCOL)
    record = {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "global_step": int(global_step),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": payload,
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".meds_state.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(record, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return os.path.getsize(path)


def save_memory(memory: Stateful, path: str, global_step: int) -> int:
    """Write a MEDS memory to `path` atomically (`save_state` with the memory format). Returns the size."""
    return save_state(memory, path, global_step, FORMAT)


def _read_record(path: str, fmt: str = FORMAT) -> dict:
    """The record stored at `path`, after checking format, version and checksum (see `read_state`)."""
    _check_format(fmt)
    what = _WHAT[fmt]
    with open(path, "rb") as f:
        try:
            record = pickle.load(f)
        except Exception as exc:  # not a pickle at all (a text file, an empty or truncated file)
            raise ValueError(f"{path} is not a verl_meds {what} file (it cannot be unpickled: {exc!r})") from exc
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise ValueError(f"{path} is not a verl_meds {what} file")
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has {what} format version {record.get('format_version')}, this verl_meds reads {FORMAT_VERSION}"
        )
    payload = record["payload"]
    if hashlib.sha256(payload).hexdigest() != record.get("sha256"):
        raise ValueError(f"{path} is corrupted: its checksum does not match its contents")
    return record


def read_state(path: str, fmt: str = FORMAT) -> dict:
    """The state dict stored at `path`, after checking format, version and checksum.

    Raises:
        ValueError: for a file of another format or version (including files that are not pickles at all), or whose
            checksum does not match (corruption).
    """
    return pickle.loads(_read_record(path, fmt)["payload"])


def read_memory_state(path: str) -> dict:
    """The memory state dict stored at `path` (`read_state` with the memory format)."""
    return read_state(path, FORMAT)


def state_digest(obj: Stateful) -> str:
    """SHA-256 of the pickled state of `obj`: equal digests mean bit-identical states."""
    return hashlib.sha256(pickle.dumps(obj.state_dict(), protocol=pickle.HIGHEST_PROTOCOL)).hexdigest()


def load_state(obj: Stateful, path: str, fmt: str = FORMAT) -> str:
    """Restore `obj` from `path`; returns the SHA-256 of the restored state (`state_digest`).

    The digest equals the file's `sha256` when the state came back bit for bit, which is the case unless the
    current config keeps fewer entries per prompt (`memory.capacity`), where the newest entries are kept.

    Raises:
        ValueError: see `read_state`; also whatever `obj.load_state_dict` refuses (a feature-config mismatch,
            another answer-key version).
    """
    record = _read_record(path, fmt)
    obj.load_state_dict(pickle.loads(record["payload"]))
    return state_digest(obj)


def load_memory(memory: Stateful, path: str) -> str:
    """Restore a MEDS memory from `path` (`load_state` with the memory format); returns its digest."""
    return load_state(memory, path, FORMAT)
