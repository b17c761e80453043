"""Build a tiny warm-started policy for the synthetic arithmetic task, saved as a Hugging Face folder.

The folder loads with ``AutoTokenizer.from_pretrained(path)`` and ``AutoModelForCausalLM.from_pretrained(path)``,
so verl can use it like any hub model. Three parts:

1. **Tokenizer**: byte-level BPE trained locally with ``tokenizers`` on chat-formatted synthetic text (digits are
   always single tokens; ``\\boxed{`` is one added token, so the answer digits start right after it), wrapped in
   ``PreTrainedTokenizerFast`` with eos ``<|im_end|>``, pad ``<|endoftext|>``, no bos, and a short ChatML template.
2. **Model**: a Qwen2 decoder (8 layers, D=64, 4 heads, 2 kv heads, untied embeddings, ~0.44M parameters).
3. **Warm start**: a short supervised pass with ``transformers.Trainer`` on worked solutions such as
   ``7*3=21, 24+21=45. \\boxed{45}`` written by the correct procedure and by the faulty procedures of
   `data_prep.synthetic` at known rates (`DEFAULT_MIX`), so samples at temperature 1.0 hold several distinct error
   modes. Sampled accuracy on held-out test problems is measured after training; training continues in extra
   rounds while it is under the lower bound of the accuracy band.

The folder also holds ``meds_tiny_info.json`` (accuracy, error-mode rates, parameter count, seed, mix, build time,
config hash). A folder whose hash matches the requested config is reused as is.

Run::

    python -m data_prep.tiny_model --out .cache/tiny_model [--seed 0] [--attention vllm_cpu]

`--attention vllm_cpu` builds the variant that vLLM's CPU attention accepts (`ATTENTION_PRESETS`: 2 query heads
and 1 key/value head of size 32 instead of 4 and 2 of size 16; the same parameter count), the model of the vLLM
rollout recipe (docs/vllm-cpu.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_prep.folders import replace_folder
from data_prep.synthetic import (
    FAULTY_PROCEDURES,
    FORMS,
    STEP_PROCEDURES,
    Problem,
    all_problems,
    error_modes,
    format_solution,
    split_problems,
)
from data_prep.verl_format import build_prompt_text

logger = logging.getLogger(__name__)

BUILD_VERSION = 1
"""Bumped whenever a code change alters the built folder; part of the config hash."""

INFO_FILE = "meds_tiny_info.json"
"""Name of the build record saved next to the weights."""

DEFAULT_TINY_DIR = Path(".cache") / "tiny_model"
"""Default output folder (relative to the working directory)."""

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
BOXED_TOKEN = "\\boxed{"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START_TOKEN, EOS_TOKEN)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""ChatML without a default system prompt: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then
``<|im_start|>assistant\\n`` when a generation prompt is asked for."""

ATTENTION_PRESETS: dict[str, dict[str, int]] = {
    "default": {"num_attention_heads": 4, "num_key_value_heads": 2},
    "vllm_cpu": {"num_attention_heads": 2, "num_key_value_heads": 1},
}
"""Named head layouts for `TinyModelConfig`. `default` (head size 16) is the tiny CPU setup's model;
`vllm_cpu` (head size 32) is the smallest layout of the same width that vLLM's CPU attention runs (it rejects
head sizes under `VLLM_CPU_MIN_HEAD_DIM`). Both have the same number of parameters: the query and output
projections keep their shape, and one key/value head of 32 is as wide as two of 16."""

VLLM_CPU_MIN_HEAD_DIM = 32
"""Smallest head size vLLM 0.31's CPU attention accepts (`Unsupported CPU attention configuration: head_dim=16`)."""

DEFAULT_MIX: dict[str, float] = {
    "correct": 0.4,
    "wrong_order": 0.15,
    "add_for_mul": 0.15,
    "dropped_carry": 0.15,
    "off_by_one": 0.15,
}
"""Share of warm-start solutions written by each procedure of `data_prep.synthetic.STEP_PROCEDURES`.
``dropped_carry`` equals the correct answer on problems without a carry (about half), so about 47% of the
warm-start answers are right."""


