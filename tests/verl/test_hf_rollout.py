"""Tests for `verl_meds.verl.hf_rollout.HFRolloutServer`, used directly (not as a Ray actor) on a tiny Qwen2.

The model (2 layers, hidden 32, vocabulary 48) and a word-level tokenizer are built from a config and saved to a
temporary folder, which the server loads like any checkpoint. The eos token is chosen from the model's own greedy
continuation of `EOS_PROMPT`, so one request provably stops at eos before its length budget.
"""

import asyncio
import copy
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("verl")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from omegaconf import OmegaConf  # noqa: E402

from verl_meds.verl.cpu.hf_rollout import HFRolloutServer  # noqa: E402

pytestmark = pytest.mark.requires_verl

VOCAB = 48
PAD, UNK = 0, 1
PROMPT_LENGTH = 8
RESPONSE_LENGTH = 10
EOS_PROMPT = [12, 13, 14, 15]
PROMPTS = [[5, 6], [7, 8, 9, 10, 11], EOS_PROMPT, [20, 21, 22, 23, 24, 25, 26, 27], [30]]  # lengths 2, 5, 4, 8, 1


def _reference(model, prompt: list[int], max_new_tokens: int, eos: int | None) -> list[int]:
    """Greedy continuation of one unpadded prompt with `model.generate`, cut after the first eos."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=eos,
        )
    new = out[0, len(prompt) :].tolist()
    return new[: new.index(eos) + 1] if eos is not None and eos in new else new


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,  # distinct logits, so greedy choices are not near-ties
        tie_word_embeddings=False,
    )
    model = transformers.Qwen2ForCausalLM(config).eval()

    # eos: the first token of EOS_PROMPT's greedy continuation that is new at position >= 2 (and not pad/unk).
    continuation = _reference(model, EOS_PROMPT, RESPONSE_LENGTH, eos=None)
    eos_index = next(
        j
        for j in range(2, RESPONSE_LENGTH - 1)
        if continuation[j] not in continuation[:j] and continuation[j] not in (PAD, UNK)
    )
    eos = continuation[eos_index]

    vocab = {"<pad>": PAD, "<unk>": UNK, **{f"t{i}": i for i in range(2, VOCAB)}}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token=f"t{eos}"
    )
    folder = tmp_path_factory.mktemp("tiny_qwen2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert transformers.AutoTokenizer.from_pretrained(folder).eos_token_id == eos
    return SimpleNamespace(path=str(folder), model=model, eos=eos, eos_index=eos_index)


def _server(tiny, seed: int = 0, max_num_seqs: int = 8) -> HFRolloutServer:
    config = SimpleNamespace(
        prompt_length=PROMPT_LENGTH, response_length=RESPONSE_LENGTH, max_num_seqs=max_num_seqs, seed=seed
    )
    model_config = OmegaConf.create({"path": tiny.path, "tokenizer_path": tiny.path})
    return HFRolloutServer(config, model_config)


def _generate(server: HFRolloutServer, prompts: list[list[int]], params: list[dict] | dict) -> list:
    """All requests submitted concurrently, as verl's agent loop does."""
    if isinstance(params, dict):
        params = [params] * len(prompts)

    async def run():
        return await asyncio.gather(
            *(server.generate(f"req-{i}", p, dict(sp)) for i, (p, sp) in enumerate(zip(prompts, params, strict=True)))
        )

    return asyncio.run(run())


GREEDY = {"temperature": 0.0}
SAMPLE = {"temperature": 1.0, "top_p": 1.0, "top_k": -1}


def test_concurrent_greedy_matches_model_generate(tiny):
    server = _server(tiny, max_num_seqs=2)
    batch_sizes = []
    original = server._generate_batch

    def recording(batch, key):
        batch_sizes.append(len(batch))
        return original(batch, key)

    server._generate_batch = recording  # observe how requests were batched; generation itself is unchanged
    outputs = _generate(server, PROMPTS, GREEDY)

    assert sorted(batch_sizes) == [1, 2, 2]  # five requests, at most max_num_seqs=2 per batch
    for prompt, out in zip(PROMPTS, outputs, strict=True):
        assert out.token_ids == _reference(tiny.model, prompt, RESPONSE_LENGTH, tiny.eos), prompt
        assert 1 <= len(out.token_ids) <= RESPONSE_LENGTH
        assert out.log_probs is None and out.stop_reason == "completed"
        if tiny.eos in out.token_ids:  # truncated right after the first eos
            assert out.token_ids.index(tiny.eos) == len(out.token_ids) - 1
        else:
            assert len(out.token_ids) == RESPONSE_LENGTH
    eos_output = outputs[PROMPTS.index(EOS_PROMPT)].token_ids
    assert len(eos_output) == tiny.eos_index + 1 < RESPONSE_LENGTH and eos_output[-1] == tiny.eos


def test_batching_does_not_change_greedy_output(tiny):
    one_by_one = [_generate(_server(tiny), [p], GREEDY)[0].token_ids for p in PROMPTS]
    together = [out.token_ids for out in _generate(_server(tiny, max_num_seqs=8), PROMPTS, GREEDY)]
    assert together == one_by_one


