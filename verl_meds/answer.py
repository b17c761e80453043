r"""Final-answer locator: the boxed answer as text, and the token where it starts.

MEDS reads a response's features at its final-answer token (MEDS paper): the first token of the content of
the last `\boxed{...}` (or `\fbox{...}`). [`extract_boxed`] returns that content as text; [`locate_answer_token`]
returns the index of its first token within the response.

Example:

```python
>>> from verl_meds.answer import extract_boxed
>>> extract_boxed(r"First \boxed{1}, then \boxed{\frac{1}{2}}.")
'\\frac{1}{2}'
>>> extract_boxed(r"no box here") is None
True
>>> answer_key("1/2") == answer_key("0.5") == answer_key(r"\frac{1}{2}")
True

```
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

logger = logging.getLogger(__name__)

BOX_MARKERS = ("\\boxed{", "\\fbox{")
_MAX_MARKER_LEN = max(len(marker) for marker in BOX_MARKERS)


class TokenizerLike(Protocol):
    """Anything with a Hugging Face style `decode(token_ids) -> str` (e.g. `PreTrainedTokenizerFast`)."""

    def decode(self, token_ids: list[int]) -> str: ...


def _last_marker(text: str) -> tuple[int, str] | None:
    """Start index and marker of the last box marker in `text`, or `None`."""
    best: tuple[int, str] | None = None
    for marker in BOX_MARKERS:
        start = text.rfind(marker)
        if start >= 0 and (best is None or start > best[0]):
            best = (start, marker)
    return best


def extract_boxed(text: str) -> str | None:
    r"""
    Content of the last `\boxed{...}` or `\fbox{...}` in `text`.

    Braces inside the box may nest (`\boxed{\frac{1}{2}}`); escaped braces `\{` and `\}` are literal characters and
    do not count. Only the last box marker is considered: if its braces are not closed (a truncated response), the
    result is `None` even when an earlier box is complete.

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
    start = found[0] + len(found[1])
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


def _answer_token_after(ids: list[int], tokenizer: TokenizerLike, first: int, offset: int) -> int:
    """Token holding the first non-whitespace character at or after char `offset` of `decode(ids[first:])`; -1 if
    there is none or it is the closing `}`.

    Works on decoded prefixes, not on single-token pieces: a byte-level tokenizer can split one character over several
    tokens that each decode to U+FFFD alone, so a multi-byte space (U+2003, U+3000) would look like an answer.
    """
    tail = tokenizer.decode(ids[first:])
    rest = tail[offset:]
    stripped = rest.lstrip()
    if not stripped or stripped[0] == "}":
        return -1
    answer = offset + len(rest) - len(stripped)  # index in `tail` of the answer's first character
    before = tail[:answer]
    for t in range(first, len(ids)):
        # The first token that decodes past the complete text before the answer holds the answer's first byte.
        prefix = tokenizer.decode(ids[first : t + 1])
        if len(prefix) > answer and prefix.startswith(before):
            return t
    return -1


