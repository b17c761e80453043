r"""Math grading and answer keys with math-verify, in worker processes with a bounded worst-case time.

Two questions are asked of a final answer (the content of a response's last `\boxed{}`):

- [`grade`]: is it equal to the gold answer? (the reward every method trains on)
- [`answer_keys`]: which answers of a batch are the same answer? (answer-keyed MEDS and outcome-based exploration)

Both parse LaTeX with math-verify ([`math_verify.parse`](https://github.com/huggingface/Math-Verify)) into sympy
objects; grading then calls `math_verify.verify` (gold first: `verify` is not symmetric). Three rules sit in front
of math-verify, each small and tested:

1. **Spellings** ([`canonical_latex`]): synonyms the parser does not unify are rewritten to one form (`\varnothing`,
   `\O` -> `\emptyset`; `\infin`, `∞` -> `\infty`; `\lbrace`/`\rbrace` -> `\{`/`\}`; `·`, `⋅` -> `\cdot`;
   `√x` -> `\sqrt{x}`); a repeating decimal `0.1\overline{6}` becomes its exact fraction (`\frac{1}{6}`).
2. **Only what is understood counts** ([`understood`]): math-verify drops LaTeX it does not know
   (`0.\overline{3}` parses as `0` without rule 1), so an answer holding a command outside [`KNOWN_COMMANDS`], a
   character outside [`KNOWN_SYMBOLS`] or a malformed number (`3.14.15`) is compared as a string only: it is correct
   only when its normalised text equals the gold's, and its key is that text (`"str:..."`), never a `"sym:..."` key
   shared with another answer.
3. **Exact numbers compare exactly** ([`numbers_equal`]): math-verify compares numbers after rounding to 6 decimal
   places, so `\frac{1}{2^{80}}` equals `\frac{1}{2^{81}}` there. When both sides are numbers, two exact numbers
   (no decimal point) are equal only when their difference simplifies to 0; when a decimal is involved, math-verify's
   verdict must also hold to a relative tolerance of 1e-6.

A gold answer given as a Python number is written in positional notation ([`gold_text`]: `1e-05` -> `"0.00001"`),
since `str(1e-05)` would be read with Euler's e; a gold string that is one number in e-notation is read the same way.

**Bounded time.** math-verify and sympy can run for hours on one answer (`10^{10^{10}}` builds an integer of 10^10
digits), and math-verify's own timeouts use `signal`, which works only in a process's main thread, while verl calls
reward functions from executor threads. So the parsing and comparing run in separate worker processes (a small
pool, started on first use, one per process that grades): each answer has `timeout_seconds` (default 5 s), and a
worker that runs past it is killed and replaced. Such an answer is graded wrong and gets no key, with status
`"timeout"`; a worker that fails (e.g. over its memory cap, `memory_limit_mb`) gives status `"error"`. The
callers count both in metrics (`reward/grading_timeout_frac`, `answer_key/timeouts`).

Example:

```python
>>> from verl_meds.grading import grade, answer_keys
>>> grade(r"\frac{1}{2}", "0.5").correct
True
>>> grade(r"\frac{1}{2^{80}}", r"\frac{1}{2^{81}}").correct
False
>>> keys, statuses = answer_keys(["1/2", "0.5", r"0.\overline{3}", "0"])
>>> keys[0] == keys[1], keys[2] == keys[3]
(True, False)

```
"""

from __future__ import annotations

import atexit
import logging
import numbers
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from multiprocessing.connection import Connection, Pipe
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 5.0
"""Time bound per graded answer or answer key, in seconds (env `VERL_MEDS_GRADING_TIMEOUT` overrides)."""

DEFAULT_MEMORY_LIMIT_MB = 4096
"""Address-space cap of each worker process, in MiB (env `VERL_MEDS_GRADING_MEMORY_MB` overrides; 0: none)."""

STARTUP_TIMEOUT_SECONDS = 120.0
"""Longest wait for a new worker to import math-verify and report ready."""

OK, TIMEOUT, ERROR = "ok", "timeout", "error"
"""Statuses of one graded answer or key."""

REL_TOL = 1e-6
"""Relative tolerance of a numeric comparison that involves a decimal (math-verify rounds to 6 decimal places)."""

# ------------------------------------------------------------------------------------------------ text rules

