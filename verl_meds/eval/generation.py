"""Sampling backends for evaluation: Hugging Face `generate` (CPU or GPU) and vLLM (GPU, when installed).

Both take chat prompts and return one [`Completion`] per prompt; a problem that needs n samples is passed n times.
Sampling is plain: temperature (1.0 in the paper), top-p (1.0), no top-k, no repetition penalty, stop at the
tokenizer's eos, at most `max_new_tokens` tokens.

Deviation from the issue text: generation does not go through verl's rollout workers. Evaluation needs no Ray,
no actor and no weight sync, so vLLM is driven directly with the same sampling parameters verl's rollout would pass.

Seeding: vLLM gets one seed per sample, so every sample is reproducible on its own. HF `generate` draws a whole
batch from one `torch` generator, seeded with the batch's first seed; a full run is reproducible for a fixed batch
size, but a resumed run samples the remaining work in different batches than an uninterrupted one would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from verl_meds.answer import locate_answer_token
from verl_meds.config import FeatureConfig

logger = logging.getLogger(__name__)

Backend = Literal["auto", "hf", "vllm"]
BACKENDS: tuple[str, ...] = ("auto", "hf", "vllm")
Messages = Sequence[dict[str, str]]


@dataclass
class Completion:
    """One sampled response.

    text (`str`): decoded response, special tokens removed.
    num_tokens (`int`): response length in tokens (the eos included when it was produced).
    truncated (`bool`): the response hit `max_new_tokens` before an eos.
    features (`list[float]` or `None`): logit-lens features at the answer token (F floats, see
        `verl_meds.features`) when requested and an answer token exists; `None` otherwise.
    """

    text: str
    num_tokens: int
    truncated: bool
    features: list[float] | None = None


class Generator(Protocol):
    """Anything that samples one response per chat prompt."""

    def generate(self, messages: Sequence[Messages], seeds: Sequence[int]) -> list[Completion]:
        """One [`Completion`] per prompt; `seeds[i]` is the seed of sample i (see the module docstring)."""
        ...


def render_prompt(tokenizer, messages: Messages) -> str:
    """The prompt text: the tokenizer's chat template with a generation prompt, or the user messages joined by
    blank lines when the tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
    logger.debug("tokenizer has no chat template; using the raw user messages")
    return "\n\n".join(m["content"] for m in messages if m.get("role") == "user")


