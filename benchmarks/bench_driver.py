r"""Driver-side MEDS work per step at the paper's shape: 512 prompts x 16 rollouts x 3,072 response tokens.

What the trainer runs on the driver each step, timed here outside verl on the same inputs:

1. **answer location** (`verl_meds.answer.locate_answer_tokens`, `meds_prepare`): `verl_meds.answer` vs the same
   function at commit `ea8f0ad` (without the suffix-window search), loaded from git side by side; that version is
   timed on a subset (`--compare`, it takes seconds per hundred responses) and reported per response and
   extrapolated per step. Then what the recipes run: `verl_meds.step.answer_record` per response (done in verl's
   reward workers, `verl_meds.verl.reward_manager`, off the driver) and `read_answer_records` on the driver;
2. **answer keys** (for `meds_answer` / `explore_*`): `ea8f0ad`'s `answer_key` (math-verify and sympy in the
   driver thread) vs `verl_meds.grading.answer_keys` in the driver (integer, decimal and fraction answers
   keyed in the driver, the rest in the grading workers), each from a cold cache and after decoding every response,
   vs the recipes' setting, where the reward workers key each answer as they grade it and the driver only reads the
   keys (`verl_meds.verl.explore.batch_answer_keys`);
3. **memory and shaping** (`MEDSStep.penalties` + `MEDSStep.shape` + `grpo_advantages`) on random features with
   F = 14, 60 % wrong, after `--warm-epochs` epochs of history.

The TransferQueue reads and writes of `meds_prepare` / `meds_features` / `meds_shaping` are not included (they
need a running verl); `bench_step.py` times them inside real runs.

Responses are built from the shared training solutions (GSM8K, MATH) with a byte-level BPE tokenizer trained here
on the shared data (target vocabulary 151,643 as Qwen2's; the size reached is printed), cut to exactly 3,072
tokens: 50 % end with the box, 25 % have their last box about 1,500 tokens before the end, 25 % have no box. Each
prompt's 16 rollouts draw from 4 answers (its gold and 3 wrong ones, in varied spellings).

Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_driver.py [--prompts 512] [--compare 256]`
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OLD_COMMIT = "ea8f0ad"
VOCAB = 151_643
T = 3072


def tokenizer(cache: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = cache / "tokenizer.json"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        inner = Tokenizer(models.BPE())
        inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        inner.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        inner.train_from_iterator(corpus(synthetic_words=True), trainer)
        inner.save(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(path))


def corpus(synthetic_words: bool = False):
    """The shared questions and solutions; with `synthetic_words`, also 400,000 pseudo-words (3 copies each) so that
    the BPE trainer finds enough merges for a vocabulary of Qwen2's size."""
    if synthetic_words:
        rng = random.Random(1)
        syllables = [a + b for a in "bcdfghjklmnpqrstvwz" for b in "aeiouy"] + list("aeiou")
        for _ in range(400):
            words = ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 5))) for _ in range(1000)]
            yield " ".join(words * 3)
    for name, fields in (
        ("gsm8k/train.jsonl", ("question", "answer")),
        ("math_lvl3to5/train.jsonl", ("question", "answer")),
        ("math_train/train.jsonl", ("problem", "answer")),
        ("math500/test.jsonl", ("problem", "solution")),
        ("olympiadbench/test.jsonl", ("question",)),
    ):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            yield " ".join(str(row.get(field, "")) for field in fields)


SPELLINGS = [lambda a: a, lambda a: f"{a}.", lambda a: f" {a} ", lambda a: f"${a}$"]


def responses(tok, prompts: int, rollouts: int, rng: random.Random):
    import torch

    texts = list(corpus())  # the real text only
    pool = [e.ids for e in tok._tokenizer.encode_batch([t + "\n" for t in rng.sample(texts, 3000)])]
    golds = [json.loads(line)["answer"] for line in (DATA / "math_lvl3to5/train.jsonl").read_text().splitlines()]
    golds = [g for g in golds if g.strip()]
    pad = tok.convert_tokens_to_ids(tok.tokenize(" ")[0])
    rows, answers = [], []
    for _ in range(prompts):
        options = [rng.choice(golds) for _ in range(4)]
        for _ in range(rollouts):
            answer = rng.choice(SPELLINGS)(rng.choice(options))
            kind = rng.random()
            filler = []
            while len(filler) < 2 * T:
                filler.extend(rng.choice(pool))
            box = tok.encode(f" So the answer is \\boxed{{{answer}}}.", add_special_tokens=False)
            if kind < 0.5:
                ids = filler[: T - len(box)] + box
            elif kind < 0.75:
                ids = filler[: T - 1500 - len(box)] + box + filler[T : T + 1500]
            else:
                ids = filler[:T]
            ids = (ids + [pad] * T)[:T]
            rows.append(ids)
            answers.append(answer if kind < 0.75 else None)
    return torch.tensor(rows), torch.ones(len(rows), T, dtype=torch.long), answers