KNOWN_COMMANDS = frozenset(
    """
    frac dfrac tfrac cfrac sqrt binom dbinom tbinom pi infty cdot times div pm mp
    le leq ge geq lt gt ne neq leqslant geqslant emptyset cup cap setminus in notin
    left right big Big bigg Bigg bigl bigr Bigl Bigr biggl biggr displaystyle textstyle
    mathrm mathbf mathit mathbb boldsymbol text textbf textit textrm mbox operatorname
    sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp lg
    circ degree quad qquad cdots ldots dots vert lvert rvert mid lfloor rfloor lceil rceil
    alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi omicron
    rho sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Pi Sigma Upsilon Phi Psi Omega
    """.split()
)
"""LaTeX commands that math-verify (0.9) reads: a meaning, or formatting that carries none. Matrix environments
(`\begin{pmatrix}`, `bmatrix`, `matrix`) are read too. Unknown commands are dropped silently by its parser
(`\foo 3` parses as `3`), hence this list."""

KNOWN_SYMBOLS = frozenset("π≤≥≠×−÷∅°∪∩∈±")
"""Non-ASCII characters that math-verify reads; an answer with any other non-ASCII character is compared as text."""

_SYNONYMS = (
    (re.compile(r"\\(?:varnothing|O)(?![A-Za-z])"), r"\\emptyset"),
    (re.compile(r"\\infin(?![A-Za-z])"), r"\\infty"),
    (re.compile("∞"), r"\\infty "),
    (re.compile(r"\\lbrace(?![A-Za-z])"), r"\\{"),
    (re.compile(r"\\rbrace(?![A-Za-z])"), r"\\}"),
    (re.compile("[·⋅]"), r"\\cdot "),
    (re.compile(r"\\[dt]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\\(?:displaystyle|textstyle)(?![A-Za-z])"), ""),
)
_UNICODE_SQRT = re.compile(r"√\s*(\d+(?:\.\d+)?|[A-Za-z]|\{[^{}]*\}|\([^()]*\))")
# Patterns over digit runs start only at the run's first digit (the look-behinds) and never split a run two ways, so
# a model's 30,000-digit answer costs linear time here, in the calling thread, before any worker is involved.
_REPEATING = re.compile(r"(-?)(?<![\d.])(\d*)\.(\d*)\\overline\{(\d+)\}")
_COMMAND = re.compile(r"\\([A-Za-z]+)")
_MATRIX_ENVIRONMENT = re.compile(r"\\(?:begin|end)\{[pb]?matrix\}")
_MALFORMED_NUMBER = re.compile(r"(?<![\d.])\d*\.\d+\.\d|\d\.\.\d")
_E_NOTATION = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)[eE][+-]?\d+")
_MAX_E_EXPONENT = 400  # e-notation numbers up to this exponent are written out (longer ones stay text)
_COMPACT = re.compile(r"(\s+|\\!|\\,|\\;|\\:|\\quad|\\qquad|\\left|\\right|\$)")
_SPACING = re.compile(r"(\\!|\\,|\\;|\\:|\$)")


def _e_number(text: str) -> Decimal | None:
    """`text` as a number when it is exactly one e-notation number of at most 100 digits and a written-out length of
    at most `_MAX_E_EXPONENT` digits, else `None`."""
    if len(text) > 120 or not _E_NOTATION.fullmatch(text):
        return None
    number = Decimal(text)
    return number if abs(number.adjusted()) <= _MAX_E_EXPONENT else None


_MAX_REPEATING_DIGITS = 200  # longer repeating decimals are left as text (and so compared as text)


def _repeating_to_fraction(match: re.Match) -> str:
    sign, whole, fixed, repeat = match.groups()
    if len(whole) + len(fixed) + len(repeat) > _MAX_REPEATING_DIGITS:
        return match.group(0)
    value = Fraction(int(whole or "0")) + Fraction(int(fixed or "0"), 10 ** len(fixed))
    value += Fraction(int(repeat), (10 ** len(repeat) - 1) * 10 ** len(fixed))
    if sign:
        value = -value
    return rf"\frac{{{value.numerator}}}{{{value.denominator}}}"


