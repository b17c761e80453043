"""Tests for `verl_meds.answer.answer_key`: equivalent answers share a key, different answers do not."""

import pytest

from verl_meds.answer import answer_key, extract_boxed


@pytest.mark.parametrize(
    "forms",
    [
        ["1/2", "0.5", r"\frac{1}{2}", r"\dfrac12", r"\tfrac{1}{2}", "2/4", " 0.50 ", r"\frac{1}{2}."],
        ["12", "12.0", "12.", "$12$", r"12\,"],
        [r"\sqrt{8}", r"2\sqrt{2}"],
        ["x+1", "1+x", r"\left(x+1\right)"],
        [r"\frac{\pi}{2}", r"\pi/2"],
    ],
)
def test_equivalent_forms_share_one_key(forms):
    keys = {answer_key(form) for form in forms}
    assert len(keys) == 1, dict(zip(forms, [answer_key(f) for f in forms], strict=True))
    assert next(iter(keys)).startswith("sym:")


def test_different_answers_differ():
    keys = [answer_key(a) for a in ["1/2", "1/3", "-1/2", "2", "x+2", r"\{1,2\}"]]
    assert len(set(keys)) == len(keys)


def test_no_answer_and_unparseable_text():
    assert answer_key(None) is None and answer_key("") is None and answer_key("  \\, ") is None
    # math-verify parses nothing: the normalised string is the key.
    assert answer_key(r"\frac{") == r"str:\frac{"
    assert answer_key(r" \frac{ ") == answer_key(r"\frac{")


def test_keys_from_boxed_responses():
    a = extract_boxed(r"so the answer is \boxed{\frac{1}{2}}.")
    b = extract_boxed(r"Therefore \boxed{0.5}")
    assert answer_key(a) == answer_key(b) == "sym:1/2"


def test_refuses_non_text():
    with pytest.raises(ValueError, match="answer must be a str or None, got int 3"):
        answer_key(3)