def old_answer_module():
    """`verl_meds/answer.py` of commit `ea8f0ad`, imported from a temporary file."""
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:verl_meds/answer.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp())
    (folder / "old_answer.py").write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_answer", folder / "old_answer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--compare", type=int, default=256, help="responses on which the old code is timed")
    parser.add_argument("--warm-epochs", type=int, default=10, help="steps of memory history before timing")
    parser.add_argument("--cache", default=str(ROOT / ".cache" / "bench_driver"))
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from verl_meds import grading
    from verl_meds.answer import extract_boxed, locate_answer_tokens
    from verl_meds.config import MEDSConfig
    from verl_meds.shaping import grpo_advantages
    from verl_meds.step import MEDSStep, answer_record, read_answer_records

    rng = random.Random(0)
    tok, seconds = timed(tokenizer, Path(args.cache))
    print(f"tokenizer: byte-level BPE, vocabulary {len(tok)} ({seconds:.0f} s to load or train)")
    (ids, mask, answers), seconds = timed(responses, tok, args.prompts, args.rollouts, rng)
    n = ids.shape[0]
    print(f"{n} responses x {ids.shape[1]} tokens built in {seconds:.0f} s")

    old = old_answer_module()
    subset = slice(0, min(args.compare, n))
    new_all, cold_s = timed(locate_answer_tokens, ids, mask, tok)  # first call: each token id's piece decoded once
    new_all, new_all_s = timed(locate_answer_tokens, ids, mask, tok)
    new_sub, new_sub_s = timed(locate_answer_tokens, ids[subset], mask[subset], tok)
    old_sub, old_sub_s = timed(old.locate_answer_tokens, ids[subset], mask[subset], tok)
    same = bool(torch.equal(new_sub, old_sub))
    m = new_sub.shape[0]
    found = int((new_all >= 0).sum())
    print("\n1. answer location (locate_answer_tokens)")
    print(f"   same answer tokens as {OLD_COMMIT} on the {m} compared responses: {same}; {found}/{n} located")
    print(f"   {OLD_COMMIT}: {1e3 * old_sub_s / m:7.3f} ms/response -> {old_sub_s / m * n:7.2f} s/step (extrapolated)")
    print(f"   today:   {1e3 * new_sub_s / m:7.3f} ms/response; whole step {new_all_s:.2f} s ({n} responses)")
    print(f"   today, first step of a run (token flags not yet known): {cold_s:.2f} s")
    print(f"   ratio old/new per response: {old_sub_s / new_sub_s:.1f}x")
    prompt_lengths = torch.full((n,), 512, dtype=torch.long)
    records, record_s = timed(lambda rows: [answer_record(row, tok) for row in rows], ids)
    (location, digests), read_records_s = timed(read_answer_records, records, prompt_lengths)
    same_records = bool(torch.equal(location.index, new_all))
    print(
        f"   in verl's reward workers (meds_dapo / meds_naive; answer_record = locate + digest): "
        f"{1e3 * record_s / n:7.3f} ms/response, off the driver"
    )
    print(
        f"   driver, records read back (read_answer_records): {read_records_s:.3f} s/step; same answer tokens as "
        f"the driver's locate: {same_records}; ratio driver locate / records read: {new_all_s / read_records_s:.0f}x"
    )

    texts, decode_s = timed(lambda rows: [tok.decode(row.tolist()) for row in rows], ids)
    boxed = [extract_boxed(text) for text in texts]
    distinct = len({a for a in boxed if a is not None})
    grading.default_pool().run("key", ["1"] * 4)  # workers started outside the timed part
    grading._KEY_CACHE.clear()
    (keys, _), new_keys_s = timed(grading.answer_keys, boxed)
    old_subset = sorted({a for a in boxed if a is not None})[: args.compare]
    old._symbolic_key.cache_clear()
    _, old_keys_s = timed(lambda xs: [old.answer_key(x) for x in xs], old_subset)
    print("\n2. answer keys")
    print(f"   {distinct} distinct boxed answers among {n} responses")
    print(
        f"   {OLD_COMMIT} (in the driver thread): {1e3 * old_keys_s / len(old_subset):7.3f} ms/distinct answer -> "
        f"{old_keys_s / len(old_subset) * distinct:7.2f} s/step (extrapolated from {len(old_subset)})"
    )
    print(
        f"   today, keyed in the driver (fast path + workers): {new_keys_s:.2f} s/step, after decoding every "
        f"response ({decode_s:.2f} s)"
    )
    from verl_meds.verl.explore import batch_answer_keys

    infos = [{"reward_extra_info": {"answer_key": k or "", "answer_key_timeout": 0.0}} for k in keys]
    (from_reward, _), read_s = timed(batch_answer_keys, tok, ids, mask, infos)
    assert from_reward == keys
    print(f"   today, keys from the reward workers (answer-keyed recipes): {read_s:.3f} s/step in the driver")

    config = MEDSConfig()
    step = MEDSStep(config, num_layers=28)
    prompt_ids = [f"p{i // args.rollouts}" for i in range(n)]
    keys = [f"u{i // args.rollouts}_{i % args.rollouts}_0" for i in range(n)]
    group_ids = [i // args.rollouts for i in range(n)]
    nrng = np.random.default_rng(0)
    for _ in range(args.warm_epochs):
        wrong = nrng.random(n) < 0.6
        step.memory.step(prompt_ids, nrng.normal(size=(n, 14)).astype(np.float32), np.ones(n, bool), ~wrong)
    wrong = nrng.random(n) < 0.6
    raw = torch.from_numpy(nrng.normal(size=(n, 14)).astype(np.float32))  # (N, L_sel)
    rewards = torch.where(torch.from_numpy(~wrong), 1.0, 0.0)

    def memory_and_shaping():
        out = step.penalties(keys, prompt_ids, digests, location, raw, ~wrong)
        shaped, _ = step.shape(rewards, ~wrong, out.penalties, group_ids)
        return grpo_advantages(shaped, group_ids)

    _, rest_s = timed(memory_and_shaping)
    print(f"\n3. memory + shaping (MEDSStep.penalties + shape) at epoch {args.warm_epochs + 1}: {rest_s:.2f} s/step")
    print(
        f"\nper step on the driver: answers located on the driver + memory + shaping: {new_all_s + rest_s:.2f} s; "
        f"with the reward workers' records: {read_records_s + rest_s:.2f} s "
        f"(+ {read_s:.3f} s of answer keys read from the reward info for the answer-keyed methods)"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
