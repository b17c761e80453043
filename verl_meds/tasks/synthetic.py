"""Seeded synthetic arithmetic task with known wrong procedures.

Each problem is a three-operand expression such as `37+4*6`, `(12+5)*3` or `7*(15+2)` over small
non-negative integers. Solving one takes two steps, so different faulty procedures give different wrong answers;
`PROCEDURES` holds the correct procedure and four faulty ones (name -> `fn(problem) -> int`), which the analysis uses
to label the error mode of a wrong answer (`error_modes`). `data_prep.synthetic` writes the task as verl parquet.

Example:

```python
>>> from verl_meds.tasks.synthetic import error_modes, parse_question
>>> problem = parse_question("What is 37+4*6?")
>>> problem.answer, error_modes(problem, 246)
(61, ['wrong_order'])

```
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .prompt import BOXED_INSTRUCTION, build_prompt_text

DATA_SOURCE = "meds_synthetic"
"""Default `data_source` column of the synthetic task."""

OPERAND_RANGES: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int]]] = {
    "a+b*c": ((0, 19), (2, 9), (2, 9)),
    "(a+b)*c": ((1, 12), (1, 9), (2, 9)),
    "a*(b+c)": ((2, 9), (1, 12), (1, 9)),
}
"""Expression forms and the inclusive range of each operand `(a, b, c)`: 1280 + 864 + 864 = 3008 distinct
problems. The ranges are small on purpose: every step of the correct procedure is one of a few hundred arithmetic
facts (a one-digit product, a sum under 40, a product of a number under 22 by one digit), so a tiny model can
learn them from a few thousand examples and still be tested on held-out problems. Correct answers are
non-negative."""

FORMS: tuple[str, ...] = tuple(OPERAND_RANGES)
"""Expression forms, in a fixed order."""

Step = tuple[int, str, int, int]
"""One worked step `(left, op, right, result)`, printed as `left op right=result`."""

Tree = int | tuple[str, "Tree", "Tree"]
"""Expression tree: an integer leaf or `(op, left, right)`."""


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem.

    Args:
        form (`str`): one of `FORMS`, with letters `a`, `b`, `c` for the operands.
        operands (`tuple[int, int, int]`): values of `a`, `b`, `c`.
    """

    form: str
    operands: tuple[int, int, int]

    @property
    def expression(self) -> str:
        """`str`: the expression with operands filled in, e.g. `"37+4*6"`."""
        values = dict(zip("abc", self.operands, strict=True))
        return "".join(str(values[ch]) if ch in values else ch for ch in self.form)

    @property
    def question(self) -> str:
        """`str`: the question text, e.g. `"What is 37+4*6?"`."""
        return f"What is {self.expression}?"

    @property
    def answer(self) -> int:
        """`int`: the correct answer."""
        return PROCEDURES["correct"](self)


# ----------------------------------------------------------------------------------------------------------------
# Parsing


def tokenize_expression(expression: str) -> list[str]:
    """Split an expression into integer, operator and parenthesis tokens.

    Args:
        expression (`str`): e.g. `"(12+5)*3"`; spaces are ignored.

    Returns:
        `list[str]`: e.g. `["(", "12", "+", "5", ")", "*", "3"]`.

    Raises:
        ValueError: on any other character.
    """
    compact = expression.replace(" ", "")
    tokens = re.findall(r"\d+|[-+*()]", compact)
    if "".join(tokens) != compact:
        raise ValueError(f"cannot tokenize expression {expression!r}: only digits, + - * and parentheses allowed")
    return tokens


class _Parser:
    """Recursive-descent parser over the tokens of one expression (see `parse_expression`)."""

    def __init__(self, expression: str):
        self.expression = expression
        self.tokens = tokenize_expression(expression)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        if self.pos >= len(self.tokens):
            raise ValueError(f"unexpected end of expression {self.expression!r}")
        self.pos += 1
        return self.tokens[self.pos - 1]

    def atom(self) -> Tree:
        tok = self.take()
        if tok.isdigit():
            return int(tok)
        if tok != "(":
            raise ValueError(f"unexpected token {tok!r} in {self.expression!r}")
        node = self.sum()
        if self.take() != ")":
            raise ValueError(f"missing ')' in {self.expression!r}")
        return node

    def product(self) -> Tree:
        node = self.atom()
        while self.peek() == "*":
            self.take()
            node = ("*", node, self.atom())
        return node

    def sum(self) -> Tree:
        node = self.product()
        while self.peek() in ("+", "-"):
            op = self.take()
            node = (op, node, self.product())
        return node


