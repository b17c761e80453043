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
from typing import Protocol

import numpy as np
import torch

BOX_COMMANDS = ("boxed", "fbox")
"""LaTeX commands whose argument is the final answer; whitespace may separate a command from its `{`."""

_BOX_MARKER = re.compile(r"\\(?:boxed|fbox)\s*\{")
_WINDOW_TOKENS = 64  # first window of response tokens decoded when looking for the last box marker
_GARBLED_CHARS = 4  # characters at a window's start that a partial multi-byte token can garble


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


def locate_answer_token(response_ids: Sequence[int], tokenizer: TokenizerLike) -> int:
    r"""
    Index of the first token of the final answer: the token holding the first character after the `{` of the last
    `\boxed{` or `\fbox{` (whitespace allowed before the `{`).

    Only a suffix of the response is decoded: the last 64 tokens, then 128, 256, ... until the window holds a box
    marker (or is the whole response), so the cost grows with the distance of the last box from the end. Within the
    window, the answer token is found by bisection over decoded prefixes (`decode(ids[first : t + 1])`), never from
    single-token pieces: a byte-level tokenizer can split one character over several tokens that each decode to
    U+FFFD alone. A marker split over several tokens (`"\\"`, `"box"`, `"ed"`, `"{"`) is found. When the tokenizer
    merged `{` with answer characters (a token `"{4"`), that token is the answer token.

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
    ids = [int(token_id) for token_id in response_ids]
    width = _WINDOW_TOKENS
    while True:
        first = max(0, len(ids) - width)
        tail = tokenizer.decode(ids[first:])
        found = _last_marker(tail)
        if found is not None and (first == 0 or found.start() >= _GARBLED_CHARS):
            break
        if first == 0:
            return -1
        width *= 2
    rest = tail[found.end() :]
    stripped = rest.lstrip()
    if not stripped or stripped[0] == "}":
        return -1
    answer = len(tail) - len(stripped)  # index in `tail` of the answer's first character
    before = tail[:answer]
    low, high = first, len(ids) - 1  # the full tail decodes past `before`, so `high` qualifies
    while low < high:
        # The first token whose prefix decodes past the complete text before the answer holds its first byte.
        middle = (low + high) // 2
        prefix = tokenizer.decode(ids[first : middle + 1])
        if len(prefix) > answer and prefix.startswith(before):
            high = middle
        else:
            low = middle + 1
    return low


def locate_answer_tokens(
    response_ids: torch.Tensor, response_mask: torch.Tensor, tokenizer: TokenizerLike
) -> torch.LongTensor:
    """
    Batch version of [`locate_answer_token`], looking only at tokens where `response_mask` is 1.

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
    ids = response_ids.detach().cpu().numpy()  # (N, T)
    mask = response_mask.detach().cpu().numpy().astype(bool)  # (N, T)
    answer_positions = torch.full((ids.shape[0],), -1, dtype=torch.long)  # (N,)
    for n in range(ids.shape[0]):
        positions = np.flatnonzero(mask[n])
        if positions.size == 0:
            continue
        index = locate_answer_token(ids[n, positions].tolist(), tokenizer)
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
