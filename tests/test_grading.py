r"""Tests for `verl_meds.grading`: bounded time, no false positives, one spelling per object, gold numbers.

Each fault kind is tested for its whole class of input (hypothesis), with the values from the bug reports as
regression cases: power towers and factorials that never finish in sympy, answers with a tail the parser drops,
distinct exact numbers of huge or tiny magnitude, float gold answers, synonyms of one object.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("math_verify")

from verl_meds.grading import (  # noqa: E402
    OK,
    TIMEOUT,
    GradingPool,
    answer_keys,
    canonical_latex,
    gold_text,
    grade,
    understood,
)

BOUND = 1.5  # seconds: a short bound keeps the adversarial tests fast
SLACK = 15.0  # kill of the hung worker, start of a replacement, a busy 2-core machine


def key(answer):
    return answer_keys([answer])[0][0]


# ------------------------------------------------------------------------------------------------ 1. bounded time

HANGS = [r"10^{10^{10}}", r"9^{9^{9^{9}}}", r"(10^{8})!", r"2^{2^{2^{2^{2^{2}}}}}", r"10^{10^{10}} + 1"]


@pytest.mark.parametrize("answer", HANGS)
def test_hanging_answer_is_bounded_and_wrong(answer):
    verdict = grade(answer, "3", timeout_seconds=BOUND)
    assert verdict.status == TIMEOUT and verdict.correct is False
    assert verdict.seconds < BOUND + SLACK
    keys, statuses = answer_keys([answer, "3"], timeout_seconds=BOUND)
    assert keys[0] is None and statuses[0] == TIMEOUT
    assert keys[1] == "sym:3" and statuses[1] == OK  # the rest of the batch is keyed after the kill


towers = st.lists(st.integers(2, 99), min_size=3, max_size=5).map(
    lambda xs: "^{".join(map(str, xs)) + "}" * (len(xs) - 1)
)
factorials = st.integers(10**6, 10**9).map(lambda n: f"({n})!")
mixed = st.tuples(st.integers(50, 999), st.integers(1000, 10**6)).map(lambda p: f"{p[0]}!^{{{p[1]}}}")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=st.one_of(towers, factorials, mixed), gold=st.sampled_from(["3", r"\frac{1}{2}", "x+1"]))
def test_any_tower_or_factorial_is_graded_within_the_bound(answer, gold):
    start = time.perf_counter()
    verdict = grade(answer, gold, timeout_seconds=BOUND)
    assert time.perf_counter() - start < BOUND + SLACK
    assert verdict.correct is False  # none of these equals a small gold answer, finished or not
    keys, _ = answer_keys([answer], timeout_seconds=BOUND)
    assert time.perf_counter() - start < 2 * (BOUND + SLACK)


def test_bound_holds_off_the_main_thread():
    """verl calls reward functions from executor threads, where math-verify's signal timeouts cannot work."""

    def job(answer):
        return threading.current_thread().name, grade(answer, "3", timeout_seconds=BOUND)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(job, [HANGS[0], "3", r"\frac{6}{2}"]))
    assert time.perf_counter() - start < BOUND + SLACK
    assert all(name != threading.main_thread().name for name, _ in results)
    assert [verdict.correct for _, verdict in results] == [False, True, True]
    assert results[0][1].status == TIMEOUT


def test_pool_validates_its_settings():
    with pytest.raises(ValueError, match="num_workers must be an int >= 1"):
        GradingPool(0, 1.0, 0)
    with pytest.raises(ValueError, match="timeout_seconds must be > 0"):
        GradingPool(1, 0.0, 0)


# ------------------------------------------------------------------------------------------------ 2. dropped parts


def test_repeating_decimal_regressions():
    assert not grade(r"0.\overline{3}", "0").correct
    assert grade(r"0.\overline{3}", r"\frac{1}{3}").correct
    assert grade(r"0.1\overline{6}", r"\frac{1}{6}").correct
    assert grade(r"-1.\overline{09}", r"-\frac{12}{11}").correct
    assert len({key(r"0.\overline{3}"), key(r"0.\overline{6}"), key("0")}) == 3


