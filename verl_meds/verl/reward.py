"""Rule-based math reward for verl: grade the last ``\\boxed{}`` with math-verify.

Point verl at these functions with ``reward.custom_reward_function.path=<this file>`` and ``name=``:

- :func:`compute_score` (DAPO-style): ``score`` = +1 when correct, -1 otherwise.
- :func:`compute_score_acc` (accuracy): ``score`` = 1 when correct, 0 otherwise.

Both also return ``acc`` (1.0 / 0.0, what verl's dynamic sampling filters on and what MEDS reads as correctness)
and ``pred`` (the extracted answer, "" when there is none). The overlong buffer of DAPO is verl's own
(``reward.reward_manager.name=dapo`` with ``reward.reward_kwargs.overlong_buffer_cfg``), added on top of ``score``.

Grading (math-verify convention: the gold answer is passed first, since ``verify`` is not symmetric): the
response's answer is the content of its last ``\\boxed{}``/``\\fbox{}``; gold and answer are parsed as LaTeX
(``$...$``) and compared with ``math_verify.verify``. math-verify's timeouts use ``signal`` and only work in the
main thread, while verl calls reward functions from executor threads, so they are switched off here. If
math-verify raises or parses nothing, the documented fallback is an exact match of the normalised strings
(whitespace, ``\\!``, ``\\,``, ``$`` and a trailing ``.`` removed).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from verl_meds.answer import extract_boxed

logger = logging.getLogger(__name__)

_STRIP = re.compile(r"(\s+|\\!|\\,|\\;|\$)")


def _normalise(text: str) -> str:
    return _STRIP.sub("", str(text)).rstrip(".")


def is_correct(pred: str, ground_truth: Any) -> bool:
    """Whether ``pred`` (an extracted answer, no ``\\boxed``) equals ``ground_truth`` under math-verify.

    Args:
        pred (`str`): the model's final answer.
        ground_truth (`str`, `int`, `float` or `list`): the reference; a list means any of its items.

    Returns:
        `bool`: math-verify's verdict, or the normalised-string fallback when math-verify cannot decide.
    """
    if isinstance(ground_truth, (list, tuple)):
        return any(is_correct(pred, g) for g in ground_truth)
    if isinstance(ground_truth, float) and ground_truth.is_integer():
        ground_truth = int(ground_truth)
    gold_text, pred_text = str(ground_truth).strip(), str(pred).strip()
    if not pred_text:
        return False
    if _normalise(gold_text) == _normalise(pred_text):
        return True
    try:
        from math_verify import parse, verify

        gold = parse(f"${gold_text}$", parsing_timeout=None)
        answer = parse(f"${pred_text}$", parsing_timeout=None)
        if gold and answer:
            return bool(verify(gold, answer, timeout_seconds=None))
    except Exception as exc:  # math-verify can raise on malformed LaTeX; fall back below
        logger.debug("math-verify failed on %r vs %r: %s", pred_text, gold_text, exc)
    return False


def _grade(solution_str: str, ground_truth: Any) -> tuple[bool, str]:
    pred = extract_boxed(solution_str or "")
    if pred is None:
        return False, ""
    return is_correct(pred, ground_truth), pred


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs) -> dict:
    """DAPO-style score: ``{"score": +1 or -1, "acc": 1.0 or 0.0, "pred": str}`` (verl reward-function signature)."""
    correct, pred = _grade(solution_str, ground_truth)
    return {"score": 1.0 if correct else -1.0, "acc": float(correct), "pred": pred}


def compute_score_acc(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs
) -> dict:
    """Accuracy score: ``{"score": 1 or 0, "acc": 1.0 or 0.0, "pred": str}`` (verl reward-function signature)."""
    correct, pred = _grade(solution_str, ground_truth)
    return {"score": float(correct), "acc": float(correct), "pred": pred}
