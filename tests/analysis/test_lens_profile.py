"""`verl_meds.analysis.lens_profile`: full-vocabulary lens against the MEDS capture on a tiny random model, and the
layer summaries on hand-made ranks."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from verl_meds.analysis.lens_profile import LensProfile, lens_profile
from verl_meds.features import LogitLensCapture, find_final_norm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=61,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=False,
    )
    m = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        find_final_norm(m).weight.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("final_norm", [True, False])
def test_profile_logits_are_the_capture_features_and_ranks_count_larger_logits(model, final_norm):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 61, (3, 10), generator=g)  # (N, S)
    pos = torch.tensor([2, 5, 8])
    tokens = ids[torch.arange(3), pos + 1]
    profile = lens_profile(model, ids, pos, tokens, final_norm=final_norm)
    assert profile.logits.shape == profile.ranks.shape == profile.top1.shape == (4, 3)
    with (
        torch.no_grad(),
        LogitLensCapture(model, [1, 2, 3, 4], final_norm, torch.arange(3) * 10 + pos, tokens) as capture,
    ):
        logits = model(ids).logits
    torch.testing.assert_close(profile.logits.T, capture.features, atol=1e-5, rtol=1e-5)
    last = logits[torch.arange(3), pos]  # (N, V)
    assert torch.equal(profile.top1[-1], last.argmax(-1))
    expected_rank = (last > last[torch.arange(3), tokens][:, None]).sum(-1)
    assert torch.equal(profile.ranks[-1], expected_rank)


def test_first_and_stable_top1_layers():
    ranks = torch.tensor(
        [
            [3, 0, 5, 0],
            [0, 2, 1, 0],
            [1, 0, 0, 0],
            [0, 0, 0, 2],
        ]
    )  # (L=4, N=4)
    profile = LensProfile(logits=torch.zeros(4, 4), ranks=ranks, top1=torch.zeros(4, 4, dtype=torch.long))
    assert profile.first_top1_layer().tolist() == [2, 1, 3, 1]
    assert profile.stable_top1_layer().tolist() == [4, 3, 3, 0]


def test_positions_are_checked(model):
    ids = torch.zeros((1, 4), dtype=torch.long)
    with pytest.raises(ValueError, match="pred_positions"):
        lens_profile(model, ids, torch.tensor([4]), torch.tensor([0]))
    with pytest.raises(ValueError, match="shape"):
        lens_profile(model, ids, torch.tensor([1, 2]), torch.tensor([0]))
