"""Convert GSM8K-style and MATH-style JSONL (or a Hugging Face dataset) to verl parquet.

Answer styles (`--style`):

- `gsm8k`: the answer field is a worked solution; the gold answer is the text after the last `"#### "`, with
  thousands commas removed (`"#### 1,200" -> "1200"`).
- `math`: the answer field is the final answer as given (MATH-500, AIME, AMC, DeepScaleR MATH train). Numbers are
  written as integers when integral (AMC's `27.0 -> "27"`); lists are joined with `", "`.
- `boxed`: the gold answer is the content of the last `\\boxed{...}` in the answer field (Minerva's `solution`).

`extra_info.index` is the 0-based line index in the input file (the row position for a hub dataset), so it stays
stable under `--limit` and when records are skipped. Records whose answer is missing or empty are skipped with a
warning (the DeepScaleR MATH train copy has four); a `gsm8k` solution without `"####"` is an error.

Run:

    python -m data_prep.gsm8k --input /work/shared/data/gsm8k/train.jsonl --out DIR/gsm8k_train.parquet [--limit N]
    python -m data_prep.gsm8k --input /work/shared/data/math500/test.jsonl --style math \\
        --data-source HuggingFaceH4/MATH-500 --out DIR/math500.parquet
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from data_prep.verl_format import BOXED_INSTRUCTION, make_record, write_parquet
from verl_meds.answer import BOX_COMMANDS, extract_boxed

logger = logging.getLogger(__name__)

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
    """Convert `(index, record)` pairs to verl rows (schema in `data_prep.verl_format`).

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


def convert_file(
    input: str | os.PathLike,
    out: str | os.PathLike,
    *,
    limit: int | None = None,
    split: str | None = None,
    style: AnswerStyle = "gsm8k",
    question_field: str | None = None,
    answer_field: str = "answer",
    data_source: str = GSM8K_DATA_SOURCE,
    instruction: str = BOXED_INSTRUCTION,
    hf_config: str | None = "main",
) -> Path:
    """Convert a local JSONL file, or else a hub dataset id, to one verl parquet file.

    Args:
        input (`str` or `os.PathLike`): a JSONL path; if no such file exists it is read as a hub id with
            `datasets.load_dataset(input, hf_config, split=split)`.
        out (`str` or `os.PathLike`): the `.parquet` file to write.
        limit (`int`, *optional*): convert only the first `limit` lines (rows).
        split (`str`, *optional*): `extra_info.split` (and the hub split); defaults to the file stem
            (`train.jsonl -> "train"`), or `"train"` for a hub id.
        style, question_field, answer_field, data_source, instruction: see `convert_records`.
        hf_config (`str`, *optional*, defaults to `"main"`): hub dataset config (GSM8K's is `"main"`).

    Returns:
        `Path`: the written file.

    Raises:
        ValueError: see `convert_records`, or when no record survives.
    """
    if Path(input).is_file():
        split = split or Path(input).stem
        rows = iter_jsonl(input, limit)
    else:
        logger.info("%s is not a local file; loading it as a hub dataset", input)
        split = split or "train"
        rows = iter_hub_dataset(str(input), hf_config, split, limit)
    records = convert_records(
        rows,
        split=split,
        style=style,
        question_field=question_field,
        answer_field=answer_field,
        data_source=data_source,
        instruction=instruction,
    )
    if not records:
        raise ValueError(f"no records with an answer in {input}")
    return write_parquet(records, out)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description="Convert GSM8K/MATH-style JSONL or a hub dataset to verl parquet.")
    parser.add_argument("--input", required=True, help="JSONL path, or a hub dataset id when no such file exists")
    parser.add_argument("--out", required=True, help="output .parquet file")
    parser.add_argument("--limit", type=int, default=None, help="convert only the first N lines")
    parser.add_argument("--split", default=None, help="extra_info.split and hub split (default: the file stem)")
    parser.add_argument("--style", choices=ANSWER_STYLES, default="gsm8k", help="how to read the gold answer")
    parser.add_argument("--question-field", default=None, help="default: question (gsm8k) or problem (math, boxed)")
    parser.add_argument("--answer-field", default="answer", help="field holding the answer or solution")
    parser.add_argument("--data-source", default=GSM8K_DATA_SOURCE, help="value of the data_source column")
    parser.add_argument("--instruction", default=BOXED_INSTRUCTION, help="text appended to each question")
    parser.add_argument("--hf-config", default="main", help="hub dataset config (only for hub ids)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = convert_file(
        args.input,
        args.out,
        limit=args.limit,
        split=args.split,
        style=args.style,
        question_field=args.question_field,
        answer_field=args.answer_field,
        data_source=args.data_source,
        instruction=args.instruction,
        hf_config=args.hf_config,
    )
    print(path)  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