def locate_answer_token(response_ids: Sequence[int], tokenizer: TokenizerLike) -> int:
    r"""
    Index of the first token of the final answer: the token holding the first character after the `{` of the last
    `\boxed{` or `\fbox{`.

    The response is first decoded once to check that a marker occurs at all. Then tokens are decoded one by one from
    the end (`tokenizer.decode([id])`) until the last marker is found, so the cost grows with the distance of the
    last box from the end, not with the response length. A marker split over several tokens (`"\\"`, `"box"`,
    `"ed"`, `"{"`) is found. When the tokenizer merged `{` with answer characters (a token `"{4"`), that token is the
    answer token.

    Deviations: leading whitespace inside the box is skipped (`\boxed{ 42}` gives the token of `4`, also when a
    byte-level tokenizer splits a multi-byte space such as U+3000 over several tokens), and an empty box
    (`\boxed{}`) counts as no answer. An unclosed last box (`\boxed{4` at the end of a truncated response) still
    gives the token of `4`, although [`extract_boxed`] returns `None` for it.

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
    if not ids:
        return -1
    text = tokenizer.decode(ids)
    if not any(marker in text for marker in BOX_MARKERS):
        return -1
    head = ""  # the first `_MAX_MARKER_LEN - 1` characters right of the current token
    for i in range(len(ids) - 1, -1, -1):
        piece = tokenizer.decode([ids[i]])
        window = piece + head
        best: tuple[int, str] | None = None
        for marker in BOX_MARKERS:
            # Only occurrences that start inside `piece`; those further right were checked before.
            start = window.rfind(marker, 0, len(piece) + len(marker) - 1)
            if start >= 0 and (best is None or start > best[0]):
                best = (start, marker)
        if best is not None:
            return _answer_token_after(ids, tokenizer, i, best[0] + len(best[1]))
        head = window[: _MAX_MARKER_LEN - 1]
    logger.debug("A box marker occurs in the decoded response but not in the per-token decodes; no answer token.")
    return -1


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


ANSWER_KEY_VERSION = 1
"""Version of the [`answer_key`] normalisation; stored with answer-keyed state so that a changed rule is noticed."""

_KEY_STRIP = re.compile(r"(\s+|\\!|\\,|\\;|\\:|\\quad|\\qquad|\\left|\\right|\$)")
_KEY_MAX_OPS = 200  # sympy.simplify is only tried on expressions this small (it can be slow on large ones)


def _canonical_text(text: str) -> str:
    r"""Whitespace, LaTeX spacing, `\left`/`\right` and `$` removed, `\dfrac`/`\tfrac` -> `\frac`, trailing `.` cut."""
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _KEY_STRIP.sub("", text).rstrip(".")


@functools.lru_cache(maxsize=65536)
def _symbolic_key(text: str) -> str | None:
    """`"sym:" + str(canonical sympy form)` of `text` parsed by math-verify, or `None` when it parses to nothing."""
    import sympy
    from math_verify import parse

    try:
        parsed = parse(f"${text}$", parsing_timeout=None)
    except Exception as exc:  # malformed LaTeX: the caller falls back to the string form
        logger.debug("math-verify could not parse %r: %s", text, exc)
        return None
    expr = next((item for item in parsed if isinstance(item, sympy.Basic)), None)
    if expr is None:
        return None
    try:
        if getattr(expr, "is_number", False) and sympy.count_ops(expr) <= _KEY_MAX_OPS:
            expr = sympy.simplify(expr)  # sqrt(8) -> 2*sqrt(2)
        expr = sympy.nsimplify(expr, rational=True)  # floats -> exact rationals: 0.5 -> 1/2, 12.0 -> 12
    except Exception as exc:  # sympy can refuse some objects (sets of intervals, relations); keep them as parsed
        logger.debug("sympy could not simplify %r: %s", expr, exc)
    return f"sym:{expr}"


def answer_key(answer: str | None) -> str | None:
    r"""
    Canonical key of a final answer: equal keys mean the same answer, written in any form.

    The answer is parsed by math-verify (`math_verify.parse` of `$answer$`, no timeout) into a sympy object, which is
    then simplified when it is a number and has floats turned into exact rationals (`sympy.nsimplify(...,
    rational=True)`); the key is `"sym:" + str(...)` of the result, so `"1/2"`, `"0.5"`, `"\frac{1}{2}"` and
    `"\dfrac12"` share the key `"sym:1/2"`, and `"x+1"` and `"1+x"` share `"sym:x + 1"`. When math-verify parses
    nothing, the key is `"str:"` + the text without whitespace, LaTeX spacing, `\left`/`\right`, `$` and a trailing
    period. The rule is deterministic (no RNG, no timeouts), so keys stored in a checkpoint keep their meaning; it
    is versioned by [`ANSWER_KEY_VERSION`]. Results are cached per text (LRU, 65,536 entries).

    Deviation from math-verify's `verify`: the key is a canonical form, not a pairwise test, so it is transitive and
    cheap but stricter: two answers that `verify` accepts only up to a numeric tolerance (`0.333` vs `1/3`) or only
    after heavier simplification get different keys.

    Args:
        answer (`str` or `None`):
            A final answer (the content of the last `\boxed{}`, see [`extract_boxed`]), or `None`.

    Returns:
        `str` or `None`: the key, or `None` when `answer` is `None` or blank (no answer).

    Raises:
        ValueError: if `answer` is neither a `str` nor `None`.
    """
    if answer is None:
        return None
    if not isinstance(answer, str):
        raise ValueError(f"answer must be a str or None, got {type(answer).__name__} {answer!r}.")
    text = _canonical_text(answer)
    if not text:
        return None
    return _symbolic_key(text) or f"str:{text}"
