"""An HF-transformers rollout for verl 0.9 (registered as rollout `hf`), for CPU runs and tests.

verl 0.9 generates through rollout *servers* (vLLM, SGLang, TensorRT-LLM) that its agent loop calls token-in,
token-out. None of them runs on a CPU, so this module supplies a small server with the same calling convention,
backed by `transformers`' `generate`:

- `HFRolloutReplica` (verl `RolloutReplica`): starts one `HFRolloutServer` actor per replica.
- `HFRolloutServer`: holds a copy of the policy and answers `generate` requests; concurrent requests
  with equal sampling settings are gathered into one left-padded batch (`max_batch_size` sequences).
- `HFServerAdapter` (verl `BaseRollout`, lives in the actor worker): after each update, sends the
  actor's full weights to the server (verl's `naive` checkpoint engine path calls `update_weights`).

The server stamps every output with `extra_fields["global_steps"]`, which verl's trainer reads for staleness
metrics. This is a functional rollout for small models, not a fast one; GPU users keep vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

logger = logging.getLogger(__name__)

SERVER_NAME_PREFIX = "verl_meds_hf_rollout_server_"


def server_name(replica_rank: int) -> str:
    """Ray actor name of the rollout server of replica `replica_rank`."""
    return f"{SERVER_NAME_PREFIX}{replica_rank}"


@dataclass
class _Request:
    prompt_ids: list[int]
    max_new_tokens: int
    future: asyncio.Future = field(repr=False)


class HFRolloutServer:
    """Token-in, token-out generation with `transformers` (a Ray actor; one per rollout replica).

    Args:
        config: verl `RolloutConfig` (reads `response_length`, `prompt_length`, `max_num_seqs`, `seed`).
        model_config: verl's model config (reads `path` and `tokenizer_path`).
        replica_rank (`int`): rank of the replica this server belongs to.
    """

    def __init__(self, config: Any, model_config: Any, replica_rank: int = 0) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        self.config = config
        self.replica_rank = replica_rank
        from verl.utils.fs import copy_to_local

        # verl hands replicas the model section of its config (a DictConfig here, HFModelConfig elsewhere).
        path = copy_to_local(model_config.get("path") if hasattr(model_config, "get") else model_config.path)
        tokenizer_path = (model_config.get("tokenizer_path") if hasattr(model_config, "get") else None) or path
        self.tokenizer = AutoTokenizer.from_pretrained(copy_to_local(tokenizer_path))
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
        self.model.eval()
        self.eos_token_id = self.tokenizer.eos_token_id
        self.pad_token_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_token_id
        )
        self.max_batch_size = max(1, int(getattr(config, "max_num_seqs", 64) or 64))
        self.global_steps: int | None = None
        self.generator = torch.Generator().manual_seed(int(getattr(config, "seed", 0) or 0) + replica_rank)
        self._queues: dict[tuple, list[_Request]] = {}
        self._worker: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None

    # ---------------------------------------------------------------- generation
    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: Any = None,
        video_data: Any = None,
        **kwargs: Any,
    ) -> TokenOutput:
        """Sample one completion for `prompt_ids`; returns its token ids (eos included when produced)."""
        if image_data is not None or video_data is not None:
            raise ValueError("the hf rollout serves text-only models; got image or video data")
        params = dict(sampling_params)
        budget = self.config.prompt_length + self.config.response_length - len(prompt_ids)
        max_new_tokens = int(params.pop("max_tokens", params.pop("max_new_tokens", self.config.response_length)))
        max_new_tokens = max(1, min(max_new_tokens, self.config.response_length, max(budget, 1)))
        key = (
            float(params.get("temperature", 1.0)),
            float(params.get("top_p", 1.0)),
            int(params.get("top_k", -1)),
            float(params.get("repetition_penalty", 1.0)),
            bool(params.get("logprobs", False)),
        )
        loop = asyncio.get_running_loop()
        request = _Request(list(map(int, prompt_ids)), max_new_tokens, loop.create_future())
        self._queues.setdefault(key, []).append(request)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        token_ids, log_probs = await request.future
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def _drain(self) -> None:
        # Let concurrently submitted requests arrive, then serve the queues batch by batch.
        await asyncio.sleep(0.01)
        while any(self._queues.values()):
            key = next(k for k, q in self._queues.items() if q)
            queue = self._queues[key]
            batch, self._queues[key] = queue[: self.max_batch_size], queue[self.max_batch_size :]
            try:
                results = await asyncio.to_thread(self._generate_batch, batch, key)
            except Exception as exc:  # hand the error to every waiting caller instead of hanging them
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(exc)
                continue
            for req, result in zip(batch, results, strict=True):
                if not req.future.done():
                    req.future.set_result(result)
            await asyncio.sleep(0)

    @torch.no_grad()
    def _generate_batch(self, batch: list[_Request], key: tuple) -> list[tuple[list[int], list[float] | None]]:
        temperature, top_p, top_k, repetition_penalty, want_logprobs = key
        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)  # (n, S) left-padded
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, req in enumerate(batch):
            input_ids[i, width - len(req.prompt_ids) :] = torch.tensor(req.prompt_ids)
            attention_mask[i, width - len(req.prompt_ids) :] = 1
        do_sample = temperature > 0
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": max(r.max_new_tokens for r in batch),
            "do_sample": do_sample,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "return_dict_in_generate": True,
            "output_scores": want_logprobs,
        }
        if do_sample:
            gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k if top_k > 0 else 0)
        if repetition_penalty != 1.0:
            gen_kwargs["repetition_penalty"] = repetition_penalty
        # transformers samples with the global torch RNG; keep this server's stream separate and reproducible.
        state = torch.get_rng_state()
        torch.set_rng_state(self.generator.get_state())
        try:
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
        finally:
            self.generator.set_state(torch.get_rng_state())
            torch.set_rng_state(state)
        new_tokens = out.sequences[:, width:]  # (n, T_new)
        logprobs = None
        if want_logprobs:
            steps = torch.stack(out.scores, dim=1).float()  # (n, T_new, V) processed scores
            logprobs = torch.log_softmax(steps, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        results = []
        for i, req in enumerate(batch):
            ids = new_tokens[i].tolist()[: req.max_new_tokens]
            if self.eos_token_id in ids:
                ids = ids[: ids.index(self.eos_token_id) + 1]
            lp = logprobs[i, : len(ids)].tolist() if logprobs is not None else None
            results.append((ids, lp))
        return results

    # ---------------------------------------------------------------- weights and lifecycle
    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> None:
        """Load the actor's weights (full tensors, HF parameter names).

        Raises:
            RuntimeError: when the names do not match the model's; checked before any weight is changed.
        """
        expected = set(self.model.state_dict())
        tied = {"lm_head.weight"} if getattr(self.model.config, "tie_word_embeddings", False) else set()
        missing = sorted(expected - set(state_dict) - tied)
        unexpected = sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise RuntimeError(f"hf rollout weight update mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
        self.model.load_state_dict(state_dict, strict=False)
        if global_steps is not None:
            self.global_steps = global_steps

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def wake_up(self) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def wait_for_requests_to_drain(self) -> None:
        while self._worker is not None and not self._worker.done():
            await asyncio.sleep(0.01)

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        return {"aborted": 0}

    async def resume_generation(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def start_profile(self, **kwargs: Any) -> None:
        return None

    async def stop_profile(self) -> None:
        return None


class HFRolloutReplica(RolloutReplica):
    """verl rollout replica that runs one `HFRolloutServer` (registered as rollout `hf`)."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self) -> None:
        # A server left by an earlier run in the same Ray cluster would hold the name: end it first.
        try:
            stale = ray.get_actor(server_name(self.replica_rank))
        except ValueError:
            stale = None
        if stale is not None:
            ray.kill(stale)
            for _ in range(200):
                try:
                    ray.get_actor(server_name(self.replica_rank))
                except ValueError:
                    break
                await asyncio.sleep(0.05)
        server = (
            ray.remote(HFRolloutServer)
            .options(name=server_name(self.replica_rank), num_cpus=0, max_concurrency=self.max_concurrency)
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        )
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"ray-actor://{server_name(self.replica_rank)}"


class HFServerAdapter(BaseRollout):
    """Actor-side half of the `hf` rollout: pushes updated weights to this replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1) -> None:
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", 0))
        world = self.config.tensor_model_parallel_size * self.config.data_parallel_size
        world *= self.config.pipeline_model_parallel_size
        self.replica_rank = replica_rank if replica_rank >= 0 else rank // world
        self.is_leader = rank % world == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None

    async def update_weights(self, weights, peft_config=None, base_sync_done=True, global_steps=None, **kwargs):
        """Gather the full parameters (HF names) and send them to the server (leader rank only)."""
        state = {}
        for name, tensor in weights:
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            if self.is_leader:
                state[name] = tensor.detach().to("cpu", dtype=torch.float32).clone()
        if self.is_leader:
            await self._server_handle().update_weights.remote(state, global_steps)

    def generate_sequences(self, prompts):
        raise NotImplementedError("the hf rollout serves the agent loop through HFRolloutServer.generate")
