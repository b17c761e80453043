"""Math problems as verl rows: the record format every `data_prep` converter writes, and the readers of
GSM8K-style and MATH-style records (a JSONL file or a Hugging Face dataset) into it.

verl's `RLHFDataset` reads one row per prompt with these columns:

- `data_source` (`str`): names the dataset; verl's stock `default_compute_score` dispatches on it.
- `prompt` (`list[dict]`): chat messages `[{"role": "user", "content": ...}]`; verl renders them with
  `tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)`.
- `ability` (`str`): `"math"` here.
- `reward_model` (`dict`): `{"style": "rule", "ground_truth": str}`.
- `extra_info` (`dict`): `{"index": int, "split": str, "question": str, "answer": str}`. `index` is stable
  across runs (a line index or generator index) and is what `verl_meds` keys its per-prompt memory on.

Every converter writes exactly these fields with exactly these types (`answer` is always a string, even for the
integer synthetic task), so files from different converters can be concatenated by `datasets`.

Answer styles (`style`):

- `gsm8k`: the answer field is a worked solution; the gold answer is the text after the last `"#### "`, with
  thousands commas removed (`"#### 1,200" -> "1200"`).
- `math`: the answer field is the final answer as given (MATH-500, AIME, AMC, DeepScaleR MATH train). Numbers are
  written as integers when integral (AMC's `27.0 -> "27"`); lists are joined with `", "`.
- `boxed`: the gold answer is the content of the last `\\boxed{...}` in the answer field (Minerva's `solution`).

`extra_info.index` is the 0-based line index in the input file (the row position for a hub dataset), so it stays
stable under `--limit` and when records are skipped. Records whose answer is missing or empty are skipped with a
warning (the DeepScaleR MATH train copy has four); a `gsm8k` solution without `"####"` is an error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from verl_meds.answer import BOX_COMMANDS, extract_boxed
from verl_meds.tasks.prompt import BOXED_INSTRUCTION, build_prompt_text

logger = logging.getLogger(__name__)

VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
"""Top-level columns of every verl row (and parquet file), in order."""

EXTRA_INFO_FIELDS = ("index", "split", "question", "answer")
"""Fields of the `extra_info` struct, in order."""


def make_record(
    *,
    data_source: str,
    question: str,
    answer: str,
    index: int,
    split: str,
    instruction: str = BOXED_INSTRUCTION,
    ability: str = "math",
) -> dict[str, Any]:
    """Build one verl row (see the module docstring for the schema).

    Args:
        data_source (`str`): value of the `data_source` column.
        question (`str`): raw problem text, kept verbatim in `extra_info.question`.
        answer (`str`): gold final answer; becomes `reward_model.ground_truth` and `extra_info.answer`.
        index (`int`): stable record index (`extra_info.index`).
        split (`str`): `"train"`, `"test"`, ...
        instruction (`str`, *optional*, defaults to `BOXED_INSTRUCTION`): see `build_prompt_text`.
        ability (`str`, *optional*, defaults to `"math"`): value of the `ability` column.

    Returns:
        `dict[str, Any]`: the row.

    Raises:
        TypeError: if `answer` is not a `str` or `index` is not an `int` (mixed types would break the parquet
            schema).
    """
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str, got {type(answer).__name__}: {answer!r}")
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"index must be an int, got {type(index).__name__}: {index!r}")
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": build_prompt_text(question, instruction)}],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {"index": index, "split": split, "question": question, "answer": answer},
    }


AnswerStyle = Literal["gsm8k", "math", "boxed"]
ANSWER_STYLES: tuple[str, ...] = ("gsm8k", "math", "boxed")
"""Valid values of `style` (see the module docstring)."""

GSM8K_DATA_SOURCE = "openai/gsm8k"
"""Default `data_source` for GSM8K. Note: verl's stock scorer for this name expects `"#### x"` answers, while
our prompts ask for `\\boxed{}`; grade with the `verl_meds` boxed reward."""


def extract_gsm8k_answer(solution: str) -> str:
    """Gold answer of a GSM8K solution: the text after the last `"#### "`, commas removed.

    Args:
        solution (`str`): the GSM8K `answer` field.

    Returns:
        `str`: e.g. `"72"`.

    Raises:
        ValueError: if there is no `"####"` marker or nothing after it.

    >>> extract_gsm8k_answer("48/2 = <<48/2=24>>24 clips.\\n#### 1,072")
    '1072'
    """
    if "####" not in solution:
        raise ValueError(f"no '####' answer marker in GSM8K solution: {solution[-80:]!r}")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not answer:
        raise ValueError(f"empty answer after '####' in GSM8K solution: {solution[-80:]!r}")
    return answer


def extract_last_boxed(text: str) -> str:
    r"""
    Content of the last `\boxed{...}` in `text` (`verl_meds.answer.extract_boxed`), stripped.

    Args:
        text (`str`): e.g. a MATH solution.

    Returns:
        `str`: e.g. `"\frac{1}{2}"` for `"... \boxed{\frac{1}{2}}."`.

    Raises:
        ValueError: if there is no `\boxed{` or the last one's braces are unbalanced.

    >>> extract_last_boxed(r"so $x = \boxed{\frac{1}{2}}$.")
    '\\frac{1}{2}'
    """
    answer = extract_boxed(text)
    if answer is None:
        found = any(f"\\{command}" in text for command in BOX_COMMANDS)
        problem = "unbalanced braces after the last \\boxed{" if found else "no \\boxed{...}"
        raise ValueError(f"{problem} in text: {text[-80:]!r}")
    return answer.strip()


def _format_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def gold_answer(value: Any, style: AnswerStyle) -> str | None:
    """Turn a record's answer field into the gold answer string.

    Args:
        value (`Any`): the raw field (`str`, number, list of those, or `None`).
        style (`str`): one of `ANSWER_STYLES`.

    Returns:
        `str` or `None`: the gold answer; `None` when the field is missing or empty (the caller skips the record).

    Raises:
        ValueError: for an unknown style, or a `gsm8k`/`boxed` field without its marker.
    """
    if style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer style {style!r}; valid styles: {list(ANSWER_STYLES)}")
    if value is None:
        return None
    if isinstance(value, list):
        parts = [gold_answer(v, style) for v in value]
        kept = [p for p in parts if p]
        return ", ".join(kept) if kept else None
    if isinstance(value, bool):
        raise ValueError(f"answer field is a bool: {value!r}")
    if isinstance(value, (int, float)):
        text = _format_number(value)
    else:
        text = str(value).strip()
    if not text:
        return None
    if style == "gsm8k":
        return extract_gsm8k_answer(text)
    if style == "boxed":
        return extract_last_boxed(text)
    return text


def iter_jsonl(path: str | os.PathLike, limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(line_index, record)` for each non-blank line of a JSONL file.

    Args:
        path (`str` or `os.PathLike`): the file.
        limit (`int`, *optional*): stop before line index `limit`.

    Yields:
        `tuple[int, dict]`: 0-based line index and the parsed object.

    Raises:
        ValueError: on a line that is not a JSON object (the message gives the line number).
    """
    with open(path, encoding="utf-8") as f:
        for line_index, line in enumerate(f):
            if limit is not None and line_index >= limit:
                return
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_index + 1}: invalid JSON: {err}") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_index + 1}: expected a JSON object, got {type(record).__name__}")
            yield line_index, record