@dataclass(frozen=True)
class TinyModelConfig:
    """Everything that determines the built folder (its hash names the cache entry).

    > Parameters that control the tokenizer

    vocab_size (`int`, *optional*, defaults to `384`):
        Upper bound on the BPE vocabulary (256 byte tokens + 3 special tokens + ``\\boxed{`` + merges).
    tokenizer_corpus_size (`int`, *optional*, defaults to `4000`):
        Number of chat-formatted synthetic examples the BPE merges are learned from.

    > Parameters that control the model

    num_hidden_layers (`int`, *optional*, defaults to `8`): decoder layers L.
    hidden_size (`int`, *optional*, defaults to `64`): hidden size D.
    num_attention_heads (`int`, *optional*, defaults to `4`): query heads.
    num_key_value_heads (`int`, *optional*, defaults to `2`): key/value heads.
    intermediate_size (`int`, *optional*, defaults to `192`): MLP width.
    max_position_embeddings (`int`, *optional*, defaults to `2048`): longest sequence (RoPE, no extra weights).

    > Parameters that control the warm start

    mix (`dict[str, float]`, *optional*, defaults to `DEFAULT_MIX`):
        Procedure name -> share of the warm-start solutions; shares must sum to 1.
    train_steps (`int`, *optional*, defaults to `1800`): optimizer steps in the first round (about 3 minutes on
        one CPU thread; 1000 steps left seed 0 at 9.5% sampled accuracy, 1500 at 25.5%, 1800 at 37.5%).
    extra_steps (`int`, *optional*, defaults to `600`): steps in each further round while accuracy is too low.
    max_rounds (`int`, *optional*, defaults to `3`): training rounds at most.
    batch_size (`int`, *optional*, defaults to `16`): sequences per step. Small batches learn much faster per
        second here: 450 steps of 64 reached 3.5% sampled accuracy in the time 1800 steps of 16 reached 37.5%.
    learning_rate (`float`, *optional*, defaults to `2e-3`): peak AdamW learning rate (linear decay, 5% warmup).
    adam_beta2 (`float`, *optional*, defaults to `0.99`): AdamW second-moment decay (short runs like a short memory).
    n_test (`int`, *optional*, defaults to `200`): held-out problems for the accuracy measurement; they are the
        test split that ``python -m data_prep.synthetic --n-test n_test --seed seed`` writes, and are never trained on.
    max_new_tokens (`int`, *optional*, defaults to `48`): generation budget when measuring accuracy.
    accuracy_band (`tuple[float, float]`, *optional*, defaults to `(0.1, 0.8)`):
        Sampled accuracy (temperature 1.0) the build must reach; below it another round is trained, and a build
        that ends outside it raises.
    """

    vocab_size: int = 384
    tokenizer_corpus_size: int = 4000
    num_hidden_layers: int = 8
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 192
    max_position_embeddings: int = 2048
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    train_steps: int = 1800
    extra_steps: int = 600
    max_rounds: int = 3
    batch_size: int = 16
    learning_rate: float = 2e-3
    adam_beta2: float = 0.99
    n_test: int = 200
    max_new_tokens: int = 48
    accuracy_band: tuple[float, float] = (0.1, 0.8)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mix) - set(STEP_PROCEDURES))
        if unknown:
            raise ValueError(f"mix has unknown procedures {unknown}; valid names: {sorted(STEP_PROCEDURES)}")
        if any(v < 0 for v in self.mix.values()) or abs(sum(self.mix.values()) - 1.0) > 1e-6:
            raise ValueError(f"mix shares must be >= 0 and sum to 1, got {self.mix}")
        if self.vocab_size < 300:
            raise ValueError(f"vocab_size must be >= 300 (256 bytes + special tokens + merges), got {self.vocab_size}")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must divide by num_attention_heads ({self.num_attention_heads}), "
                f"which must divide by num_key_value_heads ({self.num_key_value_heads})"
            )
        for name in ("train_steps", "max_rounds", "batch_size", "n_test", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        low, high = self.accuracy_band
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"accuracy_band must satisfy 0 <= low < high <= 1, got {self.accuracy_band}")

    @property
    def head_dim(self) -> int:
        """`int`: size of one attention head (`hidden_size / num_attention_heads`)."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def with_attention(cls, preset: str, **kwargs: Any) -> TinyModelConfig:
        """A config with the head layout `preset` of `ATTENTION_PRESETS` and `kwargs` for the other fields.

        Raises:
            ValueError: if `preset` is not a key of `ATTENTION_PRESETS`.

        >>> TinyModelConfig.with_attention("vllm_cpu").head_dim
        32
        """
        if preset not in ATTENTION_PRESETS:
            raise ValueError(f"unknown attention preset {preset!r}; valid names: {sorted(ATTENTION_PRESETS)}")
        return cls(**ATTENTION_PRESETS[preset], **kwargs)

    def config_hash(self, seed: int) -> str:
        """`str`: 16 hex digits of the SHA-256 of this config, ``seed`` and `BUILD_VERSION`."""
        payload = json.dumps(
            {"config": dataclasses.asdict(self), "seed": seed, "version": BUILD_VERSION}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Text formats


def render_chat(messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """Render messages exactly as `CHAT_TEMPLATE` does (used to build the corpus before a tokenizer exists).

    Args:
        messages (`Sequence[dict]`): ``{"role": ..., "content": ...}`` dicts.
        add_generation_prompt (`bool`, *optional*, defaults to `True`): append ``<|im_start|>assistant\\n``.

    Returns:
        `str`: the prompt text.
    """
    text = "".join(f"{IM_START_TOKEN}{m['role']}\n{m['content']}{EOS_TOKEN}\n" for m in messages)
    return text + f"{IM_START_TOKEN}assistant\n" if add_generation_prompt else text


def prompt_messages(problem: Problem) -> list[dict[str, str]]:
    """`list[dict]`: the ``prompt`` column of the synthetic parquet for ``problem``."""
    return [{"role": "user", "content": build_prompt_text(problem.question)}]


def sample_sft_examples(
    problems: Sequence[Problem], mix: dict[str, float], n: int, seed: int
) -> list[tuple[Problem, str]]:
    """Draw ``n`` (problem, procedure) pairs: a form uniformly, then a problem of that form uniformly, and a
    procedure at the ``mix`` rates.

    Args:
        problems (`Sequence[Problem]`): training problems (any forms).
        mix (`dict[str, float]`): procedure name -> share (sums to 1).
        n (`int`): number of pairs.
        seed (`int`): RNG seed.

    Returns:
        `list[tuple[Problem, str]]`: the pairs.
    """
    rng = random.Random(seed)
    by_form: dict[str, list[Problem]] = {}
    for problem in problems:
        by_form.setdefault(problem.form, []).append(problem)
    forms = sorted(by_form)
    names = sorted(mix)
    weights = [mix[name] for name in names]
    return [(rng.choice(by_form[rng.choice(forms)]), rng.choices(names, weights)[0]) for _ in range(n)]


_BOXED_INT = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")


def extract_boxed_int(text: str) -> int | None:
    """The integer in the last ``\\boxed{...}`` of a response.

    Args:
        text (`str`): decoded response.

    Returns:
        `int` or `None`: `None` means no boxed integer was found; the grader counts that response as wrong.

    >>> extract_boxed_int("7*3=21, 24+21=45. \\\\boxed{45}")
    45
    """
    matches = _BOXED_INT.findall(text)
    return int(matches[-1]) if matches else None


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer


def build_tokenizer(corpus: Sequence[str], vocab_size: int = 384):
    """Train a byte-level BPE tokenizer on ``corpus`` and wrap it for ``transformers``.

    The normalizer (NFC), pre-tokenizer and decoder are the ones Qwen2 uses (the split pattern is imported from
    ``transformers``), because transformers 5 rebuilds that pipeline around the saved vocabulary whenever the model
    config says ``qwen2``; building it the same way here makes ``AutoTokenizer.from_pretrained`` agree with the
    tokenizer trained here under transformers 4 and 5. The pattern spells numbers one digit per token.
    ``\\boxed{`` is added afterwards as one non-special token, so the answer digits start right after it. Every
    byte is in the vocabulary, so any text encodes without an unknown token.

    Args:
        corpus (`Sequence[str]`): training texts (chat-formatted examples).
        vocab_size (`int`, *optional*, defaults to `384`): upper bound on the vocabulary size; BPE stops earlier
            when no pair occurs twice.

    Returns:
        `transformers.PreTrainedTokenizerFast`: with eos `EOS_TOKEN`, pad `PAD_TOKEN`, no bos, `CHAT_TEMPLATE`, and
        left padding.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Merges are learned without the boxed marker, which becomes a whole token below.
    tok.train_from_iterator([text.replace(BOXED_TOKEN, " ") for text in corpus], trainer=trainer)
    tok.add_tokens([AddedToken(BOXED_TOKEN, normalized=False, special=False)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=2048,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tokenizer_corpus(problems: Sequence[Problem], n: int, seed: int) -> list[str]:
    """Chat-formatted texts (prompt + worked solution + eos) to learn BPE merges from.

    Args:
        problems (`Sequence[Problem]`): problems to draw from.
        n (`int`): number of texts.
        seed (`int`): RNG seed.

    Returns:
        `list[str]`: the texts; every procedure appears equally often.
    """
    uniform = {name: 1.0 / len(STEP_PROCEDURES) for name in STEP_PROCEDURES}
    pairs = sample_sft_examples(problems, uniform, n, seed)
    return [render_chat(prompt_messages(p)) + format_solution(p, proc) + EOS_TOKEN for p, proc in pairs]


# ----------------------------------------------------------------------------------------------------------------
# Model, training, evaluation


def make_model(config: TinyModelConfig, vocab_size: int, eos_token_id: int, pad_token_id: int):
    """A freshly initialized Qwen2 causal LM (call ``torch.manual_seed`` first for reproducible weights).

    Args:
        config (`TinyModelConfig`): sizes.
        vocab_size (`int`): tokenizer vocabulary size (``len(tokenizer)``).
        eos_token_id (`int`): id of `EOS_TOKEN`.
        pad_token_id (`int`): id of `PAD_TOKEN`.

    Returns:
        `transformers.Qwen2ForCausalLM`: in float32, using SDPA attention.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model_config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        attn_implementation="sdpa",
    )
    return Qwen2ForCausalLM(model_config)


def _encode_sft(tokenizer, pairs: Sequence[tuple[Problem, str]]) -> list[dict[str, list[int]]]:
    """Token ids with labels only on the response and the final eos (prompt positions are -100)."""
    features = []
    for problem, procedure in pairs:
        prompt_ids = tokenizer.encode(render_chat(prompt_messages(problem)), add_special_tokens=False)
        response_ids = tokenizer.encode(format_solution(problem, procedure) + EOS_TOKEN, add_special_tokens=False)
        features.append({"input_ids": prompt_ids + response_ids, "labels": [-100] * len(prompt_ids) + response_ids})
    return features


class _PadCollator:
    """Right-pads ``input_ids`` with the pad id and ``labels`` with -100; builds the attention mask."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)  # (B, T)
        labels = torch.full((len(features), width), -100, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(features), width), dtype=torch.long)  # (B, T)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def train_sft(
    model,
    tokenizer,
    pairs: Sequence[tuple[Problem, str]],
    config: TinyModelConfig,
    steps: int,
    seed: int,
    work_dir: str | Path,
) -> float:
    """Supervised warm start with ``transformers.Trainer`` (CPU, one pass over ``pairs``).

    Args:
        model (`transformers.PreTrainedModel`): trained in place.
        tokenizer (`transformers.PreTrainedTokenizerFast`): from `build_tokenizer`.
        pairs (`Sequence[tuple[Problem, str]]`): at least ``steps * config.batch_size`` (problem, procedure) pairs.
        config (`TinyModelConfig`): batch size and learning rate.
        steps (`int`): optimizer steps.
        seed (`int`): Trainer seed (data order).
        work_dir (`str` or `Path`): scratch folder for the Trainer (nothing is saved there).

    Returns:
        `float`: mean training loss over the run.
    """
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=config.batch_size,
        max_steps=steps,
        learning_rate=config.learning_rate,
        adam_beta2=config.adam_beta2,
        lr_scheduler_type="linear",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.0,
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=seed,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_encode_sft(tokenizer, pairs),
        data_collator=_PadCollator(tokenizer.pad_token_id),
    )
    result = trainer.train()
    return float(result.training_loss)


