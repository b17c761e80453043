"""Logit-lens features: hooks vs HF hidden states vs a brute-force full-vocabulary projection."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from verl_meds.features import (
    LogitLensCapture,
    finalize_features,
    find_decoder_layers,
    find_final_norm,
    logit_lens_from_hidden_states,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    m = Qwen2ForCausalLM(cfg).eval()
    # Give the final norm a non-trivial weight so that "normed" and "raw" differ.
    with torch.no_grad():
        find_final_norm(m).weight.uniform_(0.5, 2.0)
    return m


def _batch(seed=1, n=5, s=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (n, s), generator=g)
    pos = torch.randint(0, s - 1, (n,), generator=g)  # predicting position p - 1
    tokens = ids[torch.arange(n), pos + 1]
    return ids, pos, tokens


@pytest.mark.parametrize("final_norm", [True, False])
@pytest.mark.parametrize("layers", [[4, 5, 6], [1, 2, 3, 4, 5, 6], [2, 6], [3]])
def test_capture_matches_brute_force_full_vocab_lens(model, layers, final_norm):
    ids, pos, tokens = _batch()
    n, s = ids.shape
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    hs = out.hidden_states
    norm = find_final_norm(model)
    W = model.lm_head.weight
    # Brute force: project every layer onto the whole vocabulary, then read the answer token's logit.
    brute = []
    for layer in layers:
        h = hs[layer]
        if layer < len(hs) - 1 and final_norm:
            h = norm(h)
        logits = h @ W.T  # (N, S, V)
        brute.append(logits[torch.arange(n), pos, tokens])
    brute = torch.stack(brute, dim=-1)

    flat = torch.arange(n) * s + pos
    with torch.no_grad(), LogitLensCapture(model, layers, final_norm, flat, tokens) as cap:
        model(ids)
    ref = logit_lens_from_hidden_states(hs, pos, tokens, W, norm, layers, final_norm)
    assert cap.features.shape == (n, len(layers))
    torch.testing.assert_close(cap.features, brute.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref, brute.float(), atol=1e-5, rtol=1e-5)


def test_last_layer_feature_equals_model_logit(model):
    ids, pos, tokens = _batch(seed=3)
    n, s = ids.shape
    with torch.no_grad(), LogitLensCapture(model, [6], True, torch.arange(n) * s + pos, tokens) as cap:
        logits = model(ids).logits
    expected = logits[torch.arange(n), pos, tokens]
    torch.testing.assert_close(cap.features[:, 0], expected, atol=1e-5, rtol=1e-5)


def test_final_norm_changes_intermediate_layers_only(model):
    ids, pos, tokens = _batch(seed=4)
    flat = torch.arange(ids.shape[0]) * ids.shape[1] + pos
    feats = {}
    for fn in (True, False):
        with torch.no_grad(), LogitLensCapture(model, [3, 6], fn, flat, tokens) as cap:
            model(ids)
        feats[fn] = cap.features
    assert not torch.allclose(feats[True][:, 0], feats[False][:, 0])
    torch.testing.assert_close(feats[True][:, 1], feats[False][:, 1])


def test_capture_never_projects_onto_full_vocabulary(model, monkeypatch):
    """The product path reads W_U rows by index; it must not multiply by the whole (V, D) matrix."""
    ids, pos, tokens = _batch(seed=5)
    flat = torch.arange(ids.shape[0]) * ids.shape[1] + pos
    calls = []
    original = torch.Tensor.index_select

    def spy(self, dim, index):
        calls.append(tuple(self.shape))
        return original(self, dim, index)

    monkeypatch.setattr(torch.Tensor, "index_select", spy)
    with torch.no_grad(), LogitLensCapture(model, [4, 5, 6], True, flat, tokens) as cap:
        model(ids)
    assert (97, 32) in calls  # the LM head's rows were gathered by index
    assert cap.features.shape == (5, 3)


def test_empty_positions_give_empty_features(model):
    ids, _, _ = _batch()
    empty = torch.zeros(0, dtype=torch.long)
    with torch.no_grad(), LogitLensCapture(model, [5, 6], True, empty, empty) as cap:
        model(ids)
    assert cap.features.shape == (0, 2)


def test_bad_layers_and_shapes_raise(model):
    pos = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[1, 6\]"):
        LogitLensCapture(model, [0, 6], True, pos, pos)
    with pytest.raises(ValueError, match=r"\[1, 6\]"):
        LogitLensCapture(model, [7], True, pos, pos)
    with pytest.raises(ValueError, match="shape"):
        LogitLensCapture(model, [6], True, pos, torch.zeros(3, dtype=torch.long))


def test_head_not_run_is_an_error(model):
    pos = torch.zeros(1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="use_fused_kernels"):
        with LogitLensCapture(model, [6], True, pos, pos):
            pass


def test_finalize_diff():
    raw = torch.tensor([[1.0, 3.0, 6.0], [0.0, -1.0, 1.0]])
    torch.testing.assert_close(finalize_features(raw, diff=False), raw)
    torch.testing.assert_close(finalize_features(raw, diff=True), torch.tensor([[2.0, 3.0], [-1.0, 2.0]]))
    with pytest.raises(ValueError, match="at least 2"):
        finalize_features(raw[:, :1], diff=True)


def test_finders(model):
    assert len(find_decoder_layers(model)) == 6
    assert find_final_norm(model) is model.model.norm


def test_position_outside_the_forward_is_an_error_and_read_once(model, monkeypatch):
    ids, _, _ = _batch()
    too_far = torch.tensor([ids.numel()])  # one past the last row of the flattened (B*S, D) states
    with pytest.raises(RuntimeError, match="outside the forward's"):
        with torch.no_grad(), LogitLensCapture(model, [4, 5, 6], True, too_far, torch.zeros(1, dtype=torch.long)):
            model(ids)
    reads = []
    original = torch.Tensor.max

    def spy(self, *args, **kwargs):
        reads.append(tuple(self.shape))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "max", spy)
    flat = torch.tensor([0, 3])
    with torch.no_grad(), LogitLensCapture(model, [3, 4, 5, 6], True, flat, torch.zeros(2, dtype=torch.long)):
        model(ids)
    assert reads.count((2,)) <= 1  # the positions' bound: once per capture, not once per hooked layer