def canonical_latex(text: str) -> str:
    r"""
    Rewrite spellings that math-verify does not unify into one form (rule 1 of this module).

    Args:
        text (`str`):
            A final answer or a gold answer, LaTeX with or without `$` delimiters.

    Returns:
        `str`: the text stripped, without `$`, LaTeX thin spaces (`\,` `\!` `\;` `\:`) and a trailing `.`, with the
        synonyms of the module docstring replaced, `√x` written `\sqrt{x}` and repeating decimals
        (`-1.2\overline{34}`) written as exact fractions; a text that is one number in e-notation (`4.5e33`, exponent
        up to 400) is written out positionally; everything else unchanged.
    """
    text = _SPACING.sub(" ", text).strip().rstrip(".").strip()
    number = _e_number(text)
    if number is not None:
        return _positional(number)  # `4.5e33` is one number, not 4.5 times Euler's e to the 33
    for pattern, replacement in _SYNONYMS:
        text = pattern.sub(replacement, text)
    text = _UNICODE_SQRT.sub(lambda m: r"\sqrt{" + m.group(1).strip("{}()") + "}", text)
    return _REPEATING.sub(_repeating_to_fraction, text) if "\\overline" in text else text


def understood(text: str) -> bool:
    r"""
    Whether math-verify reads all of `text` (rule 2): every command in [`KNOWN_COMMANDS`], every non-ASCII character
    in [`KNOWN_SYMBOLS`], and no malformed number such as `3.14.15`.

    Args:
        text (`str`):
            An answer after [`canonical_latex`].

    Returns:
        `bool`: `False` when some part would be dropped or misread; such answers are compared as text only.
    """
    if any(name not in KNOWN_COMMANDS for name in _COMMAND.findall(_MATRIX_ENVIRONMENT.sub(" ", text))):
        return False
    if any(ord(char) > 127 and char not in KNOWN_SYMBOLS for char in text):
        return False
    return _MALFORMED_NUMBER.search(text) is None


def compact_text(text: str) -> str:
    r"""`text` without whitespace, LaTeX spacing, `\left`/`\right`, `$` and a trailing `.`: the string comparison."""
    return _COMPACT.sub("", text).rstrip(".")


def gold_text(ground_truth: Any) -> str:
    """
    The gold answer as LaTeX text: numbers in positional notation, e-notation strings of one number likewise.

    Args:
        ground_truth (`str`, `int`, `float`, `fractions.Fraction` or `decimal.Decimal`):
            The reference answer.

    Returns:
        `str`: e.g. `1e-05` -> `"0.00001"`, `12.0` -> `"12"`, `Fraction(1, 3)` -> `"\\frac{1}{3}"`, `"2.5E3"` ->
        `"2500"`; other strings unchanged but stripped.

    Raises:
        ValueError: for a `bool`, a non-finite number, or another type.
    """
    if isinstance(ground_truth, bool):
        raise ValueError(f"ground_truth must be a number or a string, got the bool {ground_truth!r}.")
    if isinstance(ground_truth, str):
        text = ground_truth.strip()
        number = _e_number(text)
        if number is not None:
            return _positional(number)
        return text
    if isinstance(ground_truth, Fraction):
        if ground_truth.denominator == 1:
            return str(ground_truth.numerator)
        sign = "-" if ground_truth < 0 else ""
        return rf"{sign}\frac{{{abs(ground_truth.numerator)}}}{{{ground_truth.denominator}}}"
    if isinstance(ground_truth, (numbers.Integral, Decimal)):
        return _positional(Decimal(ground_truth))
    if isinstance(ground_truth, numbers.Real):
        value = float(ground_truth)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"ground_truth must be finite, got {ground_truth!r}.")
        return _positional(Decimal(repr(value)))  # repr: the shortest decimal that reads back as this float
    raise ValueError(f"ground_truth must be a str or a number, got {type(ground_truth).__name__} {ground_truth!r}.")


def _positional(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"ground_truth must be finite, got {value}.")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# ------------------------------------------------------------------------------------------------ math (in workers)


def _parsed(text: str):
    """First sympy object math-verify parses from `text` (already canonical and understood), or `None`."""
    import sympy
    from math_verify import parse

    items = parse(f"${text}$", parsing_timeout=None)
    return next((item for item in items if isinstance(item, (sympy.Basic, sympy.MatrixBase))), None), items