def sample_responses(
    model, tokenizer, problems: Sequence[Problem], max_new_tokens: int = 48, seed: int = 0, batch_size: int = 100
) -> list[str]:
    """Sample one response per problem at temperature 1.0 (no top-k/top-p), as verl's rollout does by default.

    Args:
        model (`transformers.PreTrainedModel`): the policy.
        tokenizer (`transformers.PreTrainedTokenizerFast`): its tokenizer (left padding).
        problems (`Sequence[Problem]`): the problems.
        max_new_tokens (`int`, *optional*, defaults to `48`): generation budget.
        seed (`int`, *optional*, defaults to `0`): ``torch.manual_seed`` before sampling.
        batch_size (`int`, *optional*, defaults to `100`): prompts per ``generate`` call.

    Returns:
        `list[str]`: decoded responses without special tokens, one per problem.
    """
    import torch

    torch.manual_seed(seed)
    model.eval()
    tokenizer.padding_side = "left"
    responses = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(prompt_messages(p), add_generation_prompt=True, tokenize=False)
            for p in chunk
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = out[:, enc["input_ids"].shape[1] :]  # (B, T)
        responses.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return responses


def grade_responses(problems: Sequence[Problem], responses: Sequence[str]) -> dict[str, float]:
    """Accuracy and error-mode rates of sampled responses.

    Args:
        problems (`Sequence[Problem]`): the problems.
        responses (`Sequence[str]`): one response per problem.

    Returns:
        `dict[str, float]`: ``accuracy``; ``mode/<name>`` for each faulty procedure (share of responses whose
        wrong answer that procedure reaches; one response can match several); ``wrong_unlabeled`` (wrong, no known
        procedure); ``no_answer`` (no boxed integer).
    """
    counts: Counter[str] = Counter()
    for problem, response in zip(problems, responses, strict=True):
        answer = extract_boxed_int(response)
        if answer is None:
            counts["no_answer"] += 1
        elif answer == problem.answer:
            counts["accuracy"] += 1
        else:
            modes = error_modes(problem, answer)
            counts.update(f"mode/{m}" for m in modes)
            if not modes:
                counts["wrong_unlabeled"] += 1
    keys = ["accuracy", *(f"mode/{m}" for m in FAULTY_PROCEDURES), "wrong_unlabeled", "no_answer"]
    return {k: counts[k] / max(1, len(problems)) for k in keys}


