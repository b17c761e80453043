r"""Tests for `verl_meds.verl.reward`: grading the last `\boxed{}` with math-verify, as verl calls it.

The cases are shaped like real completions (a chain of thought, then a boxed answer) and the ground truths like the
datasets' (GSM8K strings, AMC floats, lists of accepted answers).
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("math_verify")

from verl_meds.verl.reward import compute_score, compute_score_acc, is_correct  # noqa: E402

pytestmark = pytest.mark.requires_verl

GSM8K_RIGHT = (
    "Natalia sold 48 clips in April and half as many, 24, in May. 48 + 24 = 72.\nSo the answer is \\boxed{72}."
)
GSM8K_WRONG = "Natalia sold 48 clips in April and 48 / 2 = 24 in May. 48 - 24 = 24.\nThe answer is \\boxed{24}."

# (completion, ground truth, correct, extracted answer)
CASES = [
    pytest.param("Adding the two amounts... so the answer is \\boxed{42}.", "42", True, "42", id="boxed-int"),
    pytest.param(GSM8K_RIGHT, "72", True, "72", id="gsm8k-right"),
    pytest.param(GSM8K_WRONG, "72", False, "24", id="gsm8k-wrong"),
    pytest.param("First try \\boxed{1}. Wait, I made an error. \\boxed{2}", "2", True, "2", id="last-box-wins"),
    pytest.param("First try \\boxed{1}. Wait, I made an error. \\boxed{2}", "1", False, "2", id="earlier-box-ignored"),
    pytest.param("The area is 42 square units.", "42", False, "", id="no-box"),
    pytest.param("The half is \\boxed{\\frac{1}{2}}.", "0.5", True, "\\frac{1}{2}", id="frac-vs-decimal"),
    pytest.param("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True, "\\dfrac{3}{4}", id="dfrac-vs-frac"),
    pytest.param("\\boxed{12}", "12.0", True, "12", id="int-vs-decimal-string"),
    pytest.param("The sum of the roots is \\boxed{27}.", 27.0, True, "27", id="amc-float-gt"),
    pytest.param("\\boxed{27}", 27, True, "27", id="int-gt"),
    pytest.param("\\boxed{12.5}", 12.5, True, "12.5", id="non-integer-float-gt"),
    pytest.param("\\boxed{26}", 27.0, False, "26", id="amc-float-gt-wrong"),
    pytest.param("so the answer is \\boxed{7", "7", False, "", id="unbalanced-box"),
    pytest.param("\\boxed{7} and then \\boxed{8", "7", False, "", id="truncated-last-box"),
    pytest.param("\\boxed{}", "0", False, "", id="empty-box"),
    # math-verify reads a comma followed by exactly three digits as a thousands separator (math_verify/parser.py,
    # "Numbers with thousand separators"), so "3,000" is the number 3000 ...
    pytest.param("The school raised \\boxed{3,000} dollars.", "3000", True, "3,000", id="thousands-separator"),
    pytest.param("\\boxed{3000}", "3,000", True, "3000", id="thousands-separator-in-gt"),
    pytest.param("\\boxed{3{,}000}", 3000, True, "3{,}000", id="latex-thousands-separator"),
    # ... while "1,2" is the set {1, 2}, not twelve.
    pytest.param("\\boxed{1,2}", "12", False, "1,2", id="comma-list-is-not-a-number"),
    pytest.param("The side is \\boxed{5 \\text{ cm}}.", "5", True, "5 \\text{ cm}", id="units-in-text"),
    pytest.param("\\boxed{10\\%}", "10", True, "10\\%", id="percent"),
    pytest.param("\\boxed{x = 3}", "3", True, "x = 3", id="equation"),
    pytest.param("\\boxed{\\sqrt{2}}", "2^{1/2}", True, "\\sqrt{2}", id="symbolic"),
    pytest.param("\\fbox{9}", "9", True, "9", id="fbox"),
    pytest.param("The answer is \\boxed {42}.", "42", True, "42", id="box-with-space"),
    pytest.param("\\boxed{\\varnothing}", "\\emptyset", True, "\\varnothing", id="empty-set-spelling"),
    pytest.param("\\boxed{0.\\overline{3}}", "0", False, "0.\\overline{3}", id="repeating-decimal-vs-0"),
    pytest.param("\\boxed{\\frac{1}{2^{80}}}", "\\frac{1}{2^{81}}", False, "\\frac{1}{2^{80}}", id="tiny-magnitudes"),
    pytest.param("\\boxed{0.00001}", 1e-05, True, "0.00001", id="float-gold-e-notation"),
    pytest.param("\\boxed{41}", "42", False, "41", id="off-by-one"),
]


def _ok(score: float, correct: bool) -> dict:
    """The fields of a score dict whose grading finished in time."""
    return {"score": score, "acc": float(correct), "grading_timeout": 0.0, "grading_error": 0.0}


@pytest.mark.parametrize(("completion", "ground_truth", "correct", "pred"), CASES)
def test_compute_score(completion, ground_truth, correct, pred):
    result = compute_score("gsm8k", completion, ground_truth, extra_info={"index": 0})
    assert result == {**_ok(1.0 if correct else -1.0, correct), "pred": pred}


@pytest.mark.parametrize(("completion", "ground_truth", "correct", "pred"), CASES)
def test_compute_score_acc(completion, ground_truth, correct, pred):
    result = compute_score_acc("gsm8k", completion, ground_truth)
    assert result == {**_ok(float(correct), correct), "pred": pred}


@pytest.mark.parametrize(
    ("ground_truth", "correct"),
    [(["5", "7"], True), (("7",), True), (["5", "6"], False), ([], False), ([5.0, 7.0], True)],
)
def test_list_ground_truth_means_any(ground_truth, correct):
    assert compute_score("x", "\\boxed{7}", ground_truth)["acc"] == float(correct)


def test_is_correct_direct():
    assert is_correct("\\frac{1}{2}", "0.5")
    assert is_correct(" 72 ", "72")  # surrounding whitespace
    assert is_correct("72.", "72")  # trailing period (normalised string match)
    assert is_correct("\\$72", "72")
    assert not is_correct("", "0")
    assert not is_correct("   ", "0")
    assert not is_correct("73", "72")


def test_none_or_empty_solution_is_wrong():
    assert compute_score("x", None, "1") == {**_ok(-1.0, False), "pred": ""}
    assert compute_score_acc("x", "", "1") == {**_ok(0.0, False), "pred": ""}


def test_grading_works_off_the_main_thread():
    # verl calls reward functions from executor threads; math-verify's default signal-based timeouts raise there.
    jobs = [(completion, gt, correct) for completion, gt, correct, _ in (p.values for p in CASES)]
    names = set()

    def grade(job):
        names.add(threading.current_thread().name)
        completion, gt, _ = job
        return compute_score("x", completion, gt)["acc"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        accs = list(pool.map(grade, jobs))
    assert threading.main_thread().name not in names
    assert accs == [float(correct) for _, _, correct in jobs]


@pytest.mark.parametrize("ground_truth", [None, float("nan"), True, {"a": 1}])
def test_unusable_ground_truth_is_graded_wrong_and_flagged(ground_truth):
    result = compute_score("x", "\\boxed{1}", ground_truth)
    assert result["acc"] == 0.0 and result["score"] == -1.0 and result["grading_error"] == 1.0
    with pytest.raises(ValueError, match="ground_truth must be"):
        is_correct("1", ground_truth)


def test_answer_keys_in_the_reward_info(monkeypatch):
    from verl_meds.answer import answer_key

    for completion in ("so \\boxed{0.5}", "hence \\boxed{\\frac{1}{2}}", "\\boxed{x+1}", "no box"):
        result = compute_score_acc("x", completion, "1/2", answer_keys=True)
        pred = result["pred"]
        assert result["answer_key"] == (answer_key(pred) if pred else "")
        assert result["answer_key_timeout"] == 0.0 and result["answer_key_error"] == 0.0
    assert "answer_key" not in compute_score("x", "\\boxed{1}", "1")  # off unless asked
    monkeypatch.setenv("VERL_MEDS_GRADING_TIMEOUT", "1.0")
    hung = compute_score("x", "\\boxed{10^{10^{10}}}", "3", answer_keys=True)
    assert hung["answer_key"] == "" and hung["answer_key_timeout"] == 1.0 and hung["acc"] == 0.0
