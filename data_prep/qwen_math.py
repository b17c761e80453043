"""The paper's GPU training and validation files, in the authors' Qwen-Math prompt format, as verl parquet.

Every row has exactly two messages: the Qwen-Math system prompt (`QWEN_MATH_SYSTEM_PROMPT`, the authors' prompt and
instruction) and the raw problem as the user turn. The chat template of the model is applied by verl when it
generates, never here, so a prompt is templated exactly once.

Files written to `--out-dir` (the names `recipes/meds/config/setup/_gpu_common.yaml` reads from
`~/data/meds`):

- `math_lvl3to5_train.parquet`: MATH levels 3-5 (SimpleRL's 8,523 problems; the shared copy
  `data/math_lvl3to5/train.jsonl` or its parquet). Built from the raw `question` field: that copy's `prompt`
  field already holds a rendered Qwen chat template and is never read. The two records with an empty answer are
  skipped. `extra_info.index` = line index.
- `dapo_math_17k_train.parquet` (with `--dapo PATH`): DAPO-Math-17K from a local copy (`read_dapo_math`: the
  original release, whose user turn wraps the problem in DAPO's "Answer:" instruction that is removed here; the
  "processed" release with the problem as a string; or `prompt` + `label` rows). Repeated problems are kept once
  (the original release repeats each problem many times). `extra_info.index` = `DAPO_INDEX_OFFSET` + position.
- `unified_math_train.parquet` (with `--dapo`): DAPO-Math-17K then MATH levels 3-5, the authors' training set
  (the recipes' default training file).
- `aime24_test.parquet` and `math500_test.parquet`: the validation sets (the authors validate on AIME 2024;
  MATH500 is the option), from the local benchmark copies (`data_prep.benchmarks`).

Indices of the two training sources never collide, so the MEDS memory (keyed on `extra_info.index`) keeps one
entry list per problem in the unified file.

Run:

    python -m data_prep.qwen_math --data-dir /work/shared/data --out-dir ~/data/meds [--dapo DAPO.parquet] \\
        [--limit N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from data_prep.benchmarks import DATA_DIR_ENV, load_benchmark
from data_prep.gsm8k import convert_records, gold_answer
from data_prep.verl_format import make_record, write_parquet

logger = logging.getLogger(__name__)

QWEN_MATH_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
"""The Qwen-Math system prompt, the authors' prompt and answer-format instruction (their converter's wording)."""

MATH_DATA_SOURCE = "math_lvl3to5"
"""`data_source` of the MATH level 3-5 rows."""

DAPO_DATA_SOURCE = "dapo_math_17k"
"""`data_source` of the DAPO-Math-17K rows."""

DAPO_INDEX_OFFSET = 1_000_000
"""Added to a DAPO-Math-17K row's position to form its `extra_info.index` (MATH rows use their line index)."""

MATH_LOCAL_PATH = "math_lvl3to5/train.jsonl"
"""The MATH level 3-5 copy, relative to the data folder."""

VALIDATION_SETS = {"aime24": "aime24_test.parquet", "math500": "math500_test.parquet"}
"""Benchmark name (`data_prep.benchmarks.BENCHMARKS`) -> output file name."""

TEMPLATE_MARKERS = ("<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|begin_of_text|>")
"""Chat-template tokens that must never appear in a question (it would be templated twice)."""

_DAPO_PREFIX = re.compile(
    r"^\s*Solve the following math problem step by step\..*?where \$Answer is the answer to the problem\.\s*", re.S
)
_DAPO_SUFFIX = re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$", re.S)


def qwen_math_messages(question: str) -> list[dict[str, str]]:
    """The two chat messages of one problem: the Qwen-Math system prompt and the problem as the user turn.

    Args:
        question (`str`): the raw problem text (stripped here).

    Returns:
        `list[dict[str, str]]`: `[{"role": "system", ...}, {"role": "user", ...}]`.

    Raises:
        ValueError: if the question is empty or already contains chat-template tokens.

    >>> [m["role"] for m in qwen_math_messages("What is $1+1$?")]
    ['system', 'user']
    """
    question = question.strip()
    if not question:
        raise ValueError("empty question")
    marker = next((m for m in TEMPLATE_MARKERS if m in question), None)
    if marker is not None:
        raise ValueError(f"question already contains the chat-template token {marker!r}: {question[:80]!r}")
    return [{"role": "system", "content": QWEN_MATH_SYSTEM_PROMPT}, {"role": "user", "content": question}]


