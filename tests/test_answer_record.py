"""Tests for the answer record of `verl_meds.step`: located per response where the reward is computed, read back
on the driver, it must give exactly what the driver's own `MEDSStep.locate` and `response_digests` give."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from tiny_tokenizers import byte_level  # noqa: E402

from verl_meds.config import MEDSConfig  # noqa: E402
from verl_meds.step import MEDSStep, answer_record, read_answer_records, response_digest, response_digests  # noqa: E402

PIECES = [
    "so ",
    "the answer is ",
    "\\boxed{",
    "\\boxed {",
    "\\fbox{",
    "\\boxed",
    "}",
    "{",
    "\\{",
    "42",
    "-7",
    "x+1",
    "\\frac{1}{2}",
    " ",
    "\n",
    "é",
    "数",
    "\\",
    "box",
    "ed",
]


TOKENIZERS = {
    "bytes": byte_level(),
    "bpe": byte_level(["so the answer is \\boxed{42}.", "\\fbox{x+1} and \\boxed {-7}", "\\boxed{\\frac{1}{2}}"]),
}


def _batch(tokenizer, texts: list[str]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    rows = [torch.tensor(tokenizer.encode(t, add_special_tokens=False), dtype=torch.long) for t in texts]
    width = max([r.numel() for r in rows] + [1])
    responses = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)  # (N, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (N, T)
    for n, row in enumerate(rows):
        responses[n, : row.numel()] = row
        mask[n, : row.numel()] = 1
    return rows, responses, mask


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(sorted(TOKENIZERS)),
    texts=st.lists(st.lists(st.sampled_from(PIECES), max_size=14).map("".join), min_size=1, max_size=6),
    prompt_lengths=st.lists(st.integers(0, 50), min_size=6, max_size=6),
)
def test_records_give_what_the_driver_locates(name, texts, prompt_lengths):
    tokenizer = TOKENIZERS[name]
    rows, responses, mask = _batch(tokenizer, texts)
    lengths = torch.tensor(prompt_lengths[: len(texts)], dtype=torch.long)
    expected = MEDSStep(MEDSConfig(), num_layers=4).locate(responses, mask, lengths, tokenizer)
    forms = [rows, [r.tolist() for r in rows], [r.numpy() for r in rows]]
    for form in forms:
        location, digests = read_answer_records([answer_record(r, tokenizer) for r in form], lengths)
        assert torch.equal(location.index, expected.index)
        assert torch.equal(location.pred_pos, expected.pred_pos)
        assert torch.equal(location.token, expected.token)
        assert digests == response_digests(responses, mask)


@settings(max_examples=60, deadline=None)
@given(
    a=st.lists(st.integers(0, 2**40), max_size=30),
    b=st.lists(st.integers(0, 2**40), max_size=30),
)
def test_digest_is_equal_exactly_for_equal_token_sequences(a, b):
    assert (response_digest(a) == response_digest(b)) == (a == b)
    assert response_digest(torch.tensor(a, dtype=torch.long)) == response_digest(np.array(a, dtype=np.int64))
    assert response_digest(torch.tensor(a, dtype=torch.int32) if max(a, default=0) < 2**31 else a) == response_digest(
        a
    )


@pytest.mark.parametrize("missing", [None, "", 3, {"index": 1}])
def test_a_row_without_a_record_sends_the_batch_to_the_driver(missing):
    record = answer_record([1, 2, 3], TOKENIZERS["bytes"])
    assert read_answer_records([record, missing], torch.tensor([4, 5])) is None
    assert read_answer_records([record, record], torch.tensor([4, 5])) is not None


@pytest.mark.parametrize(
    "bad",
    ["3 4", "x 4 " + "0" * 40, "3 4 " + "0" * 39, "3 4 " + "g" * 40, "-2 4 " + "0" * 40, "3 -1 " + "0" * 40, "3  4"],
)
def test_malformed_records_are_refused_naming_the_row(bad):
    good = answer_record([1, 2, 3], TOKENIZERS["bytes"])
    with pytest.raises(ValueError, match=r"row 1: .* answer record|row 1: .* negative"):
        read_answer_records([good, bad], torch.tensor([4, 5]))


def test_empty_batch():
    location, digests = read_answer_records([], torch.zeros(0, dtype=torch.long))
    assert location.index.shape == (0,) and digests == []
