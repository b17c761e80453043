r"""The absolute scale of the clustering: distances between wrong responses, and cluster agreement per config.

`ClusterConfig.merge_distance` and `ClusterConfig.max_distance` are distances on the unit sphere of the
L2-normalised features (0 to 2). This module measures what those distances are on a model whose wrong answers have
known error modes (the synthetic arithmetic task of `verl_meds.tasks.synthetic`):

- [`sample_records`]: sample `rollouts` responses per problem from a Hugging Face causal LM, grade them, label each
  wrong answer with its error mode (`verl_meds.analysis.experiment.mode_label`) and compute the MEDS feature (the
  logit lens of the first answer token, `verl_meds.features.logit_lens_from_hidden_states`).
- [`distance_table`]: per prompt, the distances between its wrong responses, split into pairs with the same final
  answer and pairs with different answers (and likewise for named error modes), plus each response's distance to
  its nearest same-answer and nearest different-answer neighbour; quantiles of each.
- [`agreement`]: replay the error memory with a given `ClusterConfig` (`verl_meds.analysis.records.assign_clusters`)
  and score the clusters against the error modes and against the answers (size-weighted NMI per prompt and step,
  `verl_meds.analysis.diversity`).

Run (CPU, a few minutes with the tiny model):

    python -m verl_meds.analysis.cluster_scale --model .cache/tiny_cpu/model_seed0 --problems 32 --rollouts 8 \
        --steps 4 --out outputs/cluster_scale.json

`docs/clustering.md` reports the measured numbers and the defaults chosen from them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from verl_meds.clustering import prepare_rows
from verl_meds.config import ClusterConfig

logger = logging.getLogger(__name__)

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
"""Quantiles reported by [`distance_table`]."""

TASKS = ("synthetic", "single_digit")
"""Tasks [`sample_records`] can sample: the tiny model's synthetic arithmetic, SmolLM2's single-digit sums and
products."""

NAMED_MODES_EXCLUDED = ("other", "no_answer")
"""Catch-all labels left out of the same-mode / different-mode split (one label, many unrelated answers)."""


def sample_records(
    model_dir: str,
    problems: Sequence[Any],
    rollouts: int,
    steps: int,
    seed: int = 0,
    layers: str | list[int] = "last_half",
    final_norm: bool = True,
    max_new_tokens: int = 48,
    task: str = "synthetic",
    first_id: int = 0,
) -> list[dict[str, Any]]:
    """
    Sample, grade, label and featurise `steps * rollouts` responses per problem.

    Sample `i` of a problem is given step `i // rollouts`, so that a replay of the memory sees each prompt `rollouts`
    times per step, as in training (the policy is fixed here).

    Args:
        model_dir (`str`): Hugging Face model folder (e.g. the tiny model of `data_prep.tiny_model`).
        problems (`Sequence[verl_meds.tasks.synthetic.Problem]`): the prompts.
        rollouts (`int`): responses per problem and step.
        steps (`int`): steps.
        seed (`int`, *optional*, defaults to `0`): sampling seed.
        layers (`str` or `list[int]`, *optional*, defaults to `"last_half"`): `FeatureConfig.layers`.
        final_norm (`bool`, *optional*, defaults to `True`): `FeatureConfig.final_norm`.
        max_new_tokens (`int`, *optional*, defaults to `48`): generation budget.
        task (`str`, *optional*, defaults to `"synthetic"`): one of `TASKS`: `"synthetic"`
            (`verl_meds.tasks.synthetic` problems and prompt, error modes from
            `verl_meds.analysis.experiment.mode_label`) or `"single_digit"` (`verl_meds.tasks.single_digit` problems
            and their one-shot ChatML prompt, modes from [`single_digit_mode_label`]).
        first_id (`int`, *optional*, defaults to `0`): `prompt_id` of the first problem (the rest count up), so that
            records of consecutive slices of the problems can be pooled.

    Returns:
        `list[dict]`: one record per response with `step`, `prompt_id`, `sample_index`, `correct`, `answer`
        (`str` or `None`), `answer_token` (id of the token the features read, `None` without one), `label` (error
        mode of a wrong answer, `None` for a right one) and `features` (list of floats, empty when the response has
        no answer token).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verl_meds.answer import extract_boxed_integer, locate_answer_token
    from verl_meds.config import FeatureConfig
    from verl_meds.features import find_final_norm, logit_lens_from_hidden_states

    prompt_messages, label_of = _task_functions(task)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    num_layers = model.config.num_hidden_layers
    selected = FeatureConfig(layers=layers, final_norm=final_norm).resolve_layers(num_layers)
    norm = find_final_norm(model)
    head = model.get_output_embeddings().weight
    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    records = []
    for prompt_index, problem in enumerate(problems):
        logger.info("problem %d/%d: %s", prompt_index + 1, len(problems), problem.question)
        text = tokenizer.apply_chat_template(prompt_messages(problem), add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        batch = torch.tensor([prompt_ids] * (steps * rollouts))  # (R, P)
        with torch.no_grad():
            out = model.generate(
                input_ids=batch,
                attention_mask=torch.ones_like(batch),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )  # (R, P + T)
            hidden = model(out, output_hidden_states=True).hidden_states  # L + 1 tensors (R, P + T, D)
        for sample, sequence in enumerate(out.tolist()):
            response = sequence[len(prompt_ids) :]
            if tokenizer.eos_token_id in response:
                response = response[: response.index(tokenizer.eos_token_id) + 1]
            answer = extract_boxed_integer(tokenizer.decode(response, skip_special_tokens=True))
            answer_text = None if answer is None else str(answer)
            correct = answer == problem.answer
            index = locate_answer_token(response, tokenizer)
            features: list[float] = []
            answer_token = int(response[index]) if index >= 0 else None
            if index >= 0:
                position = torch.tensor([len(prompt_ids) + index - 1])
                row = [h[sample : sample + 1] for h in hidden]
                lens = logit_lens_from_hidden_states(
                    row, position, torch.tensor([response[index]]), head, norm, selected, final_norm
                )  # (1, F)
                features = [float(v) for v in lens[0]]
            records.append(
                {
                    "step": sample // rollouts,
                    "prompt_id": str(first_id + prompt_index),
                    "sample_index": sample % rollouts,
                    "correct": bool(correct),
                    "answer": answer_text,
                    "answer_token": answer_token,
                    "label": None if correct else label_of(problem, answer_text),
                    "features": features,
                }
            )
    return records


def single_digit_mode_label(problem: Any, answer: str | None) -> str:
    """
    Error mode of a wrong answer to a `verl_meds.tasks.single_digit.SingleDigitProblem` (SmolLM2's task has no
    planted modes; these are the recurring slips seen in its samples, `docs/smollm2.md`), checked in this order:

    `"no_answer"` (no boxed integer), `"other_op"` (the result of the other operation: `a+b` asked as `a*b` or the
    reverse), `"example_answer"` (the worked example's answer copied), `"operand"` (one of the two digits),
    `"off_by_one"` (one from the right answer), otherwise `"other"`.

    >>> from verl_meds.tasks.single_digit import SingleDigitProblem
    >>> [single_digit_mode_label(SingleDigitProblem(9, "*", 5), a) for a in (None, "14", "12", "9", "44", "50")]
    ['no_answer', 'other_op', 'example_answer', 'operand', 'off_by_one', 'other']
    """
    from verl_meds.tasks.single_digit import WORKED_EXAMPLES

    if answer is None:
        return "no_answer"
    value = int(answer)
    if value == (problem.a * problem.b if problem.op == "+" else problem.a + problem.b):
        return "other_op"
    if value == WORKED_EXAMPLES[problem.op].answer:
        return "example_answer"
    if value in (problem.a, problem.b):
        return "operand"
    if abs(value - problem.answer) == 1:
        return "off_by_one"
    return "other"


def _task_functions(task: str) -> tuple[Any, Any]:
    """`(prompt_messages, label_of)` of a task of `TASKS`; `label_of(problem, answer)` gives the error mode."""
    if task == "synthetic":
        from verl_meds.analysis.experiment import mode_label
        from verl_meds.tasks.synthetic import prompt_messages

        return prompt_messages, lambda problem, answer: mode_label(problem.question, answer)
    if task == "single_digit":
        from verl_meds.tasks.single_digit import prompt_messages

        return prompt_messages, single_digit_mode_label
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def load_problems(task: str, count: int, seed: int = 0) -> list[Any]:
    """
    The first `count` training problems of a task of `TASKS` (split seed `seed`).

    `"synthetic"`: `verl_meds.tasks.synthetic.split_problems(2000, 64, seed)` (the tiny model's task).
    `"single_digit"`: `verl_meds.tasks.single_digit.split_single_digit(seed=seed)` (SmolLM2's task, 158 training
    problems).
    """
    if task == "synthetic":
        from verl_meds.tasks.synthetic import split_problems

        return split_problems(2000, 64, seed=seed)["train"][:count]
    if task == "single_digit":
        from verl_meds.tasks.single_digit import split_single_digit

        return split_single_digit(seed=seed)["train"][:count]
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    out = {"count": float(array.size), "mean": float(array.mean()) if array.size else math.nan}
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = float(np.quantile(array, q)) if array.size else math.nan
    return out


def distance_table(records: Sequence[Mapping[str, Any]], metric: str = "euclidean") -> dict[str, dict[str, float]]:
    """
    Distances between the L2-normalised features of wrong responses of the same prompt, by kind of pair.

    Args:
        records (`Sequence[Mapping]`): records as returned by [`sample_records`] (all steps pooled).
        metric (`str`, *optional*, defaults to `"euclidean"`): `ClusterConfig.metric`.

    Returns:
        `dict[str, dict[str, float]]`: for each of `same_answer`, `different_answer`, `same_mode`, `different_mode`
        (pairs of wrong responses of one prompt; modes only among named modes, see `NAMED_MODES_EXCLUDED`),
        `nearest_same_answer` and `nearest_different_answer` (per wrong response, the distance to its nearest
        neighbour of that kind), the count, mean and `QUANTILES` (keys `q01` ... `q99`). When the records carry
        `answer_token`, the different-answer pairs are also split into `different_answer_same_token` (both answers
        start with the token the features read, e.g. "12" and "15" with digit tokens) and
        `different_answer_other_token`.
    """
    from verl_meds.clustering import pairwise_distances

    kinds: dict[str, list[float]] = defaultdict(list)
    groups: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        if not record["correct"] and record.get("features") and record.get("answer") is not None:
            groups[record["prompt_id"]].append(record)
    for rows in groups.values():
        if len(rows) < 2:
            continue
        unit, finite = prepare_rows(np.asarray([r["features"] for r in rows], dtype=np.float64), l2_normalize=True)
        distances = pairwise_distances(unit, unit, metric)  # (n, n)
        answers = np.array([str(r["answer"]) for r in rows])
        modes = np.array([str(r["label"]) for r in rows])
        same_answer = answers[:, None] == answers[None, :]  # (n, n)
        named = ~np.isin(modes, NAMED_MODES_EXCLUDED)
        both_named = named[:, None] & named[None, :]
        same_mode = modes[:, None] == modes[None, :]
        upper = np.triu(np.ones_like(same_answer), k=1) & finite[:, None] & finite[None, :]
        kinds["same_answer"] += distances[upper & same_answer].tolist()
        kinds["different_answer"] += distances[upper & ~same_answer].tolist()
        if all(r.get("answer_token") is not None for r in rows):
            tokens = np.array([int(r["answer_token"]) for r in rows])
            same_token = tokens[:, None] == tokens[None, :]
            kinds["different_answer_same_token"] += distances[upper & ~same_answer & same_token].tolist()
            kinds["different_answer_other_token"] += distances[upper & ~same_answer & ~same_token].tolist()
        kinds["same_mode"] += distances[upper & both_named & same_mode].tolist()
        kinds["different_mode"] += distances[upper & both_named & ~same_mode].tolist()
        np.fill_diagonal(distances, np.inf)
        for kind, mask in (("nearest_same_answer", same_answer), ("nearest_different_answer", ~same_answer)):
            nearest = np.where(mask, distances, np.inf).min(axis=1)  # (n,)
            kinds[kind] += nearest[np.isfinite(nearest) & finite].tolist()
    names = ["same_answer", "different_answer", "same_mode", "different_mode"]
    if "different_answer_same_token" in kinds:
        names += ["different_answer_same_token", "different_answer_other_token"]
    return {kind: _quantiles(kinds[kind]) for kind in (*names, "nearest_same_answer", "nearest_different_answer")}


THRESHOLDS = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
"""Distances t reported by [`threshold_table`]."""


def threshold_table(
    records: Sequence[Mapping[str, Any]], thresholds: Sequence[float] = THRESHOLDS, metric: str = "euclidean"
) -> dict[str, dict[str, float]]:
    """
    How well "closer than t" tells a same-answer pair of wrong responses from a different-answer one.

    Pairs are those of [`distance_table`] (wrong responses of one prompt with an answer and features, all steps).

    Returns:
        `dict[str, dict[str, float]]`: for each t (key `str(t)`), `p_same` (share of pairs with d <= t that have
        the same answer), `different_within` (share of different-answer pairs with d <= t) and `same_beyond`
        (share of same-answer pairs with d > t).
    """
    distances, same = _pairs(records, metric)
    out = {}
    for t in thresholds:
        near = distances <= t
        out[str(t)] = {
            "p_same": float(same[near].mean()) if near.any() else math.nan,
            "different_within": float(near[~same].mean()) if (~same).any() else math.nan,
            "same_beyond": float((~near[same]).mean()) if same.any() else math.nan,
        }
    return out


def _pairs(records: Sequence[Mapping[str, Any]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Distances and same-answer flags of the pairs of [`distance_table`] (all prompts, one array each)."""
    from verl_meds.clustering import pairwise_distances

    groups: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        if not record["correct"] and record.get("features") and record.get("answer") is not None:
            groups[record["prompt_id"]].append(record)
    distances, same = [], []
    for rows in groups.values():
        unit, finite = prepare_rows(np.asarray([r["features"] for r in rows], dtype=np.float64), l2_normalize=True)
        answers = np.array([str(r["answer"]) for r in rows])
        upper = np.triu(np.ones((len(rows), len(rows)), dtype=bool), k=1) & finite[:, None] & finite[None, :]
        distances.append(pairwise_distances(unit, unit, metric)[upper])
        same.append((answers[:, None] == answers[None, :])[upper])
    if not distances:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(distances), np.concatenate(same)


def agreement(records: Sequence[Mapping[str, Any]], cluster_config: ClusterConfig) -> dict[str, float]:
    """
    Cluster-vs-mode and cluster-vs-answer agreement of the memory's clusters under `cluster_config`.

    The memory is replayed step by step (`assign_clusters`, joint fit of history and step); scores are the
    size-weighted NMI and ARI over (step, prompt) groups with at least 2 wrong responses, averaged over steps.

    Returns:
        `dict[str, float]`: `nmi_mode`, `ari_mode`, `nmi_answer` (clusters vs final answers), `answer_nmi_mode`
        (answers as clusters vs modes, the bound an answer-keyed memory reaches), `noise_frac` (wrong responses
        labelled noise), `mean_cluster_size` (mean |C| of the wrong responses), `pair_precision`, `pair_recall`,
        `pair_f1` ("same cluster" against "same answer" over the pairs of wrong responses of one step and prompt;
        a noise row is in no pair's cluster), `repeat_noise_frac` (of the wrong responses whose answer the prompt
        already had among its stored or this step's other wrong responses, the share labelled noise: repeats that
        get no penalty).
    """
    from verl_meds.analysis.diversity import step_metrics
    from verl_meds.analysis.experiment import answer_key_agreement
    from verl_meds.analysis.records import assign_clusters

    rows = [dict(r, cluster=None, past_members=None, cluster_size=None) for r in records]
    clustered = assign_clusters(rows, cluster_config, overwrite=True)
    base = step_metrics(clustered)
    by_step: dict[int, dict[Any, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in clustered:
        if not record["correct"] and record.get("cluster") is not None:
            by_step[int(record["step"])][record["prompt_id"]].append(record)
    answer_scores = [answer_key_agreement(list(by_step[step].values())) for step in sorted(by_step)]
    wrong = [r for r in clustered if not r["correct"] and r.get("cluster") is not None]
    together = same = both = 0
    repeats: list[bool] = []
    seen: dict[Any, Counter] = defaultdict(Counter)  # prompt -> answers of its stored wrong responses
    for step in sorted(by_step):
        for prompt, group in by_step[step].items():
            answers = np.array([str(r["answer"]) for r in group])
            labels = np.array([int(r["cluster"]) for r in group])
            upper = np.triu(np.ones((len(group), len(group)), dtype=bool), k=1)
            in_cluster = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) & upper
            same_answer = (answers[:, None] == answers[None, :]) & upper
            together += int(in_cluster.sum())
            same += int(same_answer.sum())
            both += int((in_cluster & same_answer).sum())
            counts = Counter(answers.tolist())
            repeats += [
                int(label) == -1
                for answer, label in zip(answers, labels, strict=True)
                if seen[prompt][answer] + counts[answer] > 1
            ]
            seen[prompt].update(counts)
    precision = both / together if together else math.nan
    recall = both / same if same else math.nan
    return {
        "nmi_mode": float(np.nanmean([m["nmi"] for m in base])),
        "ari_mode": float(np.nanmean([m["ari"] for m in base])),
        "nmi_answer": float(np.nanmean([s["nmi_cluster_answer"] for s in answer_scores])),
        "answer_nmi_mode": float(np.nanmean([s["nmi_answer"] for s in answer_scores])),
        "noise_frac": float(np.mean([r["cluster"] == -1 for r in wrong])) if wrong else math.nan,
        "mean_cluster_size": float(np.mean([r["cluster_size"] for r in wrong])) if wrong else math.nan,
        "pair_precision": precision,
        "pair_recall": recall,
        "pair_f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else math.nan,
        "repeat_noise_frac": float(np.mean(repeats)) if repeats else math.nan,
    }


def format_report(report: Mapping[str, Any]) -> str:
    """Markdown tables of a report of [`main`]: distance quantiles, the threshold table, agreement per config."""
    quantile_keys = [f"q{round(q * 100):02d}" for q in QUANTILES]
    lines = ["| kind | count | " + " | ".join(quantile_keys) + " |", "|---" * (len(quantile_keys) + 2) + "|"]
    for kind, row in report["distances"].items():
        cells = " | ".join(f"{row[k]:.4f}" for k in quantile_keys)
        lines.append(f"| {kind} | {int(row['count'])} | {cells} |")
    lines += [
        "",
        "| t | P(same answer \\| d <= t) | different-answer pairs with d <= t | same-answer pairs with d > t |",
    ]
    lines.append("|---|---|---|---|")
    for t, row in report["thresholds"].items():
        lines.append(f"| {t} | {row['p_same']:.3f} | {row['different_within']:.3f} | {row['same_beyond']:.3f} |")
    keys = ("nmi_mode", "ari_mode", "nmi_answer", "pair_precision", "pair_recall", "pair_f1", "noise_frac")
    keys += ("repeat_noise_frac", "mean_cluster_size")
    lines += ["", "| config | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, row in report["agreement"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Hugging Face model folder (needed unless --records is given)")
    parser.add_argument("--task", choices=TASKS, default="synthetic", help="synthetic (tiny model) or single_digit")
    parser.add_argument(
        "--records", nargs="+", help="reuse sampled records (JSON files written by --out, pooled) instead"
    )
    parser.add_argument("--problems", type=int, default=32, help="training problems (the first ones, seed 0)")
    parser.add_argument("--first", type=int, default=0, help="skip this many training problems first")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    parser.add_argument(
        "--scale",
        action="append",
        default=[],
        metavar="MERGE:MAX",
        help="also score ClusterConfig(merge_distance=MERGE, max_distance=MAX) (MAX 'none' for no cut); repeatable",
    )
    parser.add_argument("--out", help="write records, distances and agreement as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.records:
        records = [r for path in args.records for r in json.loads(Path(path).read_text())["records"]]
    else:
        if not args.model:
            parser.error("--model is required without --records")
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        problems = load_problems(args.task, args.first + args.problems)[args.first :]
        records = sample_records(
            args.model,
            problems,
            args.rollouts,
            args.steps,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            task=args.task,
            first_id=args.first,
        )
    table = distance_table(records)
    thresholds = threshold_table(records)
    configs = {
        "before": ClusterConfig(merge_distance=0.0, max_distance=None, ties="order"),
        "scale_free_merge": ClusterConfig(merge_distance=0.0, max_distance=None, ties="merge"),
        "default": ClusterConfig(),
    }
    for spec in args.scale:
        merge, _, far = spec.partition(":")
        far_value = None if far.lower() in ("", "none") else float(far)
        configs[f"scale_{merge}_{far or 'none'}"] = ClusterConfig(merge_distance=float(merge), max_distance=far_value)
    scores = {name: agreement(records, cfg) for name, cfg in configs.items()}
    report = {
        "distances": table,
        "thresholds": thresholds,
        "agreement": scores,
        "configs": {name: dataclasses.asdict(cfg) for name, cfg in configs.items()},
    }
    print(format_report(report))  # noqa: T201 - the CLI's output
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**report, "records": records}))


if __name__ == "__main__":
    main()