def to_qwen_math(row: dict[str, Any]) -> dict[str, Any]:
    """Give a verl row (`data_prep.verl_format`) the Qwen-Math prompt built from its `extra_info.question`."""
    row["prompt"] = qwen_math_messages(row["extra_info"]["question"])
    return row


def _iter_records(path: str | os.PathLike, limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """`(position, record)` pairs of a `.jsonl`, `.json` (a list) or `.parquet` file."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        records: Iterator[dict[str, Any]] | list[dict[str, Any]] = pq.read_table(path).to_pylist()
    elif path.suffix == ".json":
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    else:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    for position, record in enumerate(records):
        if limit is not None and position >= limit:
            return
        yield position, record


def read_math_lvl3to5(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """MATH levels 3-5 as verl rows with the Qwen-Math prompt.

    Args:
        path (`str` or `os.PathLike`): the SimpleRL copy (`.jsonl` or `.parquet`) with `question` and
            `answer` fields; its pre-rendered `prompt` field is ignored.
        limit (`int`, *optional*): read only the first `limit` records.

    Returns:
        `list[dict]`: one row per record with a non-empty answer (`extra_info.index` = position in the file).

    Raises:
        ValueError: for a record without a question, or a question that holds chat-template tokens.
    """
    rows = convert_records(
        _iter_records(path, limit),
        split="train",
        style="math",
        question_field="question",
        answer_field="answer",
        data_source=MATH_DATA_SOURCE,
        instruction="",
    )
    return [to_qwen_math(row) for row in rows]


def dapo_question(prompt: Any) -> str:
    """The problem text of a DAPO-Math-17K record's `prompt` field.

    Args:
        prompt (`str` or `list[dict]`): the problem itself (the "processed" release), or chat messages whose last
            user turn wraps the problem in DAPO's instruction ("Solve the following math problem step by step. The
            last line of your response should be of the form Answer: $Answer ... Remember to put your answer on its
            own line after \\"Answer:\\"."), which is removed.

    Returns:
        `str`: the problem.

    Raises:
        ValueError: if there is no user turn or no text.

    >>> dapo_question([{"role": "user", "content": "Solve the following math problem step by step. The last line "
    ...     "of your response should be of the form Answer: $Answer (without quotes) where $Answer is the answer to "
    ...     "the problem.\\n\\nFind $x$.\\n\\nRemember to put your answer on its own line after \\"Answer:\\"."}])
    'Find $x$.'
    """
    if isinstance(prompt, str):
        text = prompt
    else:
        users = [m.get("content", "") for m in (prompt or []) if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise ValueError(f"no user turn in prompt {prompt!r:.120}")
        text = users[-1]
    text = _DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", text)).strip()
    if not text:
        raise ValueError("empty problem text")
    return text


def _dapo_answer(record: dict[str, Any]) -> Any:
    reward_model = record.get("reward_model")
    if isinstance(reward_model, dict) and reward_model.get("ground_truth") not in (None, ""):
        return reward_model["ground_truth"]
    return record.get("label", record.get("answer"))


def read_dapo_math(path: str | os.PathLike, limit: int | None = None) -> list[dict[str, Any]]:
    """DAPO-Math-17K from a local copy as verl rows with the Qwen-Math prompt, each problem once.

    Args:
        path (`str` or `os.PathLike`): `.parquet`, `.jsonl` or `.json`; each record has `prompt` (see
            `dapo_question`) and the answer in `reward_model.ground_truth`, `label` or `answer`.
        limit (`int`, *optional*): read only the first `limit` records.

    Returns:
        `list[dict]`: rows in file order, repeated problems (same text after stripping) dropped;
        `extra_info.index` = `DAPO_INDEX_OFFSET` + position among the kept rows.

    Raises:
        ValueError: for a record without a usable prompt, or a question that holds chat-template tokens.
    """
    rows, seen, repeated, unanswered = [], set(), 0, 0
    for position, record in _iter_records(path, limit):
        try:
            question = dapo_question(record.get("prompt"))
        except ValueError as err:
            raise ValueError(f"record {position}: {err}") from err
        answer = gold_answer(_dapo_answer(record), "math")
        if answer is None:
            unanswered += 1
            continue
        if question in seen:
            repeated += 1
            continue
        seen.add(question)
        row = make_record(
            data_source=DAPO_DATA_SOURCE,
            question=question,
            answer=answer,
            index=DAPO_INDEX_OFFSET + len(rows),
            split="train",
            instruction="",
        )
        rows.append(to_qwen_math(row))
    if repeated or unanswered:
        logger.warning("DAPO-Math: %d repeated problems and %d without an answer dropped", repeated, unanswered)
    return rows


def read_validation(name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None):
    """A benchmark (`aime24`, `math500`, ...) from its local copy as verl rows with the Qwen-Math prompt."""
    return [to_qwen_math(row) for row in load_benchmark(name, data_dir=data_dir, limit=limit, instruction="")]


def build(
    out_dir: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    math_path: str | os.PathLike | None = None,
    dapo_path: str | os.PathLike | None = None,
    limit: int | None = None,
) -> dict[str, Path]:
    """Write the training and validation files (see the module docstring).

    Args:
        out_dir (`str` or `os.PathLike`): destination folder (`~/data/meds` for the recipes' defaults).
        data_dir (`str` or `os.PathLike`, *optional*): folder of the local copies (defaults to
            `$VERL_MEDS_DATA_DIR`); MATH levels 3-5 at `MATH_LOCAL_PATH`, the benchmarks as in
            `data_prep.benchmarks`.
        math_path (`str` or `os.PathLike`, *optional*): the MATH level 3-5 file; defaults to the copy in
            `data_dir`.
        dapo_path (`str` or `os.PathLike`, *optional*): a DAPO-Math-17K copy; without it no DAPO or unified file is
            written.
        limit (`int`, *optional*): read only the first `limit` records of each source (tests).

    Returns:
        `dict[str, Path]`: file name stem -> written path.

    Raises:
        FileNotFoundError: when the MATH level 3-5 file or a benchmark copy is missing.
    """
    data_dir = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if math_path is None:
        if data_dir is None:
            raise FileNotFoundError(f"pass --math or --data-dir (or set ${DATA_DIR_ENV}) to find {MATH_LOCAL_PATH}")
        math_path = Path(data_dir) / MATH_LOCAL_PATH
    if not Path(math_path).is_file():
        raise FileNotFoundError(f"MATH level 3-5 copy not found: {math_path}")
    out_dir = Path(out_dir).expanduser()
    written: dict[str, Path] = {}
    math_rows = read_math_lvl3to5(math_path, limit)
    written["math_lvl3to5_train"] = write_parquet(math_rows, out_dir / "math_lvl3to5_train.parquet")
    if dapo_path is not None:
        dapo_rows = read_dapo_math(dapo_path, limit)
        written["dapo_math_17k_train"] = write_parquet(dapo_rows, out_dir / "dapo_math_17k_train.parquet")
        written["unified_math_train"] = write_parquet(dapo_rows + math_rows, out_dir / "unified_math_train.parquet")
    else:
        logger.warning(
            "no --dapo copy: unified_math_train.parquet (the recipes' default) is not written; train on "
            "MATH levels 3-5 only with MEDS_TRAIN_FILE=%s",
            out_dir / "math_lvl3to5_train.parquet",
        )
    for name, file_name in VALIDATION_SETS.items():
        local = Path(data_dir) / name if data_dir is not None else None
        if local is None or not local.exists():
            raise FileNotFoundError(f"no local copy of {name} under {data_dir} (pass --data-dir)")
        written[Path(file_name).stem] = write_parquet(read_validation(name, data_dir, limit), out_dir / file_name)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(
        description="Write the paper's GPU training and validation files (Qwen-Math prompt) as verl parquet."
    )
    parser.add_argument("--out-dir", default="~/data/meds", help="destination folder (default: ~/data/meds)")
    parser.add_argument("--data-dir", default=None, help=f"folder of local copies (default: ${DATA_DIR_ENV})")
    parser.add_argument("--math", default=None, help=f"MATH level 3-5 file (default: DATA_DIR/{MATH_LOCAL_PATH})")
    parser.add_argument("--dapo", default=None, help="local DAPO-Math-17K copy (.parquet, .jsonl or .json)")
    parser.add_argument("--limit", type=int, default=None, help="read only the first N records of each source")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    written = build(args.out_dir, data_dir=args.data_dir, math_path=args.math, dapo_path=args.dapo, limit=args.limit)
    for path in written.values():
        print(path)  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
