r"""Grading benchmark: time per graded response, bounded vs in-thread, and verl's reward-loop rate.

Responses are built from the gold answers of the shared benchmarks (MATH500, AIME24, AMC23, OlympiadBench, Minerva):
for each gold, one response boxing the gold itself and one boxing a different answer (the gold with a digit
changed, or `+1`), plus an adversarial set (power towers, huge factorials, answers with a tail the parser drops,
distinct exact numbers of huge magnitude). Printed, side by side in one run:

1. per graded response: median, 99th percentile and worst time of `verl_meds.grading.grade` (worker processes, 5 s
   bound) and of the same rules in the calling thread (`grade_text`, no bound; the adversarial set is not run
   there, since it does not return);
2. responses per second through verl's own `NaiveRewardManager.run_single` (asyncio + executor threads, as verl's
   reward loop calls it), with `compute_score` bounded and unbounded, and their ratio.

Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_grading.py [--data ../shared/data] [--limit N]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    ("math500/test.jsonl", "answer"),
    ("aime24/test.jsonl", "answer"),
    ("amc23/test.jsonl", "answer"),
    ("olympiadbench/test.jsonl", "final_answer"),
    ("minerva_math/test_with_answer.jsonl", "answer"),
]
ADVERSARIAL = [
    r"10^{10^{10}}",
    r"9^{9^{9^{9}}}",
    r"(10^{8})!",
    r"2^{2^{2^{2^{2^{2}}}}}",
    r"0.\overline{3}",
    r"\frac{1}{2^{80}}",
    r"\frac{1}{2^{81}}",
    r"3\overline{AB}",
    r"\foo 3",
    r"5\hat{x}",
    r"10^{20}+1",
    r"2^{-300}",
]


def load_golds(data: Path, limit: int | None) -> list[str]:
    golds = []
    for path, field in SOURCES:
        for line in (data / path).read_text(encoding="utf-8").splitlines():
            value = json.loads(line)[field]
            value = value[0] if isinstance(value, list) else value
            golds.append(str(value).strip())
    return golds[:limit] if limit else golds


def wrong_answer(gold: str, rng: random.Random) -> str:
    digits = [m.start() for m in re.finditer(r"\d", gold)]
    if digits:
        i = rng.choice(digits)
        return gold[:i] + str((int(gold[i]) + 1) % 10) + gold[i + 1 :]
    return gold + "+1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_each(fn, pairs) -> list[float]:
    seconds = []
    for pred, gold in pairs:
        start = time.perf_counter()
        fn(pred, gold)
        seconds.append(time.perf_counter() - start)
    return seconds


def reward_loop_rate(compute_score, items, concurrency: int) -> float:
    """Responses per second through verl's NaiveRewardManager.run_single, `concurrency` at a time."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    inner = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    inner.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=inner)
    manager = NaiveRewardManager(OmegaConf.create({}), tokenizer, compute_score)
    batches = []
    for text, gold in items:
        ids = tokenizer.encode(text, add_special_tokens=False)
        batches.append(
            DataProto.from_dict(
                tensors={
                    "responses": torch.tensor([ids]),
                    "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                },
                non_tensors={
                    "data_source": np.array(["bench"], dtype=object),
                    "reward_model": np.array([{"ground_truth": gold}], dtype=object),
                    "extra_info": np.array([{}], dtype=object),
                },
            )
        )

    async def run() -> None:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(batch):
            async with semaphore:
                return await manager.run_single(batch)

        await asyncio.gather(*(one(batch) for batch in batches))

    start = time.perf_counter()
    manager.loop.run_until_complete(run())
    return len(batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--limit", type=int, default=None, help="first N gold answers only")
    parser.add_argument("--concurrency", type=int, default=64, help="reward-loop tasks in flight")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the reward-loop rates")
    args = parser.parse_args()

    from verl_meds.grading import default_pool, grade, grade_text
    from verl_meds.verl import reward

    rng = random.Random(0)
    golds = load_golds(Path(args.data), args.limit)
    ordinary = [(g, g) for g in golds] + [(wrong_answer(g, rng), g) for g in golds]
    adversarial = [(a, "3") for a in ADVERSARIAL]
    print(f"{len(ordinary)} ordinary responses ({len(golds)} golds, right + wrong), {len(adversarial)} adversarial")

    grade("1", "1")  # start the workers outside the timed part
    default_pool().run("grade", [("1", "1")] * 8)

    def unbounded_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        from verl_meds.answer import extract_boxed

        pred = extract_boxed(solution_str or "")
        correct = pred is not None and grade_text(pred, str(ground_truth))
        return {"score": 1.0 if correct else -1.0, "acc": float(correct)}

    # Rates first (before the adversarial set restarts workers), alternating, over `--rounds` rounds: sympy's and
    # math-verify's caches warm up in the first round, so the last round's rates are compared.
    items = [(rf"The answer is \boxed{{{pred}}}.", gold) for pred, gold in ordinary]
    rates: dict[str, list[float]] = {"bounded": [], "unbounded": []}
    for _ in range(args.rounds):
        rates["unbounded"].append(reward_loop_rate(unbounded_score, items, args.concurrency))
        rates["bounded"].append(reward_loop_rate(reward.compute_score, items, args.concurrency))

    bounded = time_each(lambda p, g: grade(p, g), ordinary)
    unbounded = time_each(grade_text, ordinary)
    hostile = time_each(lambda p, g: grade(p, g), adversarial)
    rows = [
        ("bounded (workers, 5 s)", bounded),
        ("in-thread, no bound", unbounded),
        ("bounded, adversarial set", hostile),
    ]
    print(f"{'per graded response':<28} {'median ms':>10} {'p99 ms':>10} {'worst ms':>10}")
    for name, seconds in rows:
        print(
            f"{name:<28} {1e3 * statistics.median(seconds):>10.2f} {1e3 * percentile(seconds, 0.99):>10.2f} "
            f"{1e3 * max(seconds):>10.1f}"
        )
    print("in-thread, adversarial set: not run (does not return)")
    print(f"verl NaiveRewardManager.run_single, {len(items)} responses, {args.concurrency} in flight, responses/s:")
    for name, values in rates.items():
        print(f"  {name:<10} " + "  ".join(f"round {i + 1}: {v:7.1f}" for i, v in enumerate(values)))
    ratio = rates["bounded"][-1] / rates["unbounded"][-1]
    print(f"  bounded / unbounded rate (last round): {ratio:.3f}")


if __name__ == "__main__":
    main()