def parse_expression(expression: str) -> Tree:
    """Parse an expression with the usual precedence (`*` before `+`/`-`, left associative).

    Args:
        expression (`str`): e.g. `"37+4*6"`.

    Returns:
        `Tree`: e.g. `("+", 37, ("*", 4, 6))`.

    Raises:
        ValueError: on a malformed expression.

    >>> parse_expression("(1+2)*3")
    ('*', ('+', 1, 2), 3)
    """
    parser = _Parser(expression)
    tree = parser.sum()
    if parser.pos != len(parser.tokens):
        raise ValueError(f"trailing tokens {parser.tokens[parser.pos :]} in {expression!r}")
    return tree


def parse_question(question: str) -> Problem:
    """Recover the `Problem` from a question written by `Problem.question` (e.g. `extra_info.question`).

    Args:
        question (`str`): e.g. `"What is 37+4*6?"`.

    Returns:
        `Problem`: with `form` in `FORMS`.

    Raises:
        ValueError: if the text does not hold a three-operand expression of a known form.
    """
    match = re.search(r"What is ([0-9+*()\- ]+)\?", question)
    if match is None:
        raise ValueError(f"not a synthetic question: {question!r}")
    expression = match.group(1).replace(" ", "")
    numbers = re.findall(r"\d+", expression)
    letters = iter("abc")
    form = re.sub(r"\d+", lambda _m: next(letters, "?"), expression)
    if form not in OPERAND_RANGES or len(numbers) != 3:
        raise ValueError(f"unknown expression form {form!r} in {question!r}; known forms: {list(FORMS)}")
    a, b, c = (int(n) for n in numbers)
    return Problem(form=form, operands=(a, b, c))


# ----------------------------------------------------------------------------------------------------------------
# Procedures: each returns the worked steps; the answer is the last step's result.


def _exact(op: str, x: int, y: int) -> int:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    raise ValueError(f"unknown operator {op!r}")


def _digitwise(x: int, y: int, sign: int) -> int:
    """Add (`sign=1`) or subtract (`sign=-1`) digit by digit, keeping each digit mod 10 (carries dropped)."""
    result, place = 0, 1
    while x > 0 or y > 0:
        result += ((x % 10 + sign * (y % 10)) % 10) * place
        x, y, place = x // 10, y // 10, place * 10
    return result


def _no_carry(op: str, x: int, y: int) -> int:
    if op == "+" and x >= 0 and y >= 0:
        return _digitwise(x, y, 1)
    if op == "-" and x >= y >= 0:
        return _digitwise(x, y, -1)
    return _exact(op, x, y)


def _run(tree: Tree, apply: Callable[[str, int, int], int], steps: list[Step]) -> int:
    """Evaluate `tree` post-order with `apply`, appending one `Step` per operator."""
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    x = _run(left, apply, steps)
    y = _run(right, apply, steps)
    z = apply(op, x, y)
    steps.append((x, op, y, z))
    return z


def _replace_op(tree: Tree, old: str, new: str) -> Tree:
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    return (new if op == old else op, _replace_op(left, old, new), _replace_op(right, old, new))


def _swap_order(tree: Tree) -> Tree:
    """Rotate the root so the two operations run in the opposite order.

    `(op1, x, (op2, y, z)) -> (op2, (op1, x, y), z)` and `(op2, (op1, x, y), z) -> (op1, x, (op2, y, z))`; a
    root whose children are both leaves (or both operations) is returned unchanged.
    """
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    if isinstance(left, int) and not isinstance(right, int):
        inner_op, y, z = right
        return (inner_op, (op, left, y), z)
    if isinstance(right, int) and not isinstance(left, int):
        inner_op, x, y = left
        return (inner_op, x, (op, y, right))
    return tree


