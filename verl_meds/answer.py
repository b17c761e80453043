r"""Final-answer locator: the boxed answer as text, and the token where it starts.

MEDS reads a response's features at its final-answer token (MEDS paper): the first token of the content of
the last `\boxed{...}` (or `\fbox{...}`). [`extract_boxed`] returns that content as text; [`locate_answer_token`]
returns the index of its first token within the response.

Example:

```python
>>> from verl_meds.answer import answer_key, extract_boxed
>>> extract_boxed(r"First \boxed{1}, then \boxed{\frac{1}{2}}.")
'\\frac{1}{2}'
>>> extract_boxed(r"The answer is \boxed {42}.")
'42'
>>> extract_boxed(r"no box here") is None
True
>>> answer_key("1/2") == answer_key("0.5") == answer_key(r"\frac{1}{2}")
True

```
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

BOX_COMMANDS = ("boxed", "fbox")
"""LaTeX commands whose argument is the final answer; whitespace may separate a command from its `{`."""

_BOX_MARKER = re.compile(r"\\(?:boxed|fbox)\s*\{")
_WINDOW_TOKENS = 16  # tokens decoded from a candidate marker start; doubled while the marker or answer runs on
_X_REACH = 5  # a marker's `x` (`\\boxed`, `\\fbox`) lies at most 4 tokens after the token holding its backslash


class TokenizerLike(Protocol):
    """Anything with a Hugging Face style `decode(token_ids) -> str` (e.g. `PreTrainedTokenizerFast`)."""

    def decode(self, token_ids: list[int]) -> str: ...


def _last_marker(text: str) -> re.Match | None:
    """The last box marker (`\boxed{`, `\fbox {`, ...) in `text`, or `None`."""
    last = None
    for last in _BOX_MARKER.finditer(text):  # noqa: B007 - the loop only moves to the last match
        pass
    return last


def extract_boxed(text: str) -> str | None:
    r"""
    Content of the last `\boxed{...}` or `\fbox{...}` in `text`.

    Whitespace between the command and its brace is allowed (`\boxed {42}`, as LaTeX reads it). Braces inside the
    box may nest (`\boxed{\frac{1}{2}}`); escaped braces `\{` and `\}` are literal characters and do not count. Only
    the last box marker is considered: if its braces are not closed (a truncated response), the result is `None`
    even when an earlier box is complete.

    Args:
        text (`str`):
            A decoded response.

    Returns:
        `str` or `None`: the content between the braces (possibly `""` for `\boxed{}`), or `None` when there is no
        box or the last box is not closed.
    """
    found = _last_marker(text)
    if found is None:
        return None
    start = found.end()
    depth = 1
    i = start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character, e.g. `\{`, `\}` or `\\`, never opens or closes a group
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    return None


NO_ANSWER_TEXT = "<no answer>"
"""What [`answer_text`] gives a response without a final answer."""


def answer_text(answer: Any) -> str:
    """
    A final answer as plain text for counting equal answers without a parser: runs of whitespace become one space,
    `None` (no answer) becomes [`NO_ANSWER_TEXT`]. [`answer_key`] is the canonical key (`1/2` = `0.5`).

    >>> answer_text("  1 /  2 "), answer_text(None)
    ('1 / 2', '<no answer>')
    """
    return " ".join(str(answer).split()) if answer is not None else NO_ANSWER_TEXT


def integer_answer(answer: Any) -> int | None:
    """
    The integer a final answer spells (surrounding whitespace allowed), or `None` for no answer or anything else.

    >>> integer_answer(" -12 "), integer_answer("1/2"), integer_answer(None)
    (-12, None, None)
    """
    if answer is None:
        return None
    try:
        return int(str(answer).strip())
    except ValueError:
        return None


def extract_boxed_integer(text: str) -> int | None:
    r"""
    The integer in the last `\boxed{...}` of a response ([`extract_boxed`], then [`integer_answer`]).

    >>> extract_boxed_integer(r"7*3=21, 24+21=45. \boxed{45}"), extract_boxed_integer(r"\boxed{x}")
    (45, None)
    """
    return integer_answer(extract_boxed(text))


_BACKSLASH, _X, _KNOWN = 1, 2, 128  # bits of a token id's flags


class _PieceFlags:
    """Per token id: does its decoded piece hold a backslash, an `x`? Each id is decoded once per tokenizer."""

    def __init__(self, tokenizer: TokenizerLike) -> None:
        self.tokenizer = tokenizer
        self.table = np.zeros(0, dtype=np.uint8)  # indexed by token id: _BACKSLASH | _X | _KNOWN bits

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Flags of `ids` (any shape, int >= 0): a uint8 array of the shape of `ids` (bits `_BACKSLASH`, `_X`)."""
        if ids.size == 0:
            return np.zeros(ids.shape, dtype=np.uint8)
        top = int(ids.max()) + 1
        if top > self.table.size:
            self.table = np.concatenate([self.table, np.zeros(top - self.table.size, dtype=np.uint8)])
        flags = self.table[ids]
        unknown = flags < _KNOWN
        if unknown.any():
            for token_id in np.unique(ids[unknown]).tolist():
                piece = self.tokenizer.decode([token_id])
                self.table[token_id] = _KNOWN | (_BACKSLASH * ("\\" in piece)) | (_X * ("x" in piece))
            flags = self.table[ids]
        return flags