class HFGenerator:
    """
    Batched sampling with `transformers` `generate` (left padding, KV cache).

    Args:
        model_path (`str`):
            Hugging Face model folder or hub id.
        max_new_tokens (`int`):
            Response budget in tokens.
        temperature (`float`, *optional*, defaults to `1.0`):
            Sampling temperature; 0 means greedy decoding.
        top_p (`float`, *optional*, defaults to `1.0`):
            Nucleus sampling mass.
        device (`str`, *optional*, defaults to `"cpu"`):
            Torch device.
        dtype (`str`, *optional*, defaults to `"auto"`):
            `"auto"` (float32 on CPU, the checkpoint's dtype elsewhere), `"float32"`, `"bfloat16"` or `"float16"`.
        feature_config (`FeatureConfig`, *optional*):
            When given, each completion also carries its logit-lens features at the answer token, from one extra
            forward pass per `feature_batch_size` responses (the MEDS training features, for `verl_meds.analysis`).
        feature_batch_size (`int`, *optional*, defaults to `4`):
            Responses per feature forward pass (that pass materialises `(rows, S, V)` logits).
    """

    def __init__(
        self,
        model_path: str,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        device: str = "cpu",
        dtype: str = "auto",
        feature_config: FeatureConfig | None = None,
        feature_batch_size: int = 4,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.device = torch.device(device)
        self.feature_config = feature_config
        self.feature_batch_size = max(1, int(feature_batch_size))
        if dtype == "auto":
            torch_dtype = torch.float32 if self.device.type == "cpu" else "auto"
        else:
            torch_dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else self.tokenizer.eos_token_id
        self.eos_token_ids = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    def generate(self, messages: Sequence[Messages], seeds: Sequence[int]) -> list[Completion]:
        """Sample one response per prompt in a single `generate` call (seeded with `seeds[0]`)."""
        import torch

        if not messages:
            return []
        prompts = [render_prompt(self.tokenizer, m) for m in messages]
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = {"do_sample": False}
        if self.temperature > 0:
            sampling = {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        torch.manual_seed(int(seeds[0]))
        with torch.no_grad():
            output = self.model.generate(
                **encoded,
                **sampling,
                max_new_tokens=self.max_new_tokens,
                repetition_penalty=1.0,
                eos_token_id=sorted(self.eos_token_ids),
                pad_token_id=self.tokenizer.pad_token_id,
            )  # (B, P + T)
        prompt_len = encoded["input_ids"].shape[1]
        responses = output[:, prompt_len:].cpu()  # (B, T)
        completions, lengths = [], []
        for row in responses.tolist():
            end = next((t for t, tok in enumerate(row) if tok in self.eos_token_ids), None)
            length = len(row) if end is None else end + 1
            content = row if end is None else row[:end]  # generate pads only after an eos
            text = self.tokenizer.decode(content, skip_special_tokens=True)
            completions.append(Completion(text=text, num_tokens=length, truncated=end is None))
            lengths.append(length)
        if self.feature_config is not None:
            self._add_features(completions, output, encoded["attention_mask"], prompt_len, lengths)
        return completions

    def _add_features(
        self, completions: list[Completion], output, prompt_mask, prompt_len: int, lengths: list[int]
    ) -> None:
        """Fill `Completion.features` by one forward pass per `feature_batch_size` rows (see `verl_meds.features`)."""
        import torch

        from verl_meds.features import LogitLensCapture, finalize_features

        layers = self.feature_config.resolve_layers(self.model.config.num_hidden_layers)
        for start in range(0, len(completions), self.feature_batch_size):
            rows = list(range(start, min(start + self.feature_batch_size, len(completions))))
            width = prompt_len + max(lengths[r] for r in rows)
            ids = output[rows, :width]  # (b, S)
            mask = torch.zeros_like(ids)  # (b, S)
            mask[:, :prompt_len] = prompt_mask[rows]
            answer_rows, flat, tokens = [], [], []
            for b, r in enumerate(rows):
                mask[b, prompt_len : prompt_len + lengths[r]] = 1
                position = locate_answer_token(ids[b, prompt_len : prompt_len + lengths[r]].tolist(), self.tokenizer)
                if position >= 0:
                    answer_rows.append(r)
                    flat.append(b * width + prompt_len + position - 1)  # the position predicting the answer token
                    tokens.append(int(ids[b, prompt_len + position]))
            if not answer_rows:
                continue
            positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)  # (b, S): as generate numbers left-padded rows
            capture = LogitLensCapture(
                self.model,
                layers,
                self.feature_config.final_norm,
                torch.tensor(flat, dtype=torch.long),
                torch.tensor(tokens, dtype=torch.long),
            )
            with torch.no_grad(), capture:
                self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            features = finalize_features(capture.features, self.feature_config.diff)  # (n, F)
            for r, values in zip(answer_rows, features.tolist(), strict=True):
                completions[r].features = [float(v) for v in values]


class VLLMGenerator:
    """
    Sampling with vLLM (one engine, one seed per sample). Needs `vllm` (extra `verl_meds[vllm]`) and a GPU.

    Args:
        model_path (`str`): Hugging Face model folder or hub id.
        max_new_tokens (`int`): response budget in tokens.
        temperature (`float`, *optional*, defaults to `1.0`): sampling temperature.
        top_p (`float`, *optional*, defaults to `1.0`): nucleus sampling mass.
        dtype (`str`, *optional*, defaults to `"auto"`): vLLM `dtype`.
        seed (`int`, *optional*, defaults to `0`): engine seed.
        tensor_parallel_size (`int`, *optional*, defaults to `1`): GPUs per engine.
        gpu_memory_utilization (`float`, *optional*, defaults to `0.85`): vLLM memory share.
    """

    def __init__(
        self,
        model_path: str,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        dtype: str = "auto",
        seed: int = 0,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
    ) -> None:
        from vllm import LLM

        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, messages: Sequence[Messages], seeds: Sequence[int]) -> list[Completion]:
        """Sample one response per prompt; `seeds[i]` seeds sample i."""
        from vllm import SamplingParams

        prompts = [render_prompt(self.tokenizer, m) for m in messages]
        params = [
            SamplingParams(
                n=1,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=-1,
                max_tokens=self.max_new_tokens,
                seed=int(seed),
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        completions = []
        for request in outputs:
            sample = request.outputs[0]
            completions.append(
                Completion(
                    text=sample.text, num_tokens=len(sample.token_ids), truncated=sample.finish_reason == "length"
                )
            )
        return completions


def vllm_available() -> bool:
    """Whether `vllm` can be imported and a CUDA device is visible."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def resolve_backend(backend: Backend, want_features: bool = False) -> str:
    """
    The backend to use: `"auto"` picks vLLM when it is available and features are not requested, else HF.

    Raises:
        ValueError: for an unknown backend, or vLLM together with features (only the HF path computes them).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "vllm" if (not want_features and vllm_available()) else "hf"
    if backend == "vllm" and want_features:
        raise ValueError("features are computed only by the 'hf' backend; drop --save-features or use --backend hf")
    return backend
