"""Convert GSM8K-style and MATH-style JSONL (or a Hugging Face dataset) to verl parquet.

Answer styles (`--style`: `gsm8k`, `math`, `boxed`), the `extra_info.index` convention and which records are
skipped are those of the reader, `verl_meds.tasks.records` (documented there once); this script writes its rows as
parquet.

Run:

    python -m data_prep.gsm8k --input /work/shared/data/gsm8k/train.jsonl --out DIR/gsm8k_train.parquet [--limit N]
    python -m data_prep.gsm8k --input /work/shared/data/math500/test.jsonl --style math \\
        --data-source HuggingFaceH4/MATH-500 --out DIR/math500.parquet
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from data_prep.verl_format import BOXED_INSTRUCTION, write_parquet
from verl_meds.tasks.records import (  # noqa: F401 - the readers, re-exported for data_prep and its users
    ANSWER_STYLES,
    GSM8K_DATA_SOURCE,
    AnswerStyle,
    convert_records,
    extract_gsm8k_answer,
    extract_last_boxed,
    gold_answer,
    iter_hub_dataset,
    iter_jsonl,
)

logger = logging.getLogger(__name__)


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
