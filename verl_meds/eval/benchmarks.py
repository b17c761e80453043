"""The paper's evaluation benchmarks (and GSM8K test) as verl rows, from a local JSONL copy or the hub.

Benchmarks (`BENCHMARKS`; name (problems in the standard copy): local file under `--data-dir`, gold answer, hub id
used when there is no local file):

- `aime24` (30): `aime24/test.jsonl`, gold `answer`; hub `HuggingFaceH4/aime_2024` (split `train`).
- `amc23` (40): `amc23/test.jsonl`, gold `answer` (a float, `27.0 -> "27"`); hub `math-ai/amc23`.
- `math500` (500): `math500/test.jsonl`, gold `answer`; hub `HuggingFaceH4/MATH-500`.
- `minerva_math` (272): `minerva_math/test.jsonl`, gold = last `\\boxed{}` of `solution`; hub
  `math-ai/minervamath` (field `answer`).
- `olympiadbench` (675): `olympiadbench/test.jsonl`, gold `final_answer` (a list); hub `math-ai/olympiadbench`.
- `gsm8k` (1319): `gsm8k/test.jsonl`, gold = text after `####`; hub `openai/gsm8k` (config `main`).

The conversion itself is `verl_meds.tasks.records.convert_records` (same schema as every other converter, see
`verl_meds.tasks.records`): `extra_info.index` is the 0-based line index of the local file (the row position for a hub
dataset), so it is stable under `--limit`; `reward_model.ground_truth` is the gold answer as a string.
OlympiadBench answers come wrapped in `$...$` (266 of 675); one enclosing pair is removed
(`strip_math_delimiters`) so math-verify parses the gold as plain LaTeX. A list answer (OlympiadBench
`final_answer`, always one item in the local copy) is joined with `", "`.

The hub ids are the copies commonly used for these benchmarks; their field names are part of `BENCHMARKS` and are
not checked against the hub. The local copies are the reference.

`data_prep.benchmarks` writes them as parquet files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl_meds.tasks.prompt import BOXED_INSTRUCTION
from verl_meds.tasks.records import AnswerStyle, convert_records, iter_hub_dataset, iter_jsonl

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "VERL_MEDS_DATA_DIR"
"""Environment variable naming the folder of local benchmark copies when `data_dir` is not given."""


@dataclass(frozen=True)
class Source:
    """Where one copy of a benchmark lives and which fields hold the question and the gold answer.

    location (`str`): a path relative to the data folder (local copy) or a hub dataset id.
    question_field (`str`): field holding the problem text.
    answer_field (`str`): field holding the answer (or the solution, for `style="boxed"`).
    style (`str`): answer style of `verl_meds.tasks.records.gold_answer` (`"math"`, `"boxed"` or `"gsm8k"`).
    split (`str`, *optional*, defaults to `"test"`): hub split (unused for local files).
    hub_config (`str`, *optional*): hub dataset config (unused for local files).
    """

    location: str
    question_field: str
    answer_field: str
    style: AnswerStyle = "math"
    split: str = "test"
    hub_config: str | None = None


@dataclass(frozen=True)
class BenchmarkSpec:
    """One evaluation benchmark.

    name (`str`): short name used in file names, summaries and tables (e.g. `"math500"`).
    display_name (`str`): column title in the paper-style tables (e.g. `"MATH500"`).
    data_source (`str`): value of the parquet `data_source` column.
    num_problems (`int`): size of the standard copy; a full conversion with another count logs a warning.
    local (`Source`): the local JSONL copy, relative to the data folder.
    hub (`Source`): the hub copy.
    """

    name: str
    display_name: str
    data_source: str
    num_problems: int
    local: Source
    hub: Source


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec(
            "aime24",
            "AIME24",
            "aime24",
            30,
            Source("aime24/test.jsonl", "problem", "answer"),
            Source("HuggingFaceH4/aime_2024", "problem", "answer", split="train"),
        ),
        BenchmarkSpec(
            "amc23",
            "AMC23",
            "amc23",
            40,
            Source("amc23/test.jsonl", "problem", "answer"),
            Source("math-ai/amc23", "question", "answer"),
        ),
        BenchmarkSpec(
            "math500",
            "MATH500",
            "HuggingFaceH4/MATH-500",
            500,
            Source("math500/test.jsonl", "problem", "answer"),
            Source("HuggingFaceH4/MATH-500", "problem", "answer"),
        ),
        BenchmarkSpec(
            "minerva_math",
            "Minerva",
            "minerva_math",
            272,
            Source("minerva_math/test.jsonl", "problem", "solution", style="boxed"),
            Source("math-ai/minervamath", "question", "answer"),
        ),
        BenchmarkSpec(
            "olympiadbench",
            "Olympiad",
            "olympiadbench",
            675,
            Source("olympiadbench/test.jsonl", "question", "final_answer"),
            Source("math-ai/olympiadbench", "question", "final_answer"),
        ),
        BenchmarkSpec(
            "gsm8k",
            "GSM8K",
            "openai/gsm8k",
            1319,
            Source("gsm8k/test.jsonl", "question", "answer", style="gsm8k"),
            Source("openai/gsm8k", "question", "answer", style="gsm8k", hub_config="main"),
        ),
    )
}
"""Every supported benchmark by name, in the paper's table order (GSM8K last; it is not in the paper's Table 1)."""

PAPER_BENCHMARKS: tuple[str, ...] = ("aime24", "amc23", "math500", "minerva_math", "olympiadbench")
"""The five benchmarks of the MEDS paper's Table 1, in its column order."""