def iter_hub_dataset(
    name: str, config: str | None, split: str, limit: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield `(row_index, record)` from a Hugging Face hub dataset (needs network or a local HF cache).

    Args:
        name (`str`): hub id, e.g. `"openai/gsm8k"`.
        config (`str`, *optional*): dataset config, e.g. `"main"`.
        split (`str`): dataset split.
        limit (`int`, *optional*): stop after this many rows.

    Yields:
        `tuple[int, dict]`: row position and the row.
    """
    import datasets

    dataset = datasets.load_dataset(name, config, split=split)
    for row_index, record in enumerate(dataset):
        if limit is not None and row_index >= limit:
            return
        yield row_index, record


def convert_records(
    rows: Iterable[tuple[int, dict[str, Any]]],
    *,
    split: str,
    style: AnswerStyle = "gsm8k",
    question_field: str | None = None,
    answer_field: str = "answer",
    data_source: str = GSM8K_DATA_SOURCE,
    instruction: str = BOXED_INSTRUCTION,
) -> list[dict[str, Any]]:
    """Convert `(index, record)` pairs to verl rows (schema in the module docstring).

    Args:
        rows (`Iterable[tuple[int, dict]]`): e.g. from `iter_jsonl`; the index becomes `extra_info.index`.
        split (`str`): written to `extra_info.split`.
        style (`str`, *optional*, defaults to `"gsm8k"`): one of `ANSWER_STYLES`.
        question_field (`str`, *optional*): field holding the question; defaults to `"question"` for `gsm8k`
            and to `"problem"` otherwise.
        answer_field (`str`, *optional*, defaults to `"answer"`): field holding the answer.
        data_source (`str`, *optional*, defaults to `GSM8K_DATA_SOURCE`): the `data_source` column.
        instruction (`str`, *optional*, defaults to `BOXED_INSTRUCTION`): appended to each question.

    Returns:
        `list[dict]`: one row per record with a non-empty answer.

    Raises:
        ValueError: on an unknown style, a record without a non-empty question, or a bad `gsm8k`/`boxed` field.
    """
    if style not in ANSWER_STYLES:
        raise ValueError(f"unknown answer style {style!r}; valid styles: {list(ANSWER_STYLES)}")
    if question_field is None:
        question_field = "question" if style == "gsm8k" else "problem"
    out, skipped = [], []
    for index, record in rows:
        question = record.get(question_field)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"record {index}: field {question_field!r} is missing or empty; fields: {sorted(record)}")
        try:
            answer = gold_answer(record.get(answer_field), style)
        except ValueError as err:
            raise ValueError(f"record {index}: {err}") from err
        if answer is None:
            skipped.append(index)
            continue
        out.append(
            make_record(
                data_source=data_source,
                question=question.strip(),
                answer=answer,
                index=index,
                split=split,
                instruction=instruction,
            )
        )
    if skipped:
        logger.warning(
            "skipped %d records with a missing or empty %r field (indices %s)",
            len(skipped),
            answer_field,
            skipped[:20],
        )
    return out
