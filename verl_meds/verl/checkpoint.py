"""MEDS memory files inside verl checkpoints: atomic writes, a format version and a checksum.

File layout (``<checkpoint>/global_step_N/meds_memory.pkl``): a pickled dict
``{"format": "verl_meds.memory", "format_version": 1, "global_step": N, "sha256": hex, "payload": bytes}``
where ``payload`` is the pickled :meth:`verl_meds.memory.ErrorMemory.state_dict` and ``sha256`` its digest.
The file is written to a temporary name in the same folder, flushed and fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX), so a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile

from verl_meds.memory import ErrorMemory

MEMORY_FILENAME = "meds_memory.pkl"
FORMAT = "verl_meds.memory"
FORMAT_VERSION = 1


def memory_path(global_step_folder: str) -> str:
    """Path of the memory file inside a verl ``global_step_N`` checkpoint folder."""
    return os.path.join(global_step_folder, MEMORY_FILENAME)


def save_memory(memory: ErrorMemory, path: str, global_step: int) -> int:
    """Write ``memory`` to ``path`` atomically. Returns the file size in bytes."""
    payload = pickle.dumps(memory.state_dict(), protocol=pickle.HIGHEST_PROTOCOL)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "global_step": int(global_step),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": payload,
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".meds_memory.", suffix=".tmp", dir=folder)
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


def _read_record(path: str) -> dict:
    """The record stored at ``path``, after checking format, version and checksum (see :func:`read_memory_state`)."""
    with open(path, "rb") as f:
        try:
            record = pickle.load(f)
        except Exception as exc:  # not a pickle at all (a text file, an empty or truncated file)
            raise ValueError(f"{path} is not a verl_meds memory file (it cannot be unpickled: {exc!r})") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a verl_meds memory file")
    if record.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} has memory format version {record.get('format_version')}, this verl_meds reads {FORMAT_VERSION}"
        )
    payload = record["payload"]
    if hashlib.sha256(payload).hexdigest() != record.get("sha256"):
        raise ValueError(f"{path} is corrupted: its checksum does not match its contents")
    return record


def read_memory_state(path: str) -> dict:
    """The memory state dict stored at ``path``, after checking format, version and checksum.

    Raises:
        ValueError: for a file of another format or version (including files that are not pickles at all), or whose
            checksum does not match (corruption).
    """
    return pickle.loads(_read_record(path)["payload"])


def state_digest(memory: ErrorMemory) -> str:
    """SHA-256 of the pickled state of ``memory``: equal digests mean bit-identical memories."""
    return hashlib.sha256(pickle.dumps(memory.state_dict(), protocol=pickle.HIGHEST_PROTOCOL)).hexdigest()


def load_memory(memory: ErrorMemory, path: str) -> str:
    """Restore ``memory`` from ``path``; returns the SHA-256 of the restored state (:func:`state_digest`).

    The digest equals the file's ``sha256`` when the memory came back bit for bit, which is the case unless the
    current config keeps fewer entries per prompt (``memory.capacity``), where the newest entries are kept.

    Raises:
        ValueError: see :func:`read_memory_state`; also for a feature-config mismatch (from ``load_state_dict``).
    """
    record = _read_record(path)
    memory.load_state_dict(pickle.loads(record["payload"]))
    return state_digest(memory)
