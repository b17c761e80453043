"""SmolLM2's one-shot single-digit task: every sum and product of two single digits, with a worked example.

The 200 problems `a op b` (`a`, `b` in 0..9, `op` in `+`, `*`) minus the two worked examples, split into train and
test. The prompt is ChatML with **one worked example** for the same operation as a previous user/assistant turn,
then the question; the answer goes in `\\boxed{}`. `data_prep.smollm2` writes the task as verl parquet.

Example:

```python
>>> from verl_meds.tasks.single_digit import SingleDigitProblem, prompt_messages
>>> [message["role"] for message in prompt_messages(SingleDigitProblem(9, "*", 5))]
['user', 'assistant', 'user']

```
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .prompt import BOXED_INSTRUCTION

DATA_SOURCE = "meds_single_digit"
"""`data_source` column of the single-digit task."""

OPERATORS = ("+", "*")
"""Operations of the task: addition and multiplication."""

INSTRUCTION = BOXED_INSTRUCTION
"""Answer-format instruction after each question (`verl_meds.tasks.prompt.BOXED_INSTRUCTION`)."""


@dataclass(frozen=True, order=True)
class SingleDigitProblem:
    """`a op b` with single digits `a`, `b` in `[0, 9]` and `op` in `OPERATORS`.

    Raises:
        ValueError: for an operand outside `[0, 9]` or an unknown operator.
    """

    a: int
    op: str
    b: int

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(f"op must be one of {OPERATORS}, got {self.op!r}")
        for name, value in (("a", self.a), ("b", self.b)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
                raise ValueError(f"{name} must be an int in [0, 9], got {value!r}")

    @property
    def expression(self) -> str:
        """`str`: e.g. `"3*4"`."""
        return f"{self.a}{self.op}{self.b}"

    @property
    def question(self) -> str:
        """`str`: e.g. `"What is 3*4?"`."""
        return f"What is {self.expression}?"

    @property
    def answer(self) -> int:
        """`int`: the correct result."""
        return self.a + self.b if self.op == "+" else self.a * self.b


WORKED_EXAMPLES: dict[str, SingleDigitProblem] = {
    "+": SingleDigitProblem(2, "+", 5),
    "*": SingleDigitProblem(3, "*", 4),
}
"""The worked example shown before each question, per operation; these two problems are not in the data."""


def worked_solution(problem: SingleDigitProblem) -> str:
    r"""The assistant turn of a worked example, e.g. `"3*4=12. The answer is \boxed{12}."`."""
    return f"{problem.expression}={problem.answer}. The answer is \\boxed{{{problem.answer}}}."


def prompt_messages(problem: SingleDigitProblem) -> list[dict[str, str]]:
    """The `prompt` column for `problem`: one worked example (same operation), then the question.

    Args:
        problem (`SingleDigitProblem`): the question.

    Returns:
        `list[dict[str, str]]`: three ChatML messages: user (example), assistant (its solution), user (question).
    """
    example = WORKED_EXAMPLES[problem.op]
    return [
        {"role": "user", "content": f"{example.question} {INSTRUCTION}"},
        {"role": "assistant", "content": worked_solution(example)},
        {"role": "user", "content": f"{problem.question} {INSTRUCTION}"},
    ]


def all_single_digit_problems() -> list[SingleDigitProblem]:
    """`list[SingleDigitProblem]`: the 198 problems of the task (200 minus the two worked examples), sorted."""
    examples = set(WORKED_EXAMPLES.values())
    problems = [SingleDigitProblem(a, op, b) for op in OPERATORS for a in range(10) for b in range(10)]
    return sorted(p for p in problems if p not in examples)


def split_single_digit(n_test: int = 40, seed: int = 0) -> dict[str, list[SingleDigitProblem]]:
    """Split the task into disjoint train and test sets, half of the test set per operation.

    Args:
        n_test (`int`, *optional*, defaults to `40`): test problems (even, at most 98).
        seed (`int`, *optional*, defaults to `0`): shuffling seed.

    Returns:
        `dict[str, list[SingleDigitProblem]]`: `"train"` and `"test"`, each in a seeded random order.

    Raises:
        ValueError: for an odd `n_test` or one outside `[0, 98]`.
    """
    if n_test % 2 or not 0 <= n_test <= 98:
        raise ValueError(f"n_test must be even and in [0, 98], got {n_test}")
    rng = random.Random(seed)
    train, test = [], []
    for op in OPERATORS:
        same_op = [p for p in all_single_digit_problems() if p.op == op]
        rng.shuffle(same_op)
        test += same_op[: n_test // 2]
        train += same_op[n_test // 2 :]
    rng.shuffle(train)
    rng.shuffle(test)
    return {"train": train, "test": test}


def problem_index(problem: SingleDigitProblem) -> int:
    """`int`: a stable index in `[0, 200)`: `100 * op_number + 10 * a + b`."""
    return 100 * OPERATORS.index(problem.op) + 10 * problem.a + problem.b
