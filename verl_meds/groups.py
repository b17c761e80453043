"""Grouping of rows by an id: the one helper behind every "rows of each prompt / group" loop in `verl_meds`.

Example:

```python
>>> from verl_meds.groups import group_codes, group_rows
>>> group_rows(["b", "a", "b", "c"])
{'b': [0, 2], 'a': [1], 'c': [3]}
>>> group_codes(["b", "a", "b", "c"])
[0, 1, 0, 2]

```
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any


def _values(group_ids: Sequence[Hashable] | Any, num_rows: int | None) -> list[Hashable]:
    """`group_ids` as a list of plain python values (numpy arrays and torch tensors through `tolist`)."""
    values = group_ids.tolist() if hasattr(group_ids, "tolist") else list(group_ids)
    if num_rows is not None and len(values) != num_rows:
        raise ValueError(f"group_ids must have length N={num_rows}, got {len(values)}.")
    return values


def group_rows(
    group_ids: Sequence[Hashable] | Any, num_rows: int | None = None, rows: Iterable[int] | None = None
) -> dict[Hashable, list[int]]:
    """
    Rows of each group, groups in order of first appearance, rows in increasing order.

    Args:
        group_ids (`Sequence[Hashable]` of length N, `np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Group of each row (a prompt id, verl's per-step `uid`, ...); arrays and tensors are read with `tolist`.
        num_rows (`int`, *optional*):
            Expected N; a `ValueError` is raised when `group_ids` has another length.
        rows (`Iterable[int]`, *optional*):
            Only these rows (in increasing order) are grouped; all rows when omitted.

    Returns:
        `dict[Hashable, list[int]]`: group id -> its rows.
    """
    values = _values(group_ids, num_rows)
    rows_of: dict[Hashable, list[int]] = {}
    for row in range(len(values)) if rows is None else rows:
        rows_of.setdefault(values[int(row)], []).append(int(row))
    return rows_of


def group_codes(group_ids: Sequence[Hashable] | Any, num_rows: int | None = None) -> list[int]:
    """
    Dense integer code of each row's group: 0 for the first group to appear, 1 for the second, ...

    Args:
        group_ids (`Sequence[Hashable]` of length N, `np.ndarray` or `torch.Tensor` of shape `(N,)`):
            Group of each row.
        num_rows (`int`, *optional*):
            Expected N; a `ValueError` is raised when `group_ids` has another length.

    Returns:
        `list[int]` of length N.
    """
    codes: dict[Hashable, int] = {}
    return [codes.setdefault(value, len(codes)) for value in _values(group_ids, num_rows)]
