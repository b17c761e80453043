r"""The absolute scale of the clustering: distances between wrong responses, and cluster agreement per config.

`ClusterConfig.merge_distance` and `ClusterConfig.max_distance` are distances on the unit sphere of the
L2-normalised features (0 to 2). This module measures what those distances are on a model whose wrong answers have
known error modes (the synthetic arithmetic task of `data_prep.synthetic`):

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
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from verl_meds.clustering import prepare_rows
from verl_meds.config import ClusterConfig

logger = logging.getLogger(__name__)

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
"""Quantiles reported by [`distance_table`]."""

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
) -> list[dict[str, Any]]:
    """
    Sample, grade, label and featurise `steps * rollouts` responses per problem.

    Sample `i` of a problem is given step `i // rollouts`, so that a replay of the memory sees each prompt `rollouts`
    times per step, as in training (the policy is fixed here).

    Args:
        model_dir (`str`): Hugging Face model folder (e.g. the tiny model of `data_prep.tiny_model`).
        problems (`Sequence[data_prep.synthetic.Problem]`): the prompts.
        rollouts (`int`): responses per problem and step.
        steps (`int`): steps.
        seed (`int`, *optional*, defaults to `0`): sampling seed.
        layers (`str` or `list[int]`, *optional*, defaults to `"last_half"`): `FeatureConfig.layers`.
        final_norm (`bool`, *optional*, defaults to `True`): `FeatureConfig.final_norm`.
        max_new_tokens (`int`, *optional*, defaults to `48`): generation budget.

    Returns:
        `list[dict]`: one record per response with `step`, `prompt_id`, `sample_index`, `correct`, `answer`
        (`str` or `None`), `label` (error mode of a wrong answer, `None` for a right one) and `features` (list of
        floats, empty when the response has no answer token).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep.tiny_model import extract_boxed_int, prompt_messages
    from verl_meds.analysis.experiment import mode_label
    from verl_meds.answer import locate_answer_token
    from verl_meds.config import FeatureConfig
    from verl_meds.features import find_final_norm, logit_lens_from_hidden_states

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
            answer = extract_boxed_int(tokenizer.decode(response, skip_special_tokens=True))
            answer_text = None if answer is None else str(answer)
            correct = answer == problem.answer
            index = locate_answer_token(response, tokenizer)
            features: list[float] = []
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
                    "prompt_id": str(prompt_index),
                    "sample_index": sample % rollouts,
                    "correct": bool(correct),
                    "answer": answer_text,
                    "label": None if correct else mode_label(problem.question, answer_text),
                    "features": features,
                }
            )
    return records


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
        neighbour of that kind), the count, mean and `QUANTILES` (keys `q01` ... `q99`).
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
        kinds["same_mode"] += distances[upper & both_named & same_mode].tolist()
        kinds["different_mode"] += distances[upper & both_named & ~same_mode].tolist()
        np.fill_diagonal(distances, np.inf)
        for kind, mask in (("nearest_same_answer", same_answer), ("nearest_different_answer", ~same_answer)):
            nearest = np.where(mask, distances, np.inf).min(axis=1)  # (n,)
            kinds[kind] += nearest[np.isfinite(nearest) & finite].tolist()
    names = ("same_answer", "different_answer", "same_mode", "different_mode")
    return {kind: _quantiles(kinds[kind]) for kind in (*names, "nearest_same_answer", "nearest_different_answer")}


def agreement(records: Sequence[Mapping[str, Any]], cluster_config: ClusterConfig) -> dict[str, float]:
    """
    Cluster-vs-mode and cluster-vs-answer agreement of the memory's clusters under `cluster_config`.

    The memory is replayed step by step (`assign_clusters`, joint fit of history and step); scores are the
    size-weighted NMI and ARI over (step, prompt) groups with at least 2 wrong responses, averaged over steps.

    Returns:
        `dict[str, float]`: `nmi_mode`, `ari_mode`, `nmi_answer` (clusters vs final answers), `answer_nmi_mode`
        (answers as clusters vs modes, the bound an answer-keyed memory reaches), `noise_frac` (wrong responses
        labelled noise), `mean_cluster_size` (mean |C| of the wrong responses).
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
    return {
        "nmi_mode": float(np.nanmean([m["nmi"] for m in base])),
        "ari_mode": float(np.nanmean([m["ari"] for m in base])),
        "nmi_answer": float(np.nanmean([s["nmi_cluster_answer"] for s in answer_scores])),
        "answer_nmi_mode": float(np.nanmean([s["nmi_answer"] for s in answer_scores])),
        "noise_frac": float(np.mean([r["cluster"] == -1 for r in wrong])) if wrong else math.nan,
        "mean_cluster_size": float(np.mean([r["cluster_size"] for r in wrong])) if wrong else math.nan,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face model folder")
    parser.add_argument("--records", help="reuse sampled records (JSON written by a previous --out) instead")
    parser.add_argument("--problems", type=int, default=32, help="training problems (the first ones, seed 0)")
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write records, distances and agreement as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.records:
        records = json.loads(Path(args.records).read_text())["records"]
    else:
        from data_prep.synthetic import split_problems

        problems = split_problems(2000, 64, seed=0)["train"][: args.problems]
        records = sample_records(args.model, problems, args.rollouts, args.steps, seed=args.seed)
    table = distance_table(records)
    configs = {
        "before": ClusterConfig(merge_distance=0.0, max_distance=None, ties="order"),
        "default": ClusterConfig(),
    }
    scores = {name: agreement(records, cfg) for name, cfg in configs.items()}
    report = {
        "distances": table,
        "agreement": scores,
        "configs": {name: dataclasses.asdict(cfg) for name, cfg in configs.items()},
    }
    logger.info("%s", json.dumps(report, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**report, "records": records}))


if __name__ == "__main__":
    main()