UNKNOWN_TAILS = [r"\overline{AB}", r"\hat{x}", r"\foo", r"\vec{v}", r"\dot{3}", r"\mathcal{O}", r"\tilde{2}", "≈"]
rationals = st.fractions(min_value=-1000, max_value=1000, max_denominator=50)


def latex_of(value: Fraction) -> str:
    return gold_text(value)


@settings(max_examples=60, deadline=None)
@given(value=rationals, tail=st.sampled_from(UNKNOWN_TAILS), front=st.booleans())
def test_answer_with_a_part_the_parser_drops_is_never_correct(value, tail, front):
    """`value` followed (or preceded) by something math-verify does not read: never equal to `value`, never keyed
    like it; equal only to the very same text."""
    gold = latex_of(value)
    answer = f"{tail} {gold}" if front else f"{gold}{tail}"
    assert not understood(canonical_latex(answer))
    assert not grade(answer, gold).correct
    assert key(answer) != key(gold)
    assert key(answer).startswith("str:")
    assert grade(answer, answer).correct


def test_malformed_numbers_are_text():
    assert not grade("3.14.15", r"3.14 \cdot 0.15").correct
    assert key("3.14.15").startswith("str:")


# ------------------------------------------------------------------------------------------------ 3. exact numbers


def test_huge_magnitude_regressions():
    assert not grade(r"\frac{1}{2^{80}}", r"\frac{1}{2^{81}}").correct
    assert grade(r"\frac{1}{2^{80}}", r"2^{-80}").correct
    assert not grade(r"10^{20}+1", r"10^{20}").correct
    assert not grade("0.0", r"\frac{1}{2^{81}}").correct  # a decimal against a tiny exact number: relative test
    assert grade("0.5", r"\frac{1}{2}").correct
    assert grade(r"\sqrt{8}", r"2\sqrt{2}").correct


exponents = st.integers(20, 300)


@settings(max_examples=60, deadline=None)
@given(k=exponents, delta=st.integers(1, 5), base=st.sampled_from([2, 3, 10]), sign=st.sampled_from(["", "-"]))
def test_distinct_exact_numbers_of_huge_magnitude_differ(k, delta, base, sign):
    small, smaller = rf"{sign}\frac{{1}}{{{base}^{{{k}}}}}", rf"{sign}\frac{{1}}{{{base}^{{{k + delta}}}}}"
    big, bigger = f"{sign}{base}^{{{k}}}", f"{sign}{base**k + delta}"
    assert not grade(small, smaller).correct and not grade(smaller, small).correct
    assert not grade(bigger, big).correct and not grade(big, bigger).correct
    assert grade(f"{sign}{base**k}", big).correct  # the same exact number written out
    assert key(small) != key(smaller) and key(big) != key(bigger)


@settings(max_examples=60, deadline=None)
@given(a=st.fractions(max_denominator=10**12), b=st.fractions(max_denominator=10**12))
def test_exact_rationals_are_equal_exactly_when_equal(a, b):
    assert grade(latex_of(a), latex_of(b)).correct == (a == b)


# ------------------------------------------------------------------------------------------------ 4. gold numbers


def test_float_gold_regressions():
    assert gold_text(1e-05) == "0.00001"
    assert grade("0.00001", 1e-05).correct
    assert grade("27", 27.0).correct
    assert gold_text("2.5E3") == "2500" and gold_text(Fraction(-1, 3)) == r"-\frac{1}{3}"
    for bad in (float("nan"), float("inf"), True, None, object()):
        with pytest.raises(ValueError, match="ground_truth must be"):
            gold_text(bad)


@settings(max_examples=80, deadline=None)
@given(
    x=st.floats(min_value=1e-12, max_value=1e15, allow_nan=False, allow_infinity=False),
    negative=st.booleans(),
)
def test_any_float_gold_matches_its_decimal(x, negative):
    x = -x if negative else x
    written = gold_text(x)
    assert "e" not in written.lower()
    assert float(written) == x  # the positional text reads back as the same float
    assert grade(written, x).correct
    assert grade(written, repr(x)).correct  # the e-notation string of the number reads the same