def _is_plain_number(expr) -> bool:
    import sympy

    return isinstance(expr, sympy.Expr) and bool(expr.is_number) and not expr.free_symbols and expr.is_finite is True


def numbers_equal(gold, pred) -> bool | None:
    """
    Rule 3: compare two sympy numbers exactly, or with a relative tolerance when a decimal is involved.

    Args:
        gold, pred (`sympy.Expr`):
            Parsed gold and predicted answers.

    Returns:
        `bool` or `None`: `None` when either side is not a plain finite number (math-verify then decides alone);
        for two exact numbers whether `simplify(gold - pred) == 0`; with a decimal (`sympy.Float`) on either side,
        `False` when the relative difference exceeds [`REL_TOL`], else `None` (math-verify's verdict stands).
    """
    import sympy

    if not (_is_plain_number(gold) and _is_plain_number(pred)):
        return None
    if not (gold.has(sympy.Float) or pred.has(sympy.Float)):
        difference = sympy.simplify(gold - pred)
        if difference == 0:
            return True
        if difference.is_number and difference.is_zero is False:
            return False
        return sympy.N(difference, 50) == 0
    a, b = sympy.N(gold, 30), sympy.N(pred, 30)
    scale = max(abs(a), abs(b))
    return None if abs(a - b) <= REL_TOL * scale else False


def grade_text(pred: str, gold: str) -> bool:
    r"""
    Grade one final answer against one gold text, unbounded (what each worker runs; call [`grade`] instead).

    Args:
        pred (`str`): the final answer (no `\boxed`).
        gold (`str`): the gold answer as text ([`gold_text`]).

    Returns:
        `bool`: the rules of this module, then math-verify's `verify(gold, pred)`.
    """
    pred_c, gold_c = canonical_latex(pred.strip()), canonical_latex(gold.strip())
    if not compact_text(pred_c):
        return False
    if compact_text(pred_c) == compact_text(gold_c):
        return True
    if not (understood(pred_c) and understood(gold_c)):
        return False
    from math_verify import verify

    gold_expr, gold_items = _parsed(gold_c)
    pred_expr, pred_items = _parsed(pred_c)
    if gold_expr is None or pred_expr is None:
        return False
    exact = numbers_equal(gold_expr, pred_expr)
    if exact is not None:
        return exact
    return bool(verify(gold_items, pred_items, timeout_seconds=None))


_KEY_MAX_OPS = 200  # sympy.simplify is only tried on numbers this small (it can be slow on large ones)


def key_text(answer: str) -> str | None:
    r"""
    Canonical key of one final answer, unbounded (what each worker runs; call [`answer_keys`] instead).

    Args:
        answer (`str`): the final answer (no `\boxed`).

    Returns:
        `str` or `None`: `"sym:" + str(sympy form)` of an understood answer that parses (numbers simplified and
        decimals made exact rationals, so `1/2`, `0.5` and `\frac12` share `"sym:1/2"`), else `"str:"` + its compact
        text; `None` for a blank answer.
    """
    import sympy

    text = canonical_latex(answer.strip())
    compact = compact_text(text)
    if not compact:
        return None
    if not understood(text):
        return f"str:{compact}"
    expr, _ = _parsed(text)
    if expr is None:
        return f"str:{compact}"
    try:
        if getattr(expr, "is_number", False) and sympy.count_ops(expr) <= _KEY_MAX_OPS:
            expr = sympy.simplify(expr)  # sqrt(8) -> 2*sqrt(2)
        expr = sympy.nsimplify(expr, rational=True)  # floats -> exact rationals: 0.5 -> 1/2, 12.0 -> 12
    except Exception as exc:  # sympy refuses some objects (sets of intervals, relations); keep them as parsed
        logger.debug("sympy could not simplify %r: %s", expr, exc)
    return f"sym:{expr}"


_INTEGER = re.compile(r"[+-]?\d{1,1000}")
_DECIMAL = re.compile(r"[+-]?\d{0,6}\.\d{1,6}")
_FRACTION = re.compile(r"([+-]?)(?:\\frac\{([+-]?\d{1,50})\}\{(\d{1,50})\}|\\frac(\d)(\d)|(\d{1,50})/(\d{1,50}))")


