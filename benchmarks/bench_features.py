"""Cost of MEDS feature capture during the log-prob recompute, against no capture and the authors' projection.

Usage (default: the tiny model and the wide config, about 2-3 minutes on one CPU thread):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_features.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_features.py --configs wide --batch 16 --seq 512   # bigger

Models are random-init Qwen2 decoders built from a config (no download):

- `tiny`: the CPU recipe's model shape (8 layers, D = 64, 4 heads, 2 kv heads, MLP 192, vocab 384, untied);
- `wide`: a Qwen3-0.6B-like shape (28 layers, D = 1024, 16 heads, 8 kv heads, MLP 3072, vocab 151,936, tied),
  float32 (`--dtype bfloat16` halves the weights; CPU bf16 matmuls are usually slower).

The timed forward is what verl's actor does in `compute_log_prob` on a padded micro-batch: the model's forward, then
log-probabilities of the next tokens (log-softmax + gather) and the entropy over the full vocabulary. Three variants
run interleaved (A B C, then B C A, C A B, ...) and the median of `--repeats` is reported per variant:

- **plain**: no capture (DAPO's forward);
- **capture**: the same forward inside `verl_meds.features.LogitLensCapture` (the product path: hooks keep the
  `(n, D)` rows at the answer positions of the selected layers and read only the answer tokens' LM-head rows);
- **full-vocab**: the authors' way: the forward with `output_hidden_states=True`, then for every selected layer the
  hidden states at the answer positions projected onto the whole vocabulary (`lm_head`), of which one logit per row
  is kept. Only the answer positions are projected here (the cheapest reading of their code).

Each round runs the three variants back to back (their order rotates from round to round, so each variant takes
each place equally often); the ratios are the median over rounds of the per-round ratios, which cancels slow drifts
of a shared machine. Both the CPU time of this process
(`time.process_time`, which other processes on the same cores hardly change; the headline figure) and the wall time
are measured; the minimum over rounds (the least disturbed forward) and its ratios are printed too. The CPU time
spent inside the capture's own hooks is also measured directly ("hooks"): it is the part of the overhead that does
not depend on how noisy the machine is.

Selected layers: the paper's default, the last half (5..8 of 8, 15..28 of 28). The capture's features are checked
against the full-vocab values. Printed: seconds per forward and the ratios capture / plain (the overhead,
target <= 1.03), full-vocab / plain and full-vocab / capture.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from verl_meds.config import FeatureConfig
from verl_meds.features import LogitLensCapture, find_final_norm

CONFIGS = {
    "tiny": {
        "num_hidden_layers": 8,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 192,
        "vocab_size": 384,
        "tie_word_embeddings": False,
        "batch": 16,
        "seq": 128,
    },
    "wide": {
        "num_hidden_layers": 28,
        "hidden_size": 1024,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "intermediate_size": 3072,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "batch": 4,
        "seq": 96,
    },
}


def build_model(name: str, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2Config

    shape = {k: v for k, v in CONFIGS[name].items() if k not in ("batch", "seq")}
    config = Qwen2Config(**shape, max_position_embeddings=4096, attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def make_batch(vocab: int, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """Token ids (B, S), one answer position per row in the second half (the response), flattened for the hooks."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=generator)  # (B, S)
    pred_pos = torch.randint(seq // 2, seq - 1, (batch,), generator=generator)  # (B,) position predicting the answer
    rows = torch.arange(batch)
    return {
        "input_ids": input_ids,
        "pred_pos": pred_pos,
        "flat_positions": rows * seq + pred_pos,  # (B,) into (B*S, D)
        "answer_tokens": input_ids[rows, pred_pos + 1],  # (B,)
    }


def log_probs_and_entropy(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's per-token log-probabilities of the next tokens and the entropy, from (B, S, V) logits."""
    logits = logits[:, :-1].float()  # (B, S - 1, V)
    log_probs = torch.log_softmax(logits, dim=-1)
    token_log_probs = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, S - 1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)  # (B, S - 1)
    return token_log_probs, entropy


@torch.no_grad()
def plain(model, batch, layers) -> None:
    logits = model(input_ids=batch["input_ids"], use_cache=False).logits
    log_probs_and_entropy(logits, batch["input_ids"])


class TimedCapture(LogitLensCapture):
    """`LogitLensCapture` that adds the CPU time spent in its hooks to `TimedCapture.seconds`."""

    seconds = 0.0

    def _layer_hook(self, layer: int):
        inner = super()._layer_hook(layer)

        def hook(*args):
            start = time.process_time()
            inner(*args)
            TimedCapture.seconds += time.process_time() - start

        return hook

    def _head_pre_hook(self, *args) -> None:
        start = time.process_time()
        super()._head_pre_hook(*args)
        TimedCapture.seconds += time.process_time() - start


@torch.no_grad()
def capture(model, batch, layers) -> torch.Tensor:
    with TimedCapture(model, layers, True, batch["flat_positions"], batch["answer_tokens"]) as lens:
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
        log_probs_and_entropy(logits, batch["input_ids"])
    return lens.features


@torch.no_grad()
def full_vocab(model, batch, layers) -> torch.Tensor:
    out = model(input_ids=batch["input_ids"], use_cache=False, output_hidden_states=True)
    log_probs_and_entropy(out.logits, batch["input_ids"])
    rows = torch.arange(batch["input_ids"].shape[0])
    norm, head = find_final_norm(model), model.get_output_embeddings()
    num_layers = len(out.hidden_states) - 1
    columns = []
    for layer in layers:
        hidden = out.hidden_states[layer][rows, batch["pred_pos"]]  # (B, D)
        if layer < num_layers:
            hidden = norm(hidden)
        vocab_logits = head(hidden)  # (B, V): the whole vocabulary, for one logit per row
        columns.append(vocab_logits.float().gather(-1, batch["answer_tokens"][:, None]).squeeze(-1))
    return torch.stack(columns, dim=-1)  # (B, F)


VARIANTS = {"plain": plain, "capture": capture, "full-vocab": full_vocab}


def bench(name: str, args: argparse.Namespace) -> dict:
    dtype = getattr(torch, args.dtype)
    shape = CONFIGS[name]
    batch_size, seq = args.batch or shape["batch"], args.seq or shape["seq"]
    start = time.perf_counter()
    model = build_model(name, dtype, args.seed)
    build_seconds = time.perf_counter() - start
    layers = FeatureConfig().resolve_layers(shape["num_hidden_layers"])
    batch = make_batch(shape["vocab_size"], batch_size, seq, args.seed)
    captured, reference = capture(model, batch, layers), full_vocab(model, batch, layers)  # warm-up + check
    max_gap = float((captured - reference).abs().max())
    plain(model, batch, layers)
    clocks = {"cpu": time.process_time, "wall": time.perf_counter}
    times = {clock: {variant: [] for variant in VARIANTS} for clock in clocks}  # clock -> variant -> seconds
    order = list(VARIANTS)
    TimedCapture.seconds = 0.0
    for repeat in range(args.repeats):
        for variant in order[repeat % 3 :] + order[: repeat % 3]:
            cpu, wall = time.process_time(), time.perf_counter()
            VARIANTS[variant](model, batch, layers)
            times["cpu"][variant].append(time.process_time() - cpu)
            times["wall"][variant].append(time.perf_counter() - wall)
    medians = {clock: {v: statistics.median(x) for v, x in per.items()} for clock, per in times.items()}
    paired = {
        clock: {
            f"{a} / {b}": statistics.median(x / y for x, y in zip(per[a], per[b], strict=True))
            for a, b in (("capture", "plain"), ("full-vocab", "plain"), ("full-vocab", "capture"))
        }
        for clock, per in times.items()
    }
    params = sum(p.numel() for p in model.parameters())
    del model
    return {
        "name": name,
        "params": params,
        "batch": batch_size,
        "seq": seq,
        "layers": layers,
        "medians": medians,
        "max_gap": max_gap,
        "build_seconds": build_seconds,
        "times": times,
        "paired": paired,
        "hook_seconds": TimedCapture.seconds / args.repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,wide", help="comma-separated: tiny, wide")
    parser.add_argument("--batch", type=int, default=None, help="sequences per forward (default per config)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default per config)")
    parser.add_argument("--repeats", type=int, default=None, help="timed forwards per variant (tiny 41, wide 7)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {torch.get_num_threads()}, "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; torch {torch.__version__}, dtype {args.dtype}"
    )
    results = []
    for name in args.configs.split(","):
        run_args = argparse.Namespace(**vars(args))
        run_args.repeats = args.repeats or (41 if name == "tiny" else 7)
        result = bench(name, run_args)
        results.append(result)
        m = result["medians"]
        print(
            f"\n[{name}] {result['params'] / 1e6:.1f}M parameters (built in {result['build_seconds']:.0f} s), batch "
            f"{result['batch']} x {result['seq']} tokens, layers {result['layers'][0]}..{result['layers'][-1]} "
            f"({len(result['layers'])}), {run_args.repeats} repeats; capture vs full-vocab max |diff| "
            f"{result['max_gap']:.2e}"
        )
        for clock in ("cpu", "wall"):
            low = {variant: min(values) for variant, values in result["times"][clock].items()}
            print(f"  {clock} time per forward:")
            for variant, seconds in m[clock].items():
                spread = result["times"][clock][variant]
                print(
                    f"    {variant:<11} median {seconds * 1e3:9.2f} ms   min {low[variant] * 1e3:9.2f} ms   "
                    f"max {max(spread) * 1e3:9.2f} ms"
                )
            for pair, ratio in result["paired"][clock].items():
                a, b = pair.split(" / ")
                minima = low[a] / low[b]
                print(f"    {pair:<22} = {ratio:.3f}  (median of per-round ratios; ratio of minima {minima:.3f})")
        hooks = result["hook_seconds"]
        print(
            f"  capture hooks' own CPU time: {hooks * 1e3:.2f} ms per forward = "
            f"{hooks / m['cpu']['plain']:.2%} of the plain forward"
        )
    print(f"\nload average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
