"""The paper's evaluation benchmarks (`verl_meds.eval.benchmarks`) as verl parquet files.

Run:

    python -m data_prep.benchmarks --data-dir /work/shared/data --out-dir DIR [--benchmarks math500 aime24] \\
        [--limit N]

which writes `DIR/<name>.parquet` for each benchmark (all six by default) and prints the paths.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from data_prep.verl_format import BOXED_INSTRUCTION, write_parquet
from verl_meds.eval.benchmarks import (  # noqa: F401 - the registry and reader, re-exported for data_prep and its users
    BENCHMARKS,
    DATA_DIR_ENV,
    PAPER_BENCHMARKS,
    BenchmarkSpec,
    Source,
    get_benchmark,
    load_benchmark,
    resolve_source,
    strip_math_delimiters,
)

logger = logging.getLogger(__name__)


def convert_benchmark(
    name: str,
    out: str | os.PathLike,
    input: str | os.PathLike | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    instruction: str = BOXED_INSTRUCTION,
) -> Path:
    """Write one benchmark as a verl parquet file (arguments as in `load_benchmark`).

    Returns:
        `Path`: the written file.

    Raises:
        ValueError: as `load_benchmark`, or when no problem has an answer.
    """
    rows = load_benchmark(name, input, data_dir=data_dir, limit=limit, instruction=instruction)
    if not rows:
        raise ValueError(f"no problems with an answer in benchmark {name!r}")
    return write_parquet(rows, out)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description="Write evaluation benchmarks as verl parquet files.")
    parser.add_argument("--out-dir", required=True, help="folder for <name>.parquet files")
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        default=list(BENCHMARKS),
        choices=list(BENCHMARKS),
        help="benchmarks to convert (default: all)",
    )
    parser.add_argument(
        "--data-dir", default=None, help=f"folder of local JSONL copies (default: ${DATA_DIR_ENV}); else the hub"
    )
    parser.add_argument("--limit", type=int, default=None, help="keep only the first N problems of each")
    parser.add_argument("--instruction", default=BOXED_INSTRUCTION, help="text appended to each question")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in args.benchmarks:
        path = convert_benchmark(
            name,
            Path(args.out_dir) / f"{name}.parquet",
            data_dir=args.data_dir,
            limit=args.limit,
            instruction=args.instruction,
        )
        print(path)  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
