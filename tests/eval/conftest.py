"""Fixtures for the evaluation tests: a tiny randomly initialised Qwen2 folder with the tiny-task tokenizer."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_random_model_dir(tmp_path_factory):
    """A 2-layer Qwen2 (D=32) with random weights and the synthetic task's BPE tokenizer, saved as an HF folder."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    import torch

    from data_prep import synthetic, tiny_model

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny_random_model")
    problems = synthetic.generate_problems(300, seed=0)
    tokenizer = tiny_model.build_tokenizer(tiny_model.tokenizer_corpus(problems, 300, seed=0), vocab_size=340)
    config = tiny_model.TinyModelConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64
    )
    torch.manual_seed(0)
    model = tiny_model.make_model(config, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
