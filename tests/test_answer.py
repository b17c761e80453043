r"""Tests for `verl_meds.answer` with real (local, tiny) tokenizers built by the `tokenizers` library.

Three tokenizers: a char-level one (no merges), one with hand-written merges that split the marker as
`"\\" "box" "ed" "{4"`, and a small BPE trained on boxed answers. All are wrapped as `PreTrainedTokenizerFast`.
"""

import pytest
import torch

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

from verl_meds.answer import extract_boxed, locate_answer_token, locate_answer_tokens  # noqa: E402


def _wrap(model) -> "transformers.PreTrainedTokenizerFast":
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def _byte_vocab() -> dict[str, int]:
    return {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}


@pytest.fixture(scope="module")
def char_tokenizer():
    return _wrap(models.BPE(vocab=_byte_vocab(), merges=[]))


@pytest.fixture(scope="module")
def merged_tokenizer():
    """Merges give the tokens "box", "ed", "{4" and "ed{" is never formed, so the marker spans four tokens."""
    vocab = _byte_vocab()
    merges = [("b", "o"), ("bo", "x"), ("e", "d"), ("{", "4"), ("f", "box")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    return _wrap(models.BPE(vocab=vocab, merges=merges))


@pytest.fixture(scope="module")
def trained_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        r"The answer is \boxed{42}.",
        r"so x = 4 and \boxed{41} follows",
        r"thus \fbox{4} done, \boxed{4}",
        r"we get \boxed{\frac{1}{2}} finally",
    ]
    trainer = trainers.BpeTrainer(
        vocab_size=256 + 40, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus * 10, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _token_at_char(tokenizer, text: str, char_index: int) -> int:
    """Ground truth from the tokenizer's own offsets: index of the token covering `char_index`."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return next(i for i, (start, end) in enumerate(offsets) if start <= char_index < end)


# ---------------------------------------------------------------------------- extract_boxed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"first \boxed{1} then \boxed{2}", "2"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"so \fbox{x+1} and that is it", "x+1"),
        (r"\boxed{3} but also \fbox{5}", "5"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),
        (r"\boxed{}", ""),
        (r"no box at all", None),
        (r"\boxed{1} and then a truncated \boxed{\frac{1}{2", None),
        (r"\boxed", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# ---------------------------------------------------------------------------- locate_answer_token


def test_marker_split_over_four_tokens_and_merged_brace(merged_tokenizer):
    ids = _encode(merged_tokenizer, r"So \boxed{42} ok")
    pieces = [merged_tokenizer.decode([i]) for i in ids]
    assert pieces[3:8] == ["\\", "box", "ed", "{4", "2"]  # the merged "{4" holds the first answer character
    assert locate_answer_token(ids, merged_tokenizer) == 6


def test_fbox_with_merges(merged_tokenizer):
    ids = _encode(merged_tokenizer, r"\fbox{7}")
    assert [merged_tokenizer.decode([i]) for i in ids] == ["\\", "fbox", "{", "7", "}"]
    assert locate_answer_token(ids, merged_tokenizer) == 3


@pytest.mark.parametrize(
    ("text", "answer_char"),
    [
        (r"The answer is \boxed{42}.", "4"),
        (r"first \boxed{1} then \boxed{7}", "7"),  # the last box wins
        (r"first \boxed{1} then \fbox{9}", "9"),
        (r"\fbox{3} then \boxed{8} end", "8"),
        (r"\boxed{\frac{1}{2}}", "\\"),
        (r"\boxed{ 5}", "5"),  # leading whitespace is skipped
        (r"truncated \boxed{42", "4"),  # unclosed: the answer has started, so it is located
    ],
)
def test_char_level_positions(char_tokenizer, text, answer_char):
    ids = _encode(char_tokenizer, text)
    assert len(ids) == len(text)  # one token per character
    marker_end = max(text.rfind("\\boxed{") + len("\\boxed{"), text.rfind("\\fbox{") + len("\\fbox{"))
    expected = text.index(answer_char, marker_end)
    assert locate_answer_token(ids, char_tokenizer) == expected


@pytest.mark.parametrize(
    "text",
    [
        "no box here at all",
        r"an empty box \boxed{}",
        r"ends right after the brace \boxed{",
        r"a good box \boxed{3} then an empty last one \boxed{}",
        r"\boxed 3 without braces",
        "",
    ],
)
def test_no_answer_gives_minus_one(char_tokenizer, merged_tokenizer, text):
    for tokenizer in (char_tokenizer, merged_tokenizer):
        assert locate_answer_token(_encode(tokenizer, text), tokenizer) == -1


@pytest.mark.parametrize(
    "text",
    [
        r"The answer is \boxed{42}.",
        r"so x = 4 and \boxed{41} follows",
        r"thus \fbox{4} done, \boxed{4}",
        r"we get \boxed{\frac{1}{2}} finally",
        r"unseen text \boxed{43} with \fbox{42}!",
        r"\boxed{42}\boxed{41}",
    ],
)
def test_trained_bpe_matches_offsets(trained_tokenizer, text):
    ids = _encode(trained_tokenizer, text)
    marker_end = max(text.rfind("\\boxed{") + len("\\boxed{"), text.rfind("\\fbox{") + len("\\fbox{"))
    assert locate_answer_token(ids, trained_tokenizer) == _token_at_char(trained_tokenizer, text, marker_end)


def test_trained_bpe_merges_brace_with_answer(trained_tokenizer):
    # The trained vocabulary merges "{" with what follows; the merged token must be the answer token.
    text = r"The answer is \boxed{42}."
    ids = _encode(trained_tokenizer, text)
    index = locate_answer_token(ids, trained_tokenizer)
    assert "{" in trained_tokenizer.decode([ids[index]]) and "4" in trained_tokenizer.decode([ids[index]])


class _CountingTokenizer:
    def __init__(self, inner):
        self.inner = inner
        self.window_tokens = 0  # tokens decoded in calls of more than one token

    def decode(self, token_ids):
        if len(token_ids) > 1:
            self.window_tokens += len(token_ids)
        return self.inner.decode(token_ids)


def test_scan_is_cheap_for_long_responses(char_tokenizer):
    text = "reasoning " * 500 + r"\boxed{42} done."
    counting = _CountingTokenizer(char_tokenizer)
    ids = _encode(char_tokenizer, text)
    assert locate_answer_token(ids, counting) == text.rindex("42")
    assert counting.window_tokens <= 200  # decoded near the marker only, not the 5000 characters before it
    counting.window_tokens = 0
    no_box = "no \\answer but \\mu and x " * 200  # backslashes, and an `x` that is too far from any of them
    assert locate_answer_token(_encode(char_tokenizer, no_box), counting) == -1
    assert counting.window_tokens == 0  # no token could start a marker: nothing is decoded beyond single pieces
    boxes_then_text = r"\boxed{1} " + "\\xi " * 100
    counting.window_tokens = 0
    assert locate_answer_token(_encode(char_tokenizer, boxes_then_text), counting) == len(r"\boxed{")
    assert counting.window_tokens <= 100 * 4 * 16  # every `\\xi` after the box costs one short window at most


# ---------------------------------------------------------------------------- locate_answer_tokens


def test_batch_uses_mask_and_maps_back_to_positions(char_tokenizer):
    texts = [r"a \boxed{5}", r"\fbox{12} xx", "none"]
    rows = [_encode(char_tokenizer, text) for text in texts]
    width = max(len(row) for row in rows) + 3
    pad = _encode(char_tokenizer, "\\")[0]  # padding that would create a box marker if it were read
    ids = torch.full((3, width), pad, dtype=torch.long)
    mask = torch.zeros((3, width), dtype=torch.long)
    for n, row in enumerate(rows):
        ids[n, : len(row)] = torch.tensor(row)
        mask[n, : len(row)] = 1
    positions = locate_answer_tokens(ids, mask, char_tokenizer)
    assert positions.dtype == torch.long and positions.shape == (3,)
    assert positions.tolist() == [texts[0].index("5"), texts[1].index("1"), -1]

    # A hole in the mask: the masked-out "9" is skipped, so the answer token is "3" at its original position.
    text = r"\boxed{93}"
    holey = torch.tensor([_encode(char_tokenizer, text)])
    holey_mask = torch.ones_like(holey)
    holey_mask[0, text.index("9")] = 0
    assert locate_answer_tokens(holey, holey_mask, char_tokenizer).tolist() == [text.index("3")]
    assert locate_answer_tokens(holey, torch.zeros_like(holey), char_tokenizer).tolist() == [-1]


def test_batch_shape_errors(char_tokenizer):
    with pytest.raises(ValueError, match=r"shape \(N, T\)"):
        locate_answer_tokens(torch.zeros(3, dtype=torch.long), torch.ones(3), char_tokenizer)
    with pytest.raises(ValueError, match=r"shape \(N, T\)"):
        locate_answer_tokens(torch.zeros((2, 3), dtype=torch.long), torch.ones((2, 4)), char_tokenizer)


# ---------------------------------------------------------------------------- whitespace before the brace

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SPACES = st.text(alphabet=" \t\n\r", min_size=0, max_size=4)


def test_box_with_a_space_regression(char_tokenizer):
    text = "The answer is \\boxed {42}."
    assert extract_boxed(text) == "42"
    assert locate_answer_token(_encode(char_tokenizer, text), char_tokenizer) == text.index("42")


@settings(max_examples=80, deadline=None)
@given(
    command=st.sampled_from(["boxed", "fbox"]),
    space=SPACES,
    answer=st.sampled_from(["42", "\\frac{1}{2}", "x+1", "-7"]),
    earlier=st.booleans(),
    tail=st.sampled_from(["", ".", " done", "}"]),
)
def test_any_whitespace_between_command_and_brace(
    char_tokenizer, trained_tokenizer, command, space, answer, earlier, tail
):
    prefix = "first \\boxed{9}, then " if earlier else "so "
    text = f"{prefix}\\{command}{space}{{{answer}}}{tail}"
    assert extract_boxed(text) == answer
    start = len(text) - len(tail) - len(answer) - 1  # char index of the answer's first character
    assert locate_answer_token(_encode(char_tokenizer, text), char_tokenizer) == start
    ids = _encode(trained_tokenizer, text)
    assert locate_answer_token(ids, trained_tokenizer) == _token_at_char(trained_tokenizer, text, start)


@pytest.mark.parametrize("text", [r"\boxedx{3}", r"\boxed 3", r"\fboxes {3}"])
def test_other_commands_are_not_boxes(char_tokenizer, text):
    assert extract_boxed(text) is None
    assert locate_answer_token(_encode(char_tokenizer, text), char_tokenizer) == -1