_FLAGS: dict[int, _PieceFlags] = {}


def _flags(tokenizer: TokenizerLike) -> _PieceFlags:
    flags = _FLAGS.get(id(tokenizer))
    if flags is None or flags.tokenizer is not tokenizer:
        if len(_FLAGS) > 16:
            _FLAGS.clear()
        flags = _FLAGS[id(tokenizer)] = _PieceFlags(tokenizer)
    return flags


def _candidates(flags: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a marker can start: backslash tokens with an `x` token at most `_X_REACH - 1` tokens later.

    Args:
        flags (`np.ndarray` of shape `(N, T)`, uint8): token flags ([`_PieceFlags.lookup`]).
        lengths (`np.ndarray` of shape `(N,)`, int): real tokens of each row (a prefix of the row).

    Returns:
        `tuple[np.ndarray, np.ndarray]`: rows and positions of the candidates, in row-major order.
    """
    rows, cols = np.nonzero(flags & _BACKSLASH)  # sparse: a few per hundred tokens
    keep = cols < lengths[rows]
    rows, cols = rows[keep], cols[keep]
    has_x = np.zeros(rows.size, dtype=bool)
    for shift in range(_X_REACH):
        ahead = cols + shift
        inside = ahead < lengths[rows]
        has_x[inside] |= (flags[rows[inside], ahead[inside]] & _X) > 0
    return rows[has_x], cols[has_x]


def _answer_at(ids: np.ndarray, first: int, tokenizer: TokenizerLike) -> int | None:
    """Answer token of a marker that starts in token `first` of `ids` (T,): its index, -1 (no answer after this
    marker), or `None` (no marker starts in token `first`)."""
    piece_length = max(len(tokenizer.decode(ids[first : first + 1].tolist())), 1)
    width = _WINDOW_TOKENS
    while True:
        last = min(ids.size, first + width)
        window = tokenizer.decode(ids[first:last].tolist())
        found = None
        for match in _BOX_MARKER.finditer(window):
            if match.start() >= piece_length:
                break
            found = match
        rest = window[found.end() :] if found is not None else ""
        if found is not None and rest.strip():
            break
        if last == ids.size:  # the whole rest of the response is decoded
            return None if found is None else -1
        if found is None and not _could_be_marker(window[:piece_length], window):
            return None
        width *= 2
    stripped = rest.lstrip()
    if stripped[0] == "}":
        return -1
    answer = len(window) - len(stripped)  # index in `window` of the answer's first character
    before = window[:answer]
    low, high = first, last - 1  # the window decodes past `before`, so `high` qualifies
    while low < high:
        # The first token whose prefix decodes past the complete text before the answer holds its first byte.
        middle = (low + high) // 2
        prefix = tokenizer.decode(ids[first : middle + 1].tolist())
        if len(prefix) > answer and prefix.startswith(before):
            high = middle
        else:
            low = middle + 1
    return low


def _could_be_marker(piece: str, window: str) -> bool:
    """Whether a backslash of `piece` starts text that may still become a box marker once more tokens follow."""
    for index in range(len(piece)):
        if piece[index] == "\\":
            head = window[index + 1 :].rstrip()
            for command in BOX_COMMANDS:
                if command.startswith(head) or (head.startswith(command) and not head[len(command) :].strip()):
                    return True
    return False


def _locate_row(ids: np.ndarray, candidates: np.ndarray, tokenizer: TokenizerLike) -> int:
    """Answer token of one response `ids` (T,) given its candidate positions (ascending), or -1."""
    for first in candidates[::-1].tolist():
        index = _answer_at(ids, first, tokenizer)
        if index is not None:
            return index
    return -1


def locate_answer_token(response_ids: Sequence[int], tokenizer: TokenizerLike) -> int:
    r"""
    Index of the first token of the final answer: the token holding the first character after the `{` of the last
    `\boxed{` or `\fbox{` (whitespace allowed before the `{`).

    The search runs on token ids, not on the decoded response: every marker starts with a backslash and holds an
    `x` within its first five characters, so only tokens whose piece holds a backslash, followed within four tokens
    by one holding an `x`, can start it (each token id is decoded once per tokenizer to know that). From the last
    such candidate backwards, a short window of tokens from the candidate is decoded until one holds a marker that
    starts in the candidate token; within that window, the answer token is found by bisection over decoded
    prefixes (`decode(ids[first : t + 1])`), never from single-token pieces alone, since a byte-level tokenizer can
    split one character over several tokens that each decode to U+FFFD. So the cost grows with the number of
    candidates after the last box, not with the response length. A marker split over several tokens (`"\\"`,
    `"box"`, `"ed"`, `"{"`) is found. When the tokenizer merged `{` with answer characters (a token `"{4"`), that
    token is the answer token.

    Deviations: leading whitespace inside the box is skipped (`\boxed{ 42}` gives the token of `4`, also for a
    multi-byte space such as U+3000), and an empty box (`\boxed{}`) counts as no answer. An unclosed last box
    (`\boxed{4` at the end of a truncated response) still gives the token of `4`, although [`extract_boxed`] returns
    `None` for it.

    Args:
        response_ids (`Sequence[int]`):
            Token ids of the response only (no prompt, no padding), length T.
        tokenizer (`TokenizerLike`):
            Tokenizer with `decode(list[int]) -> str`, e.g. a Hugging Face tokenizer.

    Returns:
        `int`: 0-based index in `response_ids`, or `-1` when there is no box, the last box has nothing after `{`, or
        the last box is empty.
    """
    ids = np.asarray([int(token_id) for token_id in response_ids], dtype=np.int64)  # (T,)
    if ids.size == 0:
        return -1
    _, candidates = _candidates(_flags(tokenizer).lookup(ids)[None, :], np.array([ids.size]))
    return _locate_row(ids, candidates, tokenizer)


def locate_answer_tokens(
    response_ids: torch.Tensor, response_mask: torch.Tensor, tokenizer: TokenizerLike
) -> torch.LongTensor:
    """
    Batch version of [`locate_answer_token`], looking only at tokens where `response_mask` is 1.

    The token flags of the whole batch are looked up at once; only the candidate windows are decoded per row.

    Args:
        response_ids (`torch.Tensor` of shape `(N, T)`, dtype `long`):
            Response token ids, padded.
        response_mask (`torch.Tensor` of shape `(N, T)`, any dtype):
            1 (or `True`) for real response tokens, 0 for padding.
        tokenizer (`TokenizerLike`):
            Tokenizer with `decode(list[int]) -> str`.

    Returns:
        `torch.LongTensor` of shape `(N,)`: index along T of each row's answer token, `-1` where there is none.

    Raises:
        ValueError: if the inputs are not 2-D tensors of the same shape.
    """
    if response_ids.dim() != 2 or response_ids.shape != response_mask.shape:
        raise ValueError(
            f"response_ids and response_mask must both have shape (N, T), got {tuple(response_ids.shape)} and "
            f"{tuple(response_mask.shape)}."
        )
    ids = response_ids.detach().cpu().numpy().astype(np.int64)  # (N, T)
    mask = response_mask.detach().cpu().numpy().astype(bool)  # (N, T)
    answer_positions = torch.full((ids.shape[0],), -1, dtype=torch.long)  # (N,)
    if not mask.any():
        return answer_positions
    if ids.min() < 0:
        raise ValueError(f"response_ids must be >= 0, got {int(ids.min())}.")
    lengths = mask.sum(axis=1)  # (N,)
    first_pad = np.where(mask.all(axis=1), mask.shape[1], mask.argmin(axis=1))  # (N,)
    contiguous = first_pad == lengths  # (N,) verl's layout: the real tokens are a prefix
    flags = _flags(tokenizer).lookup(ids)  # (N, T)
    rows, cols = _candidates(flags, np.where(contiguous, lengths, 0))
    bounds = np.searchsorted(rows, np.arange(ids.shape[0] + 1))  # row n's candidates: bounds[n]:bounds[n + 1]
    for n in np.flatnonzero(bounds[1:] > bounds[:-1]).tolist():
        index = _locate_row(ids[n, : lengths[n]], cols[bounds[n] : bounds[n + 1]], tokenizer)
        if index >= 0:
            answer_positions[n] = index
    for n in np.flatnonzero(~contiguous & (lengths > 0)).tolist():  # holes in the mask: real tokens only
        positions = np.flatnonzero(mask[n])  # (T_n,)
        _, row_candidates = _candidates(flags[n, positions][None, :], np.array([positions.size]))
        index = _locate_row(ids[n, positions], row_candidates, tokenizer)
        if index >= 0:
            answer_positions[n] = int(positions[index])
    return answer_positions


ANSWER_KEY_VERSION = 2
"""Version of the [`answer_key`] rule (`verl_meds.grading.key_text`); stored with answer-keyed state so that a
changed rule is noticed."""


def answer_key(answer: str | None, timeout_seconds: float | None = None) -> str | None:
    r"""
    Canonical key of a final answer: equal keys mean the same answer, written in any form.

    One answer through [`verl_meds.grading.answer_keys`] (math-verify's parse in a worker process, bounded by
    `timeout_seconds`, default 5 s): `"1/2"`, `"0.5"`, `"\frac{1}{2}"` and `"\dfrac12"` share the key `"sym:1/2"`;
    an answer that is not fully understood (`0.\overline{3}` is, as the fraction 1/3; `\overline{AB}` is not) is
    keyed by its text (`"str:..."`), so it never shares a key with a different answer. The rule is deterministic
    and versioned by [`ANSWER_KEY_VERSION`].

    Deviation from math-verify's `verify`: the key is a canonical form, not a pairwise test, so it is transitive and
    cheap but stricter: two answers that `verify` accepts only up to a numeric tolerance (`0.333` vs `1/3`) or only
    after heavier simplification get different keys.

    Args:
        answer (`str` or `None`):
            A final answer (the content of the last `\boxed{}`, see [`extract_boxed`]), or `None`.
        timeout_seconds (`float`, *optional*):
            Time bound; an answer that hits it gets the key `None` (no answer).

    Returns:
        `str` or `None`: the key, or `None` when `answer` is `None` or blank (no answer) or its key timed out.

    Raises:
        ValueError: if `answer` is neither a `str` nor `None`.
    """
    from .grading import answer_keys

    keys, _ = answer_keys([answer], timeout_seconds)
    return keys[0]