def fast_key(answer: str) -> str | None:
    r"""
    [`key_text`] of a plain number without math-verify: an integer, a decimal of at most 6 + 6 digits, or a
    fraction of integers (`\frac{a}{b}`, `\frac12`, `a/b`, with a sign); `None` for anything else.

    Gives exactly the key [`key_text`] gives (tested on random numbers), in microseconds instead of milliseconds,
    and never needs a worker, so the driver keys the usual answers of a batch itself.

    Args:
        answer (`str`): the final answer (no `\boxed`).

    Returns:
        `str` or `None`: `"sym:" + str(the reduced rational)`, or `None` when the answer is not such a number (or a
        fraction has denominator 0).
    """
    text = compact_text(canonical_latex(answer.strip()))
    if _INTEGER.fullmatch(text):
        return f"sym:{int(text)}"
    if _DECIMAL.fullmatch(text):
        return f"sym:{Fraction(Decimal(text))}"
    match = _FRACTION.fullmatch(text)
    if match is None:
        return None
    sign, numerator, denominator = match.group(1), None, None
    for a, b in ((2, 3), (4, 5), (6, 7)):
        if match.group(a) is not None:
            numerator, denominator = int(match.group(a)), int(match.group(b))
    if not denominator:
        return None
    value = Fraction(numerator, denominator)
    return f"sym:{-value if sign == '-' else value}"


_TASKS = {"grade": lambda item: grade_text(*item), "key": key_text}


def worker_main(fd: int, memory_limit_mb: int) -> None:
    """Entry point of a worker process: answer `(kind, items)` requests with one `(status, value)` per item."""
    if memory_limit_mb > 0:
        import resource

        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.disable(logging.WARNING)  # math-verify warns about disabled timeouts on every call
    import math_verify  # noqa: F401  (imported before reporting ready, so that the first answer is not charged)
    import sympy  # noqa: F401

    conn = Connection(fd)
    parent = os.getppid()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            # Also leave when the parent is gone but a process forked from it still holds the socket open.
            while not conn.poll(1.0):
                if os.getppid() != parent:
                    return
            kind, items = conn.recv()
        except (EOFError, OSError):
            return
        task = _TASKS[kind]
        for item in items:
            try:
                result = (OK, task(item))
            except MemoryError:
                result = (ERROR, "MemoryError")
            except Exception as exc:  # noqa: BLE001 - a failed answer is reported, never raised into the pool
                result = (ERROR, f"{type(exc).__name__}: {exc}"[:500])
            conn.send(result)


# ------------------------------------------------------------------------------------------------ worker pool


class _Worker:
    """One worker process and the parent's end of its socket pair."""

    def __init__(self, memory_limit_mb: int) -> None:
        parent, child = Pipe(duplex=True)
        command = [
            sys.executable,
            "-c",
            f"from verl_meds.grading import worker_main; worker_main({child.fileno()}, {int(memory_limit_mb)})",
        ]
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen(command, pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL)
        child.close()
        self.conn = parent
        self.ready = False

    def wait_ready(self) -> None:
        if self.ready:
            return
        if not self.conn.poll(STARTUP_TIMEOUT_SECONDS):
            self.kill()
            raise RuntimeError(f"a grading worker did not start within {STARTUP_TIMEOUT_SECONDS:.0f} s")
        try:
            message = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.kill()
            raise RuntimeError(
                f"a grading worker exited at start-up (exit code {self.process.poll()}); is math-verify installed?"
            ) from exc
        if message[0] != "ready":
            self.kill()
            raise RuntimeError(f"a grading worker sent {message!r} instead of 'ready'")
        self.ready = True

    def kill(self) -> None:
        try:
            self.process.kill()
            self.process.wait(timeout=10)
        except Exception:  # noqa: BLE001 - already gone
            pass
        self.conn.close()


