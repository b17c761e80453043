"""Small byte-level tokenizers built locally with `tokenizers`, wrapped as `PreTrainedTokenizerFast`, for tests.

Importable from every test module (pytest puts `tests/`, the folder of `conftest.py`, on `sys.path`).
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast


def byte_level(corpus: list[str] | None = None, merges: int = 60, pad: str = "!") -> PreTrainedTokenizerFast:
    """One token per byte (no merges), or with `corpus` a BPE trained on it with up to `merges` merges; `pad` is
    both the pad and the end-of-sequence token."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if corpus is None:
        inner = Tokenizer(models.BPE(vocab={char: i for i, char in enumerate(sorted(alphabet))}, merges=[]))
    else:
        inner = Tokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    inner.decoder = decoders.ByteLevel()
    if corpus is not None:
        trainer = trainers.BpeTrainer(vocab_size=256 + merges, initial_alphabet=alphabet, show_progress=False)
        inner.train_from_iterator(corpus * 10, trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=inner)
    out.pad_token = out.eos_token = pad
    return out