def _steps_correct(problem: Problem) -> list[Step]:
    steps: list[Step] = []
    _run(parse_expression(problem.expression), _exact, steps)
    return steps


def _steps_wrong_order(problem: Problem) -> list[Step]:
    steps: list[Step] = []
    _run(_swap_order(parse_expression(problem.expression)), _exact, steps)
    return steps


def _steps_add_for_mul(problem: Problem) -> list[Step]:
    steps: list[Step] = []
    _run(_replace_op(parse_expression(problem.expression), "*", "+"), _exact, steps)
    return steps


def _steps_dropped_carry(problem: Problem) -> list[Step]:
    steps: list[Step] = []
    _run(parse_expression(problem.expression), _no_carry, steps)
    return steps


def _steps_off_by_one(problem: Problem) -> list[Step]:
    steps = _steps_correct(problem)
    x, op, y, z = steps[-1]
    steps[-1] = (x, op, y, z + 1)
    return steps


STEP_PROCEDURES: dict[str, Callable[[Problem], list[Step]]] = {
    "correct": _steps_correct,
    "wrong_order": _steps_wrong_order,
    "add_for_mul": _steps_add_for_mul,
    "dropped_carry": _steps_dropped_carry,
    "off_by_one": _steps_off_by_one,
}
"""Procedure name -> `fn(problem) -> list[Step]` (the worked steps, in the order they are written)."""


def _answer_of(step_fn: Callable[[Problem], list[Step]]) -> Callable[[Problem], int]:
    def answer(problem: Problem) -> int:
        return step_fn(problem)[-1][3]

    answer.__name__ = step_fn.__name__.replace("_steps_", "")
    return answer


PROCEDURES: dict[str, Callable[[Problem], int]] = {name: _answer_of(fn) for name, fn in STEP_PROCEDURES.items()}
"""Procedure name -> `fn(problem) -> int` (the final answer that procedure reaches).

- `correct`: usual precedence, parentheses first, exact arithmetic.
- `wrong_order`: does the two operations in the opposite order, i.e. reads `3+4*5` left to right as
  `(3+4)*5 = 35` and drops the parentheses of `(3+4)*5 -> 3+4*5 = 23` and `3*(4+5) -> 3*4+5 = 17`.
- `add_for_mul`: adds where it should multiply (`3+4*5 -> 3+(4+5) = 12`).
- `dropped_carry`: right structure, but additions are done digit by digit and carries are dropped
  (`37+24 -> 51`); equals `correct` when no addition carries (about half of the problems).
- `off_by_one`: right until the last step, whose result is one too large (`3+20 -> 24`).

All faulty procedures give non-negative answers on the forms in `FORMS`.
"""

FAULTY_PROCEDURES: tuple[str, ...] = tuple(name for name in PROCEDURES if name != "correct")
"""Names of the faulty procedures in `PROCEDURES`."""


def get_procedure(name: str) -> Callable[[Problem], int]:
    """Look up a procedure by name.

    Args:
        name (`str`): a key of `PROCEDURES`.

    Returns:
        `Callable[[Problem], int]`: the procedure.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.
    """
    if name not in PROCEDURES:
        raise ValueError(f"unknown procedure {name!r}; valid names: {sorted(PROCEDURES)}")
    return PROCEDURES[name]


def error_modes(problem: Problem, answer: int) -> list[str]:
    """Names of the faulty procedures that reach `answer` on `problem`.

    Args:
        problem (`Problem`): the problem (see `parse_question` to get it from a question).
        answer (`int`): a model's final answer.

    Returns:
        `list[str]`: matching names from `FAULTY_PROCEDURES`, in that order; empty if the answer is correct (a
        right answer has no error mode) or matches no known procedure.

    >>> error_modes(Problem("a+b*c", (3, 4, 5)), 35)
    ['wrong_order']
    """
    if answer == problem.answer:
        return []
    return [name for name in FAULTY_PROCEDURES if PROCEDURES[name](problem) == answer]