class GradingPool:
    """
    A pool of grading worker processes; each answer is bounded by `timeout_seconds`. Thread-safe.

    Args:
        num_workers (`int`):
            Most worker processes at once (started on demand).
        timeout_seconds (`float`):
            Time bound per answer, > 0.
        memory_limit_mb (`int`):
            Address-space cap per worker in MiB (0: none).

    Raises:
        ValueError: for `num_workers < 1` or `timeout_seconds <= 0`.
    """

    def __init__(self, num_workers: int, timeout_seconds: float, memory_limit_mb: int) -> None:
        if not (isinstance(num_workers, int) and num_workers >= 1):
            raise ValueError(f"GradingPool.num_workers must be an int >= 1, got {num_workers!r}.")
        if not (timeout_seconds > 0):
            raise ValueError(f"GradingPool.timeout_seconds must be > 0, got {timeout_seconds!r}.")
        self.num_workers = num_workers
        self.timeout_seconds = float(timeout_seconds)
        self.memory_limit_mb = int(memory_limit_mb)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []  # every live worker, idle or busy

    def _checkout(self) -> _Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if len(self._workers) < self.num_workers:
                worker = _Worker(self.memory_limit_mb)
                self._workers.append(worker)
                return worker
        return self._idle.get()

    def _replace(self, worker: _Worker) -> None:
        """Kill `worker` and start its replacement at once (it imports while the pool works on), so that a thread
        waiting for an idle worker is woken."""
        worker.kill()
        with self._lock:
            if worker not in self._workers:
                return
            self._workers.remove(worker)
            replacement = _Worker(self.memory_limit_mb)
            self._workers.append(replacement)
        self._idle.put(replacement)

    def run(self, kind: str, items: Sequence[Any]) -> list[tuple[str, Any]]:
        """
        Run `kind` (`"grade"`: items are `(pred, gold)` text pairs; `"key"`: items are answer texts) on every item.

        Returns:
            `list[tuple[str, Any]]`: per item `(status, value)`, status one of `"ok"`, `"timeout"`, `"error"`.
        """
        results: list[tuple[str, Any]] = []
        pending = list(items)
        while pending:
            worker = self._checkout()
            try:
                worker.wait_ready()
            except RuntimeError:
                self._replace(worker)
                raise
            try:
                worker.conn.send((kind, pending))
            except OSError:
                self._replace(worker)
                results.append((ERROR, "worker gone"))
                pending = pending[1:]
                continue
            done = 0
            broken = False
            for _ in pending:
                if not worker.conn.poll(self.timeout_seconds):
                    results.append((TIMEOUT, None))
                    broken = True
                    break
                try:
                    results.append(worker.conn.recv())
                except (EOFError, OSError):
                    results.append((ERROR, f"worker died (exit code {worker.process.poll()})"))
                    broken = True
                    break
                done += 1
            if broken:
                self._replace(worker)
                pending = pending[done + 1 :]
            else:
                self._idle.put(worker)
                pending = []
        return results

    def close(self) -> None:
        """Stop every worker."""
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.kill()
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break


_POOLS: dict[tuple, GradingPool] = {}
_POOLS_LOCK = threading.Lock()


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name} must be a number, got {value!r}.") from exc


def default_pool(timeout_seconds: float | None = None) -> GradingPool:
    """The process-wide pool (one per process and timeout; a forked child gets its own).

    Sized by the environment: `VERL_MEDS_GRADING_WORKERS` processes (default min(8, CPUs)), each capped at
    `VERL_MEDS_GRADING_MEMORY_MB` MiB (default 4096), with `timeout_seconds` or `VERL_MEDS_GRADING_TIMEOUT` (default 5)
    per answer.
    """
    timeout = timeout_seconds if timeout_seconds is not None else _env_number("VERL_MEDS_GRADING_TIMEOUT", 5.0)
    workers = int(_env_number("VERL_MEDS_GRADING_WORKERS", min(8, os.cpu_count() or 1)))
    memory = int(_env_number("VERL_MEDS_GRADING_MEMORY_MB", DEFAULT_MEMORY_LIMIT_MB))
    key = (os.getpid(), float(timeout), workers, memory)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = GradingPool(workers, float(timeout), memory)
        return pool


@atexit.register
def _close_pools() -> None:
    for key, pool in list(_POOLS.items()):
        if key[0] == os.getpid():
            pool.close()


# ------------------------------------------------------------------------------------------------ public API


@dataclass(frozen=True)
class Grade:
    """Result of [`grade`]: `correct` (bool) and `status` (`"ok"`, `"timeout"` or `"error"`; not ok -> wrong)."""

    correct: bool
    status: str
    seconds: float


