"""Grading metrics of every method: how often the reward's grading timed out, failed, or found no answer."""

from __future__ import annotations

from verl_meds.verl.hooks import TrainerHook
from verl_meds.verl.step_data import StepData

GRADING_FLAGS = {"grading_timeout": "reward/grading_timeout_frac", "grading_error": "reward/grading_error_frac"}
"""Flags of `verl_meds.verl.reward` in verl's reward info -> the step metric of their mean."""

ANSWER_FOUND_METRIC = "reward/answer_found_frac"
"""Fraction of a step's responses whose reward function extracted a final answer (every method logs it)."""


def grading_metrics(extra_fields: list) -> dict[str, float]:
    """Fraction of the step's responses whose grading hit its time bound or failed (graded wrong).

    Args:
        extra_fields (`list` of length N): verl's per-response `extra_fields` (`reward_extra_info` inside).

    Returns:
        `dict[str, float]`: `reward/grading_timeout_frac` and `reward/grading_error_frac` over the responses
        whose reward function reported the flag (a reward function of another library reports none: no metric), and
        `reward/answer_found_frac`, the fraction whose reward found a closed final box (a non-empty `pred`).
    """
    metrics = {}
    infos = [f.get("reward_extra_info", {}) if isinstance(f, dict) else {} for f in extra_fields]
    for flag, name in GRADING_FLAGS.items():
        values = [float(info[flag]) for info in infos if info.get(flag) is not None]
        if values:
            metrics[name] = sum(values) / len(values)
    preds = [info["pred"] for info in infos if isinstance(info.get("pred"), str)]
    if preds:
        metrics[ANSWER_FOUND_METRIC] = sum(1 for pred in preds if pred) / len(preds)
    return metrics


def reward_info(extra_fields) -> dict:
    """The reward info verl's agent loop stored in a row's `extra_fields` (`{}` when there is none)."""
    info = extra_fields.get("reward_extra_info") if isinstance(extra_fields, dict) else None
    return info if isinstance(info, dict) else {}


def accuracy(extra_fields) -> bool:
    """Whether one response was graded correct (`acc` of its reward info above 0.5).

    Raises:
        KeyError: when the reward function does not report `acc` (MEDS needs it).
    """
    info = reward_info(extra_fields)
    if "acc" not in info:
        raise KeyError("MEDS needs the reward function to return 'acc' (see verl_meds.verl.reward.compute_score)")
    return float(info["acc"]) > 0.5


class GradingMetricsHook(TrainerHook):
    """Logs `grading_metrics` of the real rows before verl's estimator (every method)."""

    name = "grading"

    def before_advantage(self, step: StepData) -> None:
        real = step.real()
        fields = step.list_of("extra_fields")
        step.metrics.update(grading_metrics([f for f, r in zip(fields, real.tolist(), strict=True) if r]))