def format_solution(problem: Problem, procedure: str = "correct") -> str:
    """The short worked solution a procedure writes, ending with the boxed answer.

    Args:
        problem (`Problem`): the problem.
        procedure (`str`, *optional*, defaults to `"correct"`): a key of `STEP_PROCEDURES`.

    Returns:
        `str`: e.g. `"4*5=20, 3+20=23. \\boxed{23}"`.

    Raises:
        ValueError: for an unknown procedure name.
    """
    if procedure not in STEP_PROCEDURES:
        raise ValueError(f"unknown procedure {procedure!r}; valid names: {sorted(STEP_PROCEDURES)}")
    steps = STEP_PROCEDURES[procedure](problem)
    work = ", ".join(f"{x}{op}{y}={z}" for x, op, y, z in steps)
    return f"{work}. \\boxed{{{steps[-1][3]}}}"


# ----------------------------------------------------------------------------------------------------------------
# Generation


def all_problems(form: str) -> list[Problem]:
    """Every problem of one form, in operand order.

    Args:
        form (`str`): one of `FORMS`.

    Returns:
        `list[Problem]`: all operand combinations allowed by `OPERAND_RANGES`.

    Raises:
        ValueError: for an unknown form.
    """
    if form not in OPERAND_RANGES:
        raise ValueError(f"unknown form {form!r}; valid forms: {list(FORMS)}")
    ranges = [range(lo, hi + 1) for lo, hi in OPERAND_RANGES[form]]
    return [Problem(form, (a, b, c)) for a, b, c in itertools.product(*ranges)]


def generate_problems(n: int, seed: int = 0, forms: Sequence[str] = FORMS) -> list[Problem]:
    """Draw `n` distinct problems uniformly from all problems of `forms` (without replacement).

    Forms therefore appear in proportion to their size (`OPERAND_RANGES`): about 43% `a+b*c` and 29% each of the
    two others.

    Args:
        n (`int`): number of problems, `0 <= n <=` the number of problems of `forms` (3008 for all forms).
        seed (`int`, *optional*, defaults to `0`): the same seed gives the same list on every platform.
        forms (`Sequence[str]`, *optional*, defaults to `FORMS`): forms to draw from.

    Returns:
        `list[Problem]`: `n` problems, no two equal. A prefix of the list does not depend on `n`.

    Raises:
        ValueError: if `n` is out of range or a form is unknown.
    """
    unknown = [f for f in forms if f not in OPERAND_RANGES]
    if unknown or not forms:
        raise ValueError(f"unknown or empty forms {list(forms)}; valid forms: {list(FORMS)}")
    pool = [p for form in dict.fromkeys(forms) for p in all_problems(form)]
    if not 0 <= n <= len(pool):
        raise ValueError(
            f"n must be in [0, {len(pool)}] (the number of distinct problems of forms {list(forms)}), got {n}"
        )
    random.Random(seed).shuffle(pool)
    return pool[:n]


def split_problems(n_train: int, n_test: int, seed: int = 0) -> dict[str, list[Problem]]:
    """Disjoint train and test problems. The test split is drawn first, so it depends only on `(n_test, seed)`;
    `n_train + n_test` can be at most 3008.

    Args:
        n_train (`int`): number of train problems.
        n_test (`int`): number of test problems.
        seed (`int`, *optional*, defaults to `0`): generator seed.

    Returns:
        `dict[str, list[Problem]]`: keys `"train"` and `"test"`.

    Raises:
        ValueError: see `generate_problems`.
    """
    problems = generate_problems(n_test + n_train, seed)
    return {"test": problems[:n_test], "train": problems[n_test:]}


def prompt_messages(problem: Problem, instruction: str = BOXED_INSTRUCTION) -> list[dict[str, str]]:
    """
    The `prompt` column of the synthetic parquet for `problem`: one user message, the question and `instruction`.

    >>> prompt_messages(parse_question("What is 2+3*4?"))[0]["content"]
    'What is 2+3*4? Put the final answer in \\\\boxed{}.'
    """
    return [{"role": "user", "content": build_prompt_text(problem.question, instruction)}]