# ----------------------------------------------------------------------------------------------------------------
# Build


def _read_info(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / INFO_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _save_folder(folder: Path, model, tokenizer, info: dict[str, Any]) -> None:
    """Save weights, tokenizer and info; also write keys older transformers versions read."""
    model.config.use_cache = True  # the Trainer turns it off; generation (and verl's HF rollout) wants it on
    model.generation_config.bos_token_id = None
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    model_cfg_path = folder / "config.json"
    model_cfg = json.loads(model_cfg_path.read_text())
    model_cfg.setdefault("rope_theta", 10000.0)
    model_cfg_path.write_text(json.dumps(model_cfg, indent=2) + "\n")
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    # mkdtemp makes the folder private (0700) and some writers make files 0600; use the usual umask modes instead.
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def build_tiny_model(
    out_dir: str | os.PathLike = DEFAULT_TINY_DIR,
    seed: int = 0,
    config: TinyModelConfig | None = None,
    force: bool = False,
) -> Path:
    """Build (or reuse) the tiny warm-started policy folder.

    Args:
        out_dir (`str` or `os.PathLike`, *optional*, defaults to `DEFAULT_TINY_DIR`): the folder to write.
        seed (`int`, *optional*, defaults to `0`): seeds problems, tokenizer corpus, weights, data order, sampling.
        config (`TinyModelConfig`, *optional*): sizes and training settings; defaults to ``TinyModelConfig()``.
        force (`bool`, *optional*, defaults to `False`): rebuild even if the folder's config hash matches.

    Returns:
        `Path`: ``out_dir``, holding ``config.json``, ``model.safetensors``, tokenizer files,
        ``generation_config.json`` and `INFO_FILE`. The folder is replaced only once the new build is complete.

    Raises:
        ValueError: if ``out_dir`` exists but is neither empty nor a folder written by this function.
        RuntimeError: if the sampled accuracy is still outside ``config.accuracy_band`` after ``config.max_rounds``
            rounds (nothing is written then).
    """
    import torch

    config = config or TinyModelConfig()
    out_dir = Path(out_dir)
    config_hash = config.config_hash(seed)
    info = _read_info(out_dir)
    if not force and info is not None and info.get("config_hash") == config_hash:
        logger.info("reusing %s (config hash %s)", out_dir, config_hash)
        return out_dir
    if out_dir.exists() and info is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists and is not a tiny-model folder (no {INFO_FILE}); refusing to replace it")

    started = time.time()
    torch.set_num_threads(1)
    splits = split_problems(n_train=0, n_test=config.n_test, seed=seed)
    test_set = set(splits["test"])
    train_problems = [p for form in FORMS for p in all_problems(form) if p not in test_set]
    tokenizer = build_tokenizer(
        tokenizer_corpus(train_problems, config.tokenizer_corpus_size, seed), config.vocab_size
    )
    torch.manual_seed(seed)
    model = make_model(config, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("tokenizer vocab %d, model parameters %d", len(tokenizer), n_params)

    low, high = config.accuracy_band
    rounds, total_steps, losses, grades = 0, 0, [], {}
    with tempfile.TemporaryDirectory(prefix="meds_tiny_trainer_") as work_dir:
        while rounds < config.max_rounds:
            steps = config.train_steps if rounds == 0 else config.extra_steps
            pairs = sample_sft_examples(train_problems, config.mix, steps * config.batch_size, seed + 1000 * rounds)
            losses.append(train_sft(model, tokenizer, pairs, config, steps, seed + rounds, work_dir))
            rounds, total_steps = rounds + 1, total_steps + steps
            responses = sample_responses(model, tokenizer, splits["test"], config.max_new_tokens, seed)
            grades = grade_responses(splits["test"], responses)
            logger.info(
                "round %d: %d steps, loss %.3f, sampled accuracy %.3f",
                rounds,
                total_steps,
                losses[-1],
                grades["accuracy"],
            )
            if grades["accuracy"] >= low:
                break
    if not low <= grades["accuracy"] <= high:
        raise RuntimeError(
            f"sampled accuracy {grades['accuracy']:.3f} is outside the band {config.accuracy_band} after {rounds} "
            f"rounds ({total_steps} steps); change train_steps, learning_rate or mix"
        )

    info = {
        "config_hash": config_hash,
        "build_version": BUILD_VERSION,
        "seed": seed,
        "config": dataclasses.asdict(config),
        "mix": config.mix,
        "num_parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_rounds": rounds,
        "train_steps": total_steps,
        "train_loss_per_round": losses,
        "sampled_accuracy": grades["accuracy"],
        "sampled_grades": grades,
        "eval": {
            "n_problems": config.n_test,
            "temperature": 1.0,
            "top_k": None,
            "top_p": 1.0,
            "max_new_tokens": config.max_new_tokens,
            "test_split_seed": seed,
        },
        "build_seconds": round(time.time() - started, 1),
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build_", dir=out_dir.parent))
    try:
        _save_folder(staging, model, tokenizer, info)
        replace_folder(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "saved %s: accuracy %.3f, %d parameters, %.0f s", out_dir, grades["accuracy"], n_params, info["build_seconds"]
    )
    return out_dir


def resolve_model_path(model: str = "tiny", tiny_dir: str | os.PathLike = DEFAULT_TINY_DIR, seed: int = 0) -> str:
    """Model path for a run: ``"tiny"`` builds (or reuses) the tiny model; anything else is returned unchanged.

    Args:
        model (`str`, *optional*, defaults to `"tiny"`): ``"tiny"``, a hub id (``"Qwen/Qwen2.5-Math-1.5B"``) or a
            local folder. Hub ids and paths are passed through untouched, so the usual loading path is kept.
        tiny_dir (`str` or `os.PathLike`, *optional*, defaults to `DEFAULT_TINY_DIR`): where the tiny model lives.
        seed (`int`, *optional*, defaults to `0`): build seed for the tiny model.

    Returns:
        `str`: what to pass to ``from_pretrained`` (verl's ``actor_rollout_ref.model.path``).

    >>> resolve_model_path("Qwen/Qwen2.5-Math-1.5B")
    'Qwen/Qwen2.5-Math-1.5B'
    """
    if model == "tiny":
        return str(build_tiny_model(tiny_dir, seed=seed))
    return model


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description="Build the tiny warm-started policy for the synthetic task.")
    parser.add_argument("--out", default=str(DEFAULT_TINY_DIR), help="output model folder")
    parser.add_argument("--seed", type=int, default=0, help="build seed")
    parser.add_argument("--train-steps", type=int, default=TinyModelConfig.train_steps, help="first-round steps")
    parser.add_argument(
        "--attention",
        choices=sorted(ATTENTION_PRESETS),
        default="default",
        help="head layout (vllm_cpu: 2 heads of size 32, 1 key/value head, which vLLM's CPU attention runs)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the cached folder matches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    path = build_tiny_model(
        args.out,
        seed=args.seed,
        config=TinyModelConfig.with_attention(args.attention, train_steps=args.train_steps),
        force=args.force,
    )
    info = _read_info(path) or {}
    summary = (
        f"{path}: sampled accuracy {info.get('sampled_accuracy')}, {info.get('num_parameters')} parameters, "
        f"built in {info.get('build_seconds')} s"
    )
    print(summary)  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