# ------------------------------------------------------------------------------------------------ 5. spellings

SYNONYMS = [
    (r"\varnothing", r"\emptyset"),
    (r"\O", r"\emptyset"),
    (r"\infin", r"\infty"),
    ("∞", r"\infty"),
    (r"\lbrace 1, 2\rbrace", r"\{1, 2\}"),
    ("2·3", r"2\cdot 3"),
    ("2⋅x", r"2\cdot x"),
    ("√2", r"\sqrt{2}"),
    ("√12", r"\sqrt{12}"),
    (r"\dfrac{3}{4}", r"\frac{3}{4}"),
    (r"\textstyle 5", "5"),
    (r"\displaystyle\frac12", r"\frac{1}{2}"),
]


@pytest.mark.parametrize(("one", "other"), SYNONYMS)
def test_spellings_of_one_object_grade_and_key_alike(one, other):
    assert grade(one, other).correct and grade(other, one).correct
    assert key(one) == key(other)


@settings(max_examples=40, deadline=None)
@given(pair=st.sampled_from(SYNONYMS), prefix=st.sampled_from(["", "x = ", "y="]))
def test_spellings_inside_larger_answers(pair, prefix):
    one, other = pair
    assert key(prefix + one) == key(prefix + other)


def test_different_objects_keep_different_keys():
    answers = [r"\emptyset", r"\{0\}", r"\infty", r"-\infty", r"\sqrt{2}", "2", "6", r"\frac{1}{2}", "0"]
    assert len({key(a) for a in answers}) == len(answers)


# ------------------------------------------------------------------------------------------------ batch keys


def test_answer_keys_validates_and_maps_rows():
    keys, statuses = answer_keys(["1/2", None, "0.5", "  ", r"\frac{1}{2}"])
    assert keys == ["sym:1/2", None, "sym:1/2", None, "sym:1/2"] and statuses == [OK] * 5
    with pytest.raises(ValueError, match="answer must be a str or None, got int 3"):
        answer_keys([3])


def test_matrices_are_read():
    column = r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"
    assert understood(column)
    assert grade(r"\begin{bmatrix} 1 \\ 2 \end{bmatrix}", column).correct
    assert not grade(r"\begin{pmatrix} 1 \\ 3 \end{pmatrix}", column).correct
    assert not understood(r"\begin{cases} 1 \end{cases}")


def test_single_worker_pool_survives_a_kill_while_others_wait():
    """A thread waiting for the only worker is served by its replacement after the worker is killed."""
    pool = GradingPool(1, BOUND, 0)
    try:
        with ThreadPoolExecutor(max_workers=3) as executor:
            futures = [executor.submit(pool.run, "grade", [(answer, "3")]) for answer in (HANGS[0], "3", "4")]
            results = [future.result(timeout=3 * (BOUND + SLACK)) for future in futures]
        assert results[0] == [(TIMEOUT, None)]
        assert results[1] == [(OK, True)] and results[2] == [(OK, False)]
    finally:
        pool.close()


# ------------------------------------------------------------------------------------------------ fast path


def _number_texts():
    integer = st.integers(-(10**30), 10**30).map(str)
    decimal = st.tuples(st.integers(0, 999999), st.integers(0, 999999), st.integers(1, 6), st.booleans()).map(
        lambda t: ("-" if t[3] else "") + f"{t[0]}." + str(t[1]).zfill(6)[: t[2]]
    )
    fraction = st.tuples(st.integers(-500, 500), st.integers(1, 500), st.sampled_from(["frac", "slash", "neg"])).map(
        lambda t: {
            "frac": rf"\frac{{{t[0]}}}{{{t[1]}}}",
            "slash": f"{abs(t[0])}/{t[1]}",
            "neg": rf"-\frac{{{abs(t[0])}}}{{{t[1]}}}",
        }[t[2]]
    )
    short = st.tuples(st.integers(0, 9), st.integers(1, 9)).map(lambda t: rf"\frac{t[0]}{t[1]}")
    spelled = st.sampled_from(["", ".", " ", "$"])
    return st.tuples(st.one_of(integer, decimal, fraction, short), spelled).map(
        lambda t: f"${t[0]}$" if t[1] == "$" else t[0] + t[1]
    )


