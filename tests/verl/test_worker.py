"""Tests for `verl_meds.verl.worker.flat_positions`: rows of the flattened hidden states for both verl layouts."""

import pytest
import torch

pytest.importorskip("verl")

from verl_meds.verl.worker import MEDSEngineMixin, flat_positions, with_capture  # noqa: E402

pytestmark = pytest.mark.requires_verl


def _jagged(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A nested jagged `(B, j)` batch of token ids with the given lengths, and its rows as plain tensors."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(5, 1000, (n,), generator=g) for n in lengths]
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged), rows


def _expected(lengths: list[int], pred_pos: list[int], packed: bool) -> tuple[list[int], list[bool]]:
    """Independent computation: cumulative lengths (packed) or row * max_len (padded); 0 where not valid."""
    flat, valid, start = [], [], 0
    width = max(lengths)
    for row, (n, p) in enumerate(zip(lengths, pred_pos, strict=True)):
        ok = 0 <= p and p + 1 < n  # the position exists and the answer token after it is in the sequence
        flat.append((start + p if packed else row * width + p) if ok else 0)
        valid.append(ok)
        start += n
    return flat, valid


LENGTHS = [5, 9, 3, 12, 1, 7]
POSITIONS = [
    pytest.param([0, 4, 1, 10, -1, 5], id="in-range"),
    pytest.param([3, 7, 1, 0, -1, 5], id="last-valid-positions"),  # n - 2 is the last position with a successor
    pytest.param([4, 8, 2, 11, 0, 6], id="last-token-has-no-successor"),
    pytest.param([-1, -1, -1, -1, -1, -1], id="no-answers"),
    pytest.param([5, 100, -7, 12, 1, 9], id="out-of-range"),
]


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_flat_positions_against_independent_computation(positions, packed):
    ids, _ = _jagged(LENGTHS)
    flat, valid = flat_positions(ids, torch.tensor(positions), use_remove_padding=packed)
    exp_flat, exp_valid = _expected(LENGTHS, positions, packed)
    assert flat.dtype == torch.int64 and valid.dtype == torch.bool
    assert flat.shape == valid.shape == (len(LENGTHS),)
    assert valid.tolist() == exp_valid
    assert flat.tolist() == exp_flat


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_flat_index_reads_the_predicting_token(packed):
    lengths = [6, 2, 11, 4]
    pred_pos = torch.tensor([2, 0, 9, 1])
    ids, rows = _jagged(lengths, seed=1)
    if packed:
        flattened = ids.values()  # (total,), what verl feeds the model as one (1, total) row
        assert flattened.shape == (sum(lengths),)
    else:
        flattened = ids.to_padded_tensor(padding=0).reshape(-1)  # (B * max_len,) right-padded rows
    flat, valid = flat_positions(ids, pred_pos, use_remove_padding=packed)
    assert valid.all()
    for i, row in enumerate(rows):
        assert flattened[flat[i]] == row[pred_pos[i]]
        assert flattened[flat[i] + 1] == row[pred_pos[i] + 1]  # the answer token follows in both layouts


def test_flat_index_reads_hidden_state_rows():
    # The same mapping applied to per-token "hidden states" of width D, flattened to (B*S, D) as the capture does.
    lengths = [3, 8, 5]
    pred_pos = torch.tensor([1, 6, 3])
    ids, rows = _jagged(lengths, seed=2)
    hidden_rows = [r.float()[:, None] * torch.arange(1, 5).float() for r in rows]  # (n_i, D=4), token-dependent
    nested = torch.nested.as_nested_tensor(hidden_rows, layout=torch.jagged)
    packed_states = nested.values()  # (total, D)
    padded_states = nested.to_padded_tensor(padding=0.0).reshape(-1, 4)  # (B * max_len, D)
    for packed, states in ((True, packed_states), (False, padded_states)):
        flat, _ = flat_positions(ids, pred_pos, use_remove_padding=packed)
        picked = states[flat]  # (B, D)
        expected = torch.stack([h[p] for h, p in zip(hidden_rows, pred_pos.tolist(), strict=True)])
        assert torch.equal(picked, expected)


def test_int32_positions_and_single_sample():
    ids, _ = _jagged([4])
    flat, valid = flat_positions(ids, torch.tensor([2], dtype=torch.int32), use_remove_padding=False)
    assert flat.tolist() == [2] and valid.tolist() == [True]
    flat, valid = flat_positions(ids, torch.tensor([3], dtype=torch.int32), use_remove_padding=True)
    assert flat.tolist() == [0] and valid.tolist() == [False]


def test_with_capture_builds_one_subclass_per_engine():
    class Engine:
        def forward_step(self, micro_batch, loss_function, forward_only):
            return "base"

    mixed = with_capture(Engine)
    assert issubclass(mixed, MEDSEngineMixin) and issubclass(mixed, Engine)
    assert mixed.__name__ == "MEDSEngine"
    assert with_capture(Engine) is mixed and with_capture(mixed) is mixed
    assert mixed.__mro__.index(MEDSEngineMixin) < mixed.__mro__.index(Engine)
