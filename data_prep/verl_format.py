"""Parquet files of verl rows (`verl_meds.tasks.records` defines the row, its columns and `make_record`), written
atomically and read back; every converter in `data_prep` writes through here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from verl_meds.tasks.prompt import BOXED_INSTRUCTION, build_prompt_text  # noqa: F401 - re-exported
from verl_meds.tasks.records import EXTRA_INFO_FIELDS, VERL_COLUMNS, make_record  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)


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