def get_benchmark(name: str) -> BenchmarkSpec:
    """The `BenchmarkSpec` called `name`.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid names: {list(BENCHMARKS)}")
    return BENCHMARKS[name]


def strip_math_delimiters(answer: str) -> str:
    """Remove one enclosing `$...$` pair when it is the only `$` pair in `answer`.

    >>> strip_math_delimiters("$\\\\frac{1}{2}$"), strip_math_delimiters("$a$,$b$"), strip_math_delimiters("12")
    ('\\\\frac{1}{2}', '$a$,$b$', '12')
    """
    text = answer.strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$" and text.count("$") == 2:
        return text[1:-1].strip()
    return text


def resolve_source(
    spec: BenchmarkSpec, input: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None
) -> tuple[str, Source]:
    """Decide where a benchmark is read from.

    Order: an explicit `input` (a local JSONL path, or else a hub id read with the spec's hub fields); then
    `data_dir / spec.local.location` (`data_dir` defaults to `$VERL_MEDS_DATA_DIR`) if that file exists; then
    the hub id.

    Args:
        spec (`BenchmarkSpec`): the benchmark.
        input (`str` or `os.PathLike`, *optional*): explicit JSONL path or hub id.
        data_dir (`str` or `os.PathLike`, *optional*): folder of local copies.

    Returns:
        `tuple[str, Source]`: the path or hub id to read, and the `Source` whose fields apply to it.
    """
    if input is not None:
        return (str(input), spec.local) if Path(input).is_file() else (str(input), spec.hub)
    data_dir = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if data_dir is not None:
        path = Path(data_dir) / spec.local.location
        if path.is_file():
            return str(path), spec.local
        logger.info("no local copy of %s at %s", spec.name, path)
    return spec.hub.location, spec.hub


def _rows(location: str, source: Source, limit: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
    if Path(location).is_file():
        return iter_jsonl(location, limit)
    logger.info("reading %s from the hub (split %s)", location, source.split)
    return iter_hub_dataset(location, source.hub_config, source.split, limit)


def load_benchmark(
    name: str,
    input: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    instruction: str = BOXED_INSTRUCTION,
) -> list[dict[str, Any]]:
    """Read one benchmark into verl rows (in memory; see `convert_benchmark` to write parquet).

    Args:
        name (`str`): a key of `BENCHMARKS`.
        input (`str` or `os.PathLike`, *optional*): explicit JSONL path or hub id (see `resolve_source`).
        data_dir (`str` or `os.PathLike`, *optional*): folder of local copies (see `resolve_source`).
        limit (`int`, *optional*): keep only the first `limit` lines (rows).
        instruction (`str`, *optional*, defaults to `BOXED_INSTRUCTION`): appended to each question.

    Returns:
        `list[dict]`: verl rows (schema in `verl_meds.tasks.records`) with `extra_info.split = "test"`.

    Raises:
        ValueError: for an unknown name, a record without its question field, or a malformed answer.
    """
    spec = get_benchmark(name)
    location, source = resolve_source(spec, input, data_dir)
    rows = convert_records(
        _rows(location, source, limit),
        split="test",
        style=source.style,
        question_field=source.question_field,
        answer_field=source.answer_field,
        data_source=spec.data_source,
        instruction=instruction,
    )
    for row in rows:
        gold = strip_math_delimiters(row["reward_model"]["ground_truth"])
        row["reward_model"]["ground_truth"] = gold
        row["extra_info"]["answer"] = gold
    if limit is None and len(rows) != spec.num_problems:
        logger.warning("%s: %d problems read from %s, expected %d", name, len(rows), location, spec.num_problems)
    return rows
