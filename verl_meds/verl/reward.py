"""Rule-based math reward for verl: grade the last `\\boxed{}` with math-verify, in a bounded time.

Point verl at these functions with `reward.custom_reward_function.path=<this file>` and `name=`:

- `compute_score` (DAPO-style): `score` = +1 when correct, -1 otherwise.
- `compute_score_acc` (accuracy): `score` = 1 when correct, 0 otherwise.

Both also return `acc` (1.0 / 0.0, what verl's dynamic sampling filters on and what MEDS reads as correctness),
`pred` (the extracted answer, "" when there is none) and `grading_timeout` / `grading_error` (1.0 when the
grading hit its time bound or failed, or the ground truth is no answer (`None`, NaN): the response is then graded
wrong; the trainer logs their means as
`reward/grading_timeout_frac` and `reward/grading_error_frac`). The overlong buffer of DAPO is verl's own
(`reward.reward_manager.name=dapo` with `reward.reward_kwargs.overlong_buffer_cfg`), added on top of `score`.

Grading is `verl_meds.grading.grade`: math-verify's `verify` (gold first) behind three small rules
(spellings unified, only fully understood answers compared as math, exact numbers compared exactly), run in worker
processes so that every response is graded within `timeout_seconds` (default 5 s; pass it through
`reward.custom_reward_function.reward_kwargs` or set `VERL_MEDS_GRADING_TIMEOUT`) from whatever thread verl
calls it.

With `answer_keys=True` (`reward.custom_reward_function.reward_kwargs.answer_keys`, set by the answer-keyed
recipes) the result also carries `answer_key` (`verl_meds.grading.answer_keys` of `pred`, "" for none) and its
`answer_key_timeout` / `answer_key_error` flags: the keys are then computed in verl's reward workers, in parallel,
and the trainer reads them instead of decoding and keying every response in the driver.
"""

from __future__ import annotations

import logging
from typing import Any

from verl_meds.answer import extract_boxed
from verl_meds.grading import ERROR, TIMEOUT, Grade, grade
from verl_meds.grading import answer_keys as _answer_keys

logger = logging.getLogger(__name__)


def is_correct(pred: str, ground_truth: Any, timeout_seconds: float | None = None) -> bool:
    """Whether `pred` (an extracted answer, no `\\boxed`) equals `ground_truth` (`verl_meds.grading.grade`).

    Args:
        pred (`str`): the model's final answer.
        ground_truth (`str`, `int`, `float` or `list`): the reference; a list means any of its items; numbers are
            written in positional notation (`1e-05` is `0.00001`).
        timeout_seconds (`float`, *optional*): time bound of the comparison (default 5 s).

    Returns:
        `bool`: the verdict; `False` when the bound was hit or the comparison failed.

    Raises:
        ValueError: for a `bool`, non-finite or non-numeric, non-string `ground_truth`.
    """
    return grade(pred, ground_truth, timeout_seconds).correct


def _grade(solution_str: str, ground_truth: Any, timeout_seconds: float | None) -> tuple[Grade, str]:
    pred = extract_boxed(solution_str or "")
    if pred is None:
        return Grade(False, "ok", 0.0), ""
    try:
        return grade(pred, ground_truth, timeout_seconds), pred
    except ValueError as exc:  # a gold answer that is no answer (None, NaN, a bool): a data fault, not a crash mid-run
        logger.warning("graded wrong, the ground truth is unusable: %s", exc)
        return Grade(False, ERROR, 0.0), pred


def _result(score: float, verdict: Grade, pred: str, with_key: bool, timeout_seconds: float | None) -> dict:
    result = {
        "score": score,
        "acc": float(verdict.correct),
        "pred": pred,
        "grading_timeout": float(verdict.status == TIMEOUT),
        "grading_error": float(verdict.status == ERROR),
    }
    if with_key:
        keys, statuses = _answer_keys([pred or None], timeout_seconds)
        result["answer_key"] = keys[0] or ""
        result["answer_key_timeout"] = float(statuses[0] == TIMEOUT)
        result["answer_key_error"] = float(statuses[0] == ERROR)
    return result


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    timeout_seconds: float | None = None,
    answer_keys: bool = False,
    **kwargs,
) -> dict:
    """DAPO-style score (verl reward-function signature): `score` +1 or -1, `acc`, `pred`, grading flags."""
    verdict, pred = _grade(solution_str, ground_truth, timeout_seconds)
    return _result(1.0 if verdict.correct else -1.0, verdict, pred, answer_keys, timeout_seconds)


def compute_score_acc(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    timeout_seconds: float | None = None,
    answer_keys: bool = False,
    **kwargs,
) -> dict:
    """Accuracy score (verl reward-function signature): `score` 1 or 0, `acc`, `pred`, grading flags."""
    verdict, pred = _grade(solution_str, ground_truth, timeout_seconds)
    return _result(float(verdict.correct), verdict, pred, answer_keys, timeout_seconds)
