"""The verl parquet record format shared by every converter in `data_prep`.

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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from verl_meds.tasks.prompt import BOXED_INSTRUCTION, build_prompt_text  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
"""Top-level columns of every parquet file written here, in order."""

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


def _arrow_schema():
    """The pyarrow schema of a verl row; fixed so an empty file still has the right columns."""
    import pyarrow as pa

    message = pa.struct([("role", pa.string()), ("content", pa.string())])
    return pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(message)),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
            (
                "extra_info",
                pa.struct(
                    [("index", pa.int64()), ("split", pa.string()), ("question", pa.string()), ("answer", pa.string())]
                ),
            ),
        ]
    )


def write_parquet(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write verl rows to a parquet file atomically (temporary file, then rename).

    Args:
        records (`Iterable[dict]`): rows from `make_record`.
        path (`str` or `os.PathLike`): destination `.parquet` file; parent folders are created.

    Returns:
        `Path`: the written path.

    Raises:
        pyarrow.ArrowInvalid / pyarrow.ArrowTypeError: if a row does not match the schema.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(list(records), schema=_arrow_schema())
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    logger.info("wrote %d rows to %s", table.num_rows, path)
    return path


def read_parquet(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a parquet file written by `write_parquet` back into a list of rows (for tests and tools).

    Args:
        path (`str` or `os.PathLike`): the `.parquet` file.

    Returns:
        `list[dict]`: one dict per row with nested lists/dicts.
    """
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()
