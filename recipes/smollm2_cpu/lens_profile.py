"""Where in SmolLM2's 30 layers does the answer appear? A logit-lens table for docs/smollm2.md.

For one-shot prompts of the single-digit task followed by the correct worked answer (``9*6=54. The answer is
\\boxed{54}.``), it reads the first answer token at two places:

- ``boxed``: the position predicting the token after ``\\boxed{`` (where MEDS reads its features); the answer is
  already written earlier in the response, so the model can copy it;
- ``equals``: the position predicting the token after ``=`` (where the model first has to produce the answer).

and prints, per layer, the median rank of the answer token among the 49,152 (0 = top-1), how many cases have it at
top-1, and the median lens logit (the MEDS feature at the boxed position), then per case the first layer from which
the answer stays top-1. Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python recipes/smollm2_cpu/lens_profile.py [--cases 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import random

import torch

from data_prep.smollm2 import convert_smollm2, prompt_messages, split_single_digit, worked_solution
from verl_meds.analysis.lens_profile import lens_profile
from verl_meds.answer import locate_answer_token


def positions(tokenizer, problem) -> dict[str, tuple[list[int], int, int]]:
    """``{place: (token ids, position predicting the answer's first token, that token)}`` for one problem."""
    prompt = tokenizer.apply_chat_template(prompt_messages(problem), add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    response_ids = tokenizer(worked_solution(problem), add_special_tokens=False).input_ids
    ids = prompt_ids + response_ids
    boxed = len(prompt_ids) + locate_answer_token(response_ids, tokenizer)
    equals = len(prompt_ids) + next(
        i for i in range(len(response_ids)) if tokenizer.decode(response_ids[:i]).endswith("=")
    )
    first = tokenizer(str(problem.answer)[0], add_special_tokens=False).input_ids[0]
    assert ids[boxed] == ids[equals] == first, (problem, ids[boxed], ids[equals], first)
    return {"boxed": (ids, boxed - 1, first), "equals": (ids, equals - 1, first)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=8, help="test problems, half additions, half products")
    parser.add_argument("--seed", type=int, default=0, help="which test problems")
    parser.add_argument("--raw", action="store_true", help="project intermediate layers without the final norm")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = convert_smollm2()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    test = split_single_digit(n_test=40, seed=0)["test"]
    rng = random.Random(args.seed)
    problems = rng.sample([p for p in test if p.op == "+"], args.cases // 2) + rng.sample(
        [p for p in test if p.op == "*"], args.cases - args.cases // 2
    )
    print(f"cases: {', '.join(f'{p.expression}={p.answer}' for p in problems)}; final_norm={not args.raw}")
    for place in ("boxed", "equals"):
        rows = [positions(tokenizer, p)[place] for p in problems]
        profiles = [
            lens_profile(model, torch.tensor([ids]), torch.tensor([pos]), torch.tensor([tok]), final_norm=not args.raw)
            for ids, pos, tok in rows
        ]
        ranks = torch.cat([p.ranks for p in profiles], dim=1)  # (L, N)
        logits = torch.cat([p.logits for p in profiles], dim=1)  # (L, N)
        stable = torch.cat([p.stable_top1_layer() for p in profiles])  # (N,)
        print(f"\n## {place}\n\n| layer | median rank | top-1 cases | median lens logit |\n|---|---|---|---|")
        for layer in range(1, ranks.shape[0] + 1):
            r, lg = ranks[layer - 1], logits[layer - 1]
            print(f"| {layer} | {int(r.median())} | {int((r == 0).sum())}/{len(r)} | {float(lg.median()):.2f} |")
        per_case = ", ".join(f"{p.expression}: {int(s)}" for p, s in zip(problems, stable, strict=True))
        print(f"\nfirst layer from which the answer stays top-1 (0 = not top-1 at layer 30): {per_case}")


if __name__ == "__main__":
    main()
