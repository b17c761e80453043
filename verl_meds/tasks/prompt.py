"""The answer-format instruction every task prompt ends with, and the user message built from a question."""

from __future__ import annotations

BOXED_INSTRUCTION = "Put the final answer in \\boxed{}."
"""Instruction appended (after one space) to every question, so the reward can grade the last `\\boxed{...}`."""


def build_prompt_text(question: str, instruction: str = BOXED_INSTRUCTION) -> str:
    """
    Join a question and the answer-format instruction into the user message.

    Args:
        question (`str`):
            The problem text, stripped of surrounding whitespace here.
        instruction (`str`, *optional*, defaults to `BOXED_INSTRUCTION`):
            Appended after one space; `""` adds nothing.

    Returns:
        `str`: the user message content.

    >>> build_prompt_text("What is 2+3*4?")
    'What is 2+3*4? Put the final answer in \\\\boxed{}.'
    """
    question = question.strip()
    return f"{question} {instruction}" if instruction else question