def test_length_limits(tiny):
    long_prompt = list(range(2, 2 + PROMPT_LENGTH + 3))  # 3 tokens over prompt_length: 3 fewer new tokens
    short, long, normal = _generate(
        _server(tiny),
        [PROMPTS[0], long_prompt, PROMPTS[1]],
        [{**GREEDY, "max_tokens": 3}, GREEDY, {**GREEDY, "max_tokens": 100}],  # max_tokens above the limit is cut
    )
    assert short.token_ids == _reference(tiny.model, PROMPTS[0], 3, tiny.eos)
    assert len(long.token_ids) <= RESPONSE_LENGTH - 3
    assert long.token_ids == _reference(tiny.model, long_prompt, RESPONSE_LENGTH - 3, tiny.eos)
    assert normal.token_ids == _reference(tiny.model, PROMPTS[1], RESPONSE_LENGTH, tiny.eos)


def test_greedy_logprobs_match_a_forward_pass(tiny):
    prompt = PROMPTS[1]
    (out,) = _generate(_server(tiny), [prompt], {**GREEDY, "logprobs": True})
    assert len(out.log_probs) == len(out.token_ids)
    sequence = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        logits = tiny.model(sequence).logits[0]  # (S, V)
    steps = torch.arange(len(prompt) - 1, sequence.shape[1] - 1)  # positions that predict each new token
    expected = torch.log_softmax(logits[steps], dim=-1).gather(-1, torch.tensor(out.token_ids)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(out.log_probs), expected, atol=1e-4, rtol=0)


def test_global_steps_are_stamped(tiny):
    server = _server(tiny)
    (before,) = _generate(server, [PROMPTS[0]], GREEDY)
    assert before.extra_fields["global_steps"] is None
    asyncio.run(server.set_global_steps(7))
    outputs = _generate(server, PROMPTS[:3], GREEDY)
    assert [o.extra_fields["global_steps"] for o in outputs] == [7, 7, 7]
    asyncio.run(server.update_weights(tiny.model.state_dict(), global_steps=9))
    (after,) = _generate(server, [PROMPTS[0]], GREEDY)
    assert after.extra_fields["global_steps"] == 9


def test_seeded_sampling_is_reproducible_and_private(tiny):
    torch.manual_seed(1234)
    global_state = torch.get_rng_state()
    first = [o.token_ids for o in _generate(_server(tiny, seed=3), PROMPTS, SAMPLE)]
    second = [o.token_ids for o in _generate(_server(tiny, seed=3), PROMPTS, SAMPLE)]
    other = [o.token_ids for o in _generate(_server(tiny, seed=4), PROMPTS, SAMPLE)]
    assert first == second
    assert first != other
    assert torch.equal(torch.get_rng_state(), global_state)  # the server samples from its own generator

    server = _server(tiny, seed=3)
    again_first = [o.token_ids for o in _generate(server, PROMPTS, SAMPLE)]
    later = [o.token_ids for o in _generate(server, PROMPTS, SAMPLE)]
    assert again_first == first and later != first  # the server's stream advances between calls


def test_update_weights_changes_greedy_output(tiny):
    server = _server(tiny)
    before = [o.token_ids for o in _generate(server, PROMPTS, GREEDY)]

    state = {name: tensor.clone() for name, tensor in tiny.model.state_dict().items()}
    state["lm_head.weight"] = torch.roll(state["lm_head.weight"], shifts=1, dims=0)  # every logit moves one id up
    asyncio.run(server.update_weights(state))
    after = [o.token_ids for o in _generate(server, PROMPTS, GREEDY)]

    updated = copy.deepcopy(tiny.model)
    updated.load_state_dict(state)
    assert after == [_reference(updated, p, RESPONSE_LENGTH, tiny.eos) for p in PROMPTS]
    assert after != before
    assert [a[0] for a in after] == [(b[0] + 1) % VOCAB for b in before]  # the first greedy token shifts by one


@pytest.mark.parametrize("change", ["extra-key", "missing-key", "renamed-keys"])
def test_update_weights_with_wrong_names_raises_and_changes_nothing(tiny, change):
    server = _server(tiny)
    before = [o.token_ids for o in _generate(server, PROMPTS, GREEDY)]
    state = {name: tensor.clone() * 3.0 for name, tensor in tiny.model.state_dict().items()}
    if change == "extra-key":
        state["model.layers.2.mlp.up_proj.weight"] = torch.zeros(64, 32)
        match = r"unexpected=\['model\.layers\.2\.mlp\.up_proj\.weight'\]"
    elif change == "missing-key":
        del state["model.norm.weight"]
        match = r"missing=\['model\.norm\.weight'\]"
    else:  # e.g. an FSDP wrapper prefix left on every name
        state = {f"_fsdp_wrapped_module.{name}": tensor for name, tensor in state.items()}
        match = "missing=.*unexpected="
    with pytest.raises(RuntimeError, match=match):
        asyncio.run(server.update_weights(state, global_steps=5))
    assert server.global_steps is None
    assert [o.token_ids for o in _generate(server, PROMPTS, GREEDY)] == before


@pytest.mark.parametrize("media", ["image_data", "video_data"])
def test_media_inputs_are_refused(tiny, media):
    server = _server(tiny)
    with pytest.raises(ValueError, match="text-only"):
        asyncio.run(server.generate("req", PROMPTS[0], dict(GREEDY), **{media: [object()]}))
