"""The synthetic arithmetic task (`verl_meds.tasks.synthetic`) written as verl parquet.

Run:

    python -m data_prep.synthetic --out DIR --n-train 2000 --n-test 200 --seed 0

which writes `DIR/train.parquet` and `DIR/test.parquet` (schema in `data_prep.verl_format`). The task itself (problems,
procedures, error modes) lives in `verl_meds.tasks.synthetic`; its names are importable from here too.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.verl_format import BOXED_INSTRUCTION, make_record, write_parquet
from verl_meds.tasks.synthetic import (  # noqa: F401 - the task's names, re-exported for data_prep and its users
    DATA_SOURCE,
    FAULTY_PROCEDURES,
    FORMS,
    OPERAND_RANGES,
    PROCEDURES,
    STEP_PROCEDURES,
    Problem,
    Step,
    Tree,
    all_problems,
    error_modes,
    format_solution,
    generate_problems,
    get_procedure,
    parse_expression,
    parse_question,
    prompt_messages,
    split_problems,
    tokenize_expression,
)

logger = logging.getLogger(__name__)


def to_verl_records(
    problems: Sequence[Problem],
    split: str,
    data_source: str = DATA_SOURCE,
    instruction: str = BOXED_INSTRUCTION,
) -> list[dict[str, Any]]:
    """Convert problems to verl rows; `extra_info.index` is the position in `problems`.

    Args:
        problems (`Sequence[Problem]`): the problems of one split.
        split (`str`): written to `extra_info.split`.
        data_source (`str`, *optional*, defaults to `DATA_SOURCE`): the `data_source` column.
        instruction (`str`, *optional*, defaults to `BOXED_INSTRUCTION`): appended to each question.

    Returns:
        `list[dict]`: rows as described in `data_prep.verl_format`; the ground truth is `str(answer)`.
    """
    return [
        make_record(
            data_source=data_source,
            question=p.question,
            answer=str(p.answer),
            index=i,
            split=split,
            instruction=instruction,
        )
        for i, p in enumerate(problems)
    ]


def write_synthetic(
    out_dir: str | Path, n_train: int = 2000, n_test: int = 200, seed: int = 0, data_source: str = DATA_SOURCE
) -> dict[str, Path]:
    """Write `out_dir/train.parquet` and `out_dir/test.parquet`.

    Args:
        out_dir (`str` or `Path`): output folder, created if missing.
        n_train (`int`, *optional*, defaults to `2000`): train rows.
        n_test (`int`, *optional*, defaults to `200`): test rows.
        seed (`int`, *optional*, defaults to `0`): generator seed.
        data_source (`str`, *optional*, defaults to `DATA_SOURCE`): the `data_source` column.

    Returns:
        `dict[str, Path]`: split name -> written file.

    Raises:
        ValueError: see `generate_problems`.
    """
    out_dir = Path(out_dir)
    splits = split_problems(n_train, n_test, seed)
    return {
        split: write_parquet(to_verl_records(problems, split, data_source), out_dir / f"{split}.parquet")
        for split, problems in splits.items()
    }


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description="Write the synthetic arithmetic task as verl parquet.")
    parser.add_argument("--out", required=True, help="output folder for train.parquet and test.parquet")
    parser.add_argument("--n-train", type=int, default=2000, help="number of train problems")
    parser.add_argument("--n-test", type=int, default=200, help="number of test problems (disjoint from train)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--data-source", default=DATA_SOURCE, help="value of the data_source column")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    paths = write_synthetic(args.out, args.n_train, args.n_test, args.seed, args.data_source)
    for split, path in paths.items():
        print(f"{split}: {path}")  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
