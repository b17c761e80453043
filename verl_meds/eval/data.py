"""Evaluation problems: read a benchmark from a verl parquet file, a raw JSONL copy, or the hub.

Every problem gets the id ``"<benchmark>/<extra_info.index>"``, stable across runs, which names it in the per-sample
JSONL and in the summary.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalProblem:
    """One benchmark problem.

    benchmark (`str`): benchmark name, e.g. ``"math500"``.
    index (`int`): the parquet row's ``extra_info.index`` (the line of the original file).
    messages (`tuple[dict[str, str], ...]`): the chat prompt (verl's ``prompt`` column).
    ground_truth (`str`): gold answer, graded with `verl_meds.verl.reward.is_correct`.
    """

    benchmark: str
    index: int
    messages: tuple[dict[str, str], ...]
    ground_truth: str

    @property
    def problem_id(self) -> str:
        """`str`: ``"<benchmark>/<index>"``."""
        return f"{self.benchmark}/{self.index}"

    @property
    def question(self) -> str:
        """`str`: content of the last user message."""
        users = [m["content"] for m in self.messages if m.get("role") == "user"]
        return users[-1] if users else ""


def problems_from_rows(benchmark: str, rows: list[dict[str, Any]], limit: int | None = None) -> list[EvalProblem]:
    """
    Turn verl rows (schema of `verl_meds.tasks.records`) into problems.

    Args:
        benchmark (`str`): benchmark name for the problem ids.
        rows (`list[dict]`): rows with ``prompt``, ``reward_model.ground_truth`` and ``extra_info.index``.
        limit (`int`, *optional*): keep the first ``limit`` rows.

    Returns:
        `list[EvalProblem]`: in row order.

    Raises:
        ValueError: if a row lacks one of those fields, or two rows share an index.
    """
    problems, seen = [], set()
    for position, row in enumerate(rows[:limit] if limit is not None else rows):
        try:
            index = int(row["extra_info"]["index"])
            gold = str(row["reward_model"]["ground_truth"])
            messages = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in row["prompt"])
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"{benchmark} row {position} is not a verl row (needs prompt, reward_model.ground_truth and "
                f"extra_info.index): missing {err}"
            ) from err
        if index in seen:
            raise ValueError(f"{benchmark}: extra_info.index {index} occurs twice; problem ids must be unique")
        seen.add(index)
        problems.append(EvalProblem(benchmark, index, messages, gold))
    return problems


def load_problems(
    benchmark: str,
    path: str | os.PathLike | None = None,
    *,
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> list[EvalProblem]:
    """
    Read one benchmark.

    A ``.parquet`` path is read as verl rows as is. Any other path (a raw JSONL copy) or no path at all goes through
    `verl_meds.eval.benchmarks.load_benchmark`, which needs ``benchmark`` to be one of its names and picks the local
    copy under ``data_dir`` or the hub when ``path`` is `None`.

    Args:
        benchmark (`str`): benchmark name.
        path (`str` or `os.PathLike`, *optional*): parquet file, raw JSONL file, or a hub id.
        limit (`int`, *optional*): keep the first ``limit`` problems.
        data_dir (`str` or `os.PathLike`, *optional*): folder of raw local copies (see `verl_meds.eval.benchmarks`).

    Returns:
        `list[EvalProblem]`.

    Raises:
        ValueError: for a malformed file, an unknown benchmark name with a raw file, or an empty result.
    """
    if path is not None and str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        from verl_meds.eval.benchmarks import load_benchmark

        rows = load_benchmark(benchmark, path, data_dir=data_dir, limit=limit)
    problems = problems_from_rows(benchmark, rows, limit)
    if not problems:
        raise ValueError(f"benchmark {benchmark!r} has no problems ({path or 'default source'})")
    logger.info("%s: %d problems from %s", benchmark, len(problems), path or "its default source")
    return problems


def parse_benchmark_arg(text: str) -> tuple[str, str | None]:
    """Split a CLI ``NAME=PATH`` (or bare ``NAME``, or a bare ``.parquet`` path named after its stem).

    >>> parse_benchmark_arg("math500=/data/test.jsonl"), parse_benchmark_arg("aime24")
    (('math500', '/data/test.jsonl'), ('aime24', None))
    >>> parse_benchmark_arg("/out/amc23.parquet")
    ('amc23', '/out/amc23.parquet')
    """
    if "=" in text:
        name, path = text.split("=", 1)
        return name.strip(), path.strip() or None
    if text.endswith(".parquet"):
        return Path(text).stem, text
    return text, None