@settings(max_examples=150, deadline=None)
@given(text=_number_texts())
def test_fast_key_equals_the_math_verify_key(text):
    from verl_meds.grading import fast_key, key_text

    quick = fast_key(text)
    assert quick is not None, text
    assert quick == key_text(text)


@pytest.mark.parametrize("text", ["1,000", "1/0", "x", r"\frac{1}{0}", "1.2345678", r"\sqrt{2}", "2^{3}"])
def test_fast_key_leaves_other_answers_to_the_workers(text):
    from verl_meds.grading import fast_key

    assert fast_key(text) is None


def test_workers_leave_with_their_parent():
    """A worker whose parent process dies exits, even when a forked sibling still holds the parent's socket."""
    import os
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import os, sys, time
        from verl_meds.grading import default_pool
        pool = default_pool(5.0)
        pool.run("grade", [("1", "1")])
        print(",".join(str(w.process.pid) for w in pool._workers), flush=True)
        if os.fork() == 0:  # a child that inherits the socket's parent end and outlives the parent
            time.sleep(30)
            os._exit(0)
        os._exit(0)  # the parent dies without closing anything
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    pids = [int(pid) for pid in out.stdout.strip().split(",") if pid]
    assert pids, out.stderr[-2000:]
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and _not_zombie(pid)]
    assert alive == [], f"grading workers outlived their parent: {alive}"


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@settings(max_examples=60, deadline=None)
@given(
    mantissa=st.decimals(min_value=1, max_value=9.99, places=2),
    exponent=st.integers(-30, 40),
    e=st.sampled_from(["e", "E"]),
)
def test_e_notation_is_one_number(mantissa, exponent, e):
    """`4.5e33` is 4.5 x 10^33 (as physics answers write it), never 4.5 times Euler's e to the 33."""
    from decimal import Decimal

    text = f"{mantissa}{e}{exponent}"
    written = gold_text(Decimal(text))
    assert grade(text, text).correct and grade(text, written).correct and grade(written, text).correct
    assert key(text) == key(written)
    other = f"{mantissa + Decimal('0.01')}{e}{exponent}"
    assert not grade(other, text).correct and key(other) != key(text)


def test_e_notation_regressions():
    assert grade("4.5e33", "4.5e33").correct
    assert grade("4.5e33", r"4.5 \times 10^{33}").correct
    assert not grade("4.5e33", "4.6e33").correct
    assert canonical_latex("1e100000") == "1e100000"  # too long to write out: left as text


LONG_PIECES = ["1", "7" * 97, ".", "..", "e", "E", "-", "+", r"\overline{", "}", "√", " ", "0.", r"\frac{", "{", "x"]


@settings(max_examples=40, deadline=None)
@given(pieces=st.lists(st.sampled_from(LONG_PIECES), min_size=1, max_size=30), repeat=st.integers(1, 400))
def test_text_rules_take_linear_time_on_long_answers(pieces, repeat):
    """The rules that run in the calling thread (before any worker) on a model's degenerate answer of up to ~100,000
    characters: no error, and well under a second (they were quadratic on long digit runs)."""
    from verl_meds.grading import compact_text, fast_key

    text = "".join(pieces) * repeat
    start = time.perf_counter()
    canonical = canonical_latex(text)
    understood(canonical)
    compact_text(canonical)
    fast_key(text)
    gold_text(text)
    assert time.perf_counter() - start < 1.0, len(text)


def test_long_digit_runs_regression():
    for text in ("1" * 30000 + "." + "1" * 30000, "1." * 30000, "1" * 3000 + "e" + "1" * 3000):
        start = time.perf_counter()
        understood(canonical_latex(text))
        assert time.perf_counter() - start < 1.0
    assert canonical_latex("0." + "3" * 300 + r"\overline{3}") == "0." + "3" * 300 + r"\overline{3}"  # kept as text
