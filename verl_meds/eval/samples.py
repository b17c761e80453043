"""The per-sample JSONL of an evaluation run, appended as samples finish, so a run can resume.

One line per sample (`SAMPLE_FIELDS`):

| field | type | meaning |
|---|---|---|
| `benchmark` | str | benchmark name |
| `problem_id` | str | `"<benchmark>/<index>"` |
| `index` | int | the problem's `extra_info.index` |
| `sample_index` | int | 0..n-1 within the problem |
| `answer` | str or null | content of the response's last `\\boxed{}` (null when there is none) |
| `correct` | bool | math-verify verdict against the gold answer |
| `num_tokens` | int | response length in tokens |
| `truncated` | bool | the response hit the token budget |
| `response` | str | the decoded response (left out with `--no-responses`) |
| `features` | list[float] or null | logit-lens features (only with `--save-features`) |

Lines are written and flushed (`fsync`) after every batch. A crash can leave a last line without its newline; it is
cut off on the next load (those samples are drawn again). Duplicate (problem, sample) lines keep the first one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SAMPLE_FIELDS: tuple[str, ...] = (
    "benchmark",
    "problem_id",
    "index",
    "sample_index",
    "answer",
    "correct",
    "num_tokens",
    "truncated",
    "response",
    "features",
)
"""Fields of a sample line, in order (`response` and `features` are optional)."""

REQUIRED_FIELDS: tuple[str, ...] = ("benchmark", "problem_id", "index", "sample_index", "answer", "correct")
"""Fields every sample line must have."""

SampleKey = tuple[str, int]


class SampleStore:
    """
    Append-only JSONL of graded samples, keyed by `(problem_id, sample_index)`.

    Args:
        path (`str` or `os.PathLike`): the `.jsonl` file; created (with its folder) on the first append.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def load(self) -> dict[SampleKey, dict[str, Any]]:
        """
        Every stored sample, after cutting off a torn last line.

        Returns:
            `dict[tuple[str, int], dict]`: `(problem_id, sample_index)` -> the sample line, in file order.

        Raises:
            ValueError: if a complete line is not a JSON object with the `REQUIRED_FIELDS` (the message gives the
                line).
        """
        if not self.path.exists():
            return {}
        self._repair_tail()
        samples: dict[SampleKey, dict[str, Any]] = {}
        duplicates = 0
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{self.path}:{number}: invalid JSON ({err})") from err
                missing = [name for name in REQUIRED_FIELDS if not isinstance(record, dict) or name not in record]
                if missing:
                    raise ValueError(f"{self.path}:{number}: sample line lacks fields {missing}")
                key = (str(record["problem_id"]), int(record["sample_index"]))
                if key in samples:
                    duplicates += 1
                    continue
                samples[key] = record
        if duplicates:
            logger.warning("%s: %d duplicate sample lines ignored (first kept)", self.path, duplicates)
        return samples

    def _repair_tail(self) -> None:
        """Cut a last line that has no newline (an interrupted write)."""
        with open(self.path, "rb+") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            block = 1 << 16
            position = size
            keep = 0
            while position > 0:
                start = max(0, position - block)
                f.seek(start)
                chunk = f.read(position - start)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                position = start
            f.truncate(keep)
        logger.warning(
            "%s: cut an incomplete last line (%d bytes); its samples will be drawn again", self.path, size - keep
        )

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        """
        Append sample lines and flush them to disk.

        Args:
            records (`Iterable[dict]`): sample lines with at least the `REQUIRED_FIELDS`.

        Returns:
            `int`: number of lines written.
        """
        lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
        if not lines:
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        return len(lines)


def write_json(path: str | os.PathLike, payload: Any) -> Path:
    """Write JSON atomically (temporary file, then rename); NaN is written as `null`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(_nan_to_none(payload), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(item) for item in value]
    return value