def grade(pred: str | None, ground_truth: Any, timeout_seconds: float | None = None) -> Grade:
    r"""
    Whether the final answer `pred` equals `ground_truth`, within a bounded time.

    Args:
        pred (`str` or `None`):
            The final answer (content of the last `\boxed{}`); `None` or blank is wrong.
        ground_truth (`str`, number, or `list`/`tuple` of them):
            The reference; a list means any of its items ([`gold_text`] for numbers).
        timeout_seconds (`float`, *optional*):
            Bound per comparison; defaults to env `VERL_MEDS_GRADING_TIMEOUT` or 5 s.

    Returns:
        [`Grade`]: `correct`, `status` (`"timeout"` / `"error"` mean graded wrong) and wall `seconds`.

    Raises:
        ValueError: for a `ground_truth` that [`gold_text`] refuses.
    """
    start = time.perf_counter()
    golds = list(ground_truth) if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    texts = [gold_text(g) for g in golds]
    if pred is None or not str(pred).strip():
        return Grade(False, OK, time.perf_counter() - start)
    pred = str(pred)
    status = OK
    written = compact_text(canonical_latex(pred.strip()))
    if any(written == compact_text(canonical_latex(text)) for text in texts):
        return Grade(True, OK, time.perf_counter() - start)
    results = default_pool(timeout_seconds).run("grade", [(pred, text) for text in texts])
    for item_status, value in results:
        if item_status == OK and value:
            return Grade(True, OK, time.perf_counter() - start)
        if item_status != OK:
            status = item_status
            logger.warning("grading %r against %r: %s %s", pred[:200], texts, item_status, value or "")
    return Grade(False, status, time.perf_counter() - start)


_KEY_CACHE: dict[str, str | None] = {}
_KEY_CACHE_MAX = 65536
_KEY_CACHE_LOCK = threading.Lock()


def answer_keys(
    answers: Sequence[str | None], timeout_seconds: float | None = None
) -> tuple[list[str | None], list[str]]:
    r"""
    Canonical keys of final answers: equal keys mean the same answer, written in any form.

    Each distinct answer is keyed once: plain numbers in this thread ([`fast_key`]), the rest in the grading workers,
    all of them in one request (results are cached per text in this process, up to 65,536 texts; answers that timed
    out are not cached). See [`key_text`] for the rule.

    Args:
        answers (`Sequence[str | None]` of length N):
            Final answers (content of the last `\boxed{}`), `None` for no answer.
        timeout_seconds (`float`, *optional*):
            Bound per answer; defaults to env `VERL_MEDS_GRADING_TIMEOUT` or 5 s.

    Returns:
        `tuple[list[str | None], list[str]]`: the N keys (`None`: no answer, or the bound was hit) and the N statuses
        (`"ok"`, `"timeout"`, `"error"`).

    Raises:
        ValueError: if an answer is neither a `str` nor `None`.
    """
    for answer in answers:
        if answer is not None and not isinstance(answer, str):
            raise ValueError(f"answer must be a str or None, got {type(answer).__name__} {answer!r}.")
    found: dict[str, tuple[str, str | None]] = {}
    todo = []
    for text in {a for a in answers if a is not None and compact_text(a) and a not in _KEY_CACHE}:
        quick = fast_key(text)
        if quick is None:
            todo.append(text)
        else:
            found[text] = (OK, quick)
    todo.sort()
    if todo:
        for text, (status, value) in zip(todo, default_pool(timeout_seconds).run("key", todo), strict=True):
            found[text] = (status, value if status == OK else None)
            if status != OK:
                logger.warning("answer key of %r: %s %s", text[:200], status, value or "")
        with _KEY_CACHE_LOCK:
            if len(_KEY_CACHE) > _KEY_CACHE_MAX:
                _KEY_CACHE.clear()
            _KEY_CACHE.update({text: value for text, (status, value) in found.items() if status == OK})
    keys: list[str | None] = []
    statuses: list[str] = []
    for answer in answers:
        if answer is None or not compact_text(answer):
            keys.append(None)
            statuses.append(OK)
        elif answer in found:
            keys.append(found[answer][1])
            statuses.append(found[answer][0])
        else:
            keys.append(_KEY_CACHE.get(answer))
            statuses.append(OK)
    return keys, statuses
