"""Replay a training run's MEDS analysis dump through `verl_meds.step.MEDSStep` and compare the penalties.

The MEDS hook's analysis dump (`meds_dump.enable=true`, one JSON line per response in the order the memory saw the
rows) holds each response's prompt id, rollout index, outcome, features, cluster size and penalty. Feeding the same
rows, step by step, into a fresh `MEDSStep` with the run's `meds` block must give the same cluster sizes and
penalties: a check that two versions of the code compute the same signal on the same inputs, and that a run's
logged penalties follow from its logged features. Feature memories only (`clustering.method=answer` keys are not in
the dump).

Run: `python -m verl_meds.analysis.replay RUN_DIR/checkpoints/analysis.jsonl [--config meds.yaml]`
(`--config`: a YAML file with the run's `meds` block at top level or under `meds`; paper defaults if omitted).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from verl_meds.config import MEDSConfig
from verl_meds.step import AnswerLocation, MEDSStep


@dataclass
class ReplayResult:
    """Outcome of `replay_dump`.

    Attributes:
        rows (`int`): responses replayed.
        equal_sizes (`int`): rows whose replayed cluster size equals the dump's.
        equal_penalties (`int`): rows whose replayed penalty equals the dump's exactly (float32 as written).
        penalised (`int`): rows with a penalty > 0 in the dump.
        first_mismatch (`dict` or `None`): the first differing row (step, prompt id, rollout index, dump and replay).
    """

    rows: int
    equal_sizes: int
    equal_penalties: int
    penalised: int
    first_mismatch: dict | None

    @property
    def identical(self) -> bool:
        """Every cluster size and every penalty reproduced."""
        return self.equal_sizes == self.rows and self.equal_penalties == self.rows


def replay_dump(records: list[dict], config: MEDSConfig) -> ReplayResult:
    """Replay dump records (in file order) through a fresh `MEDSStep`.

    Args:
        records (`list[dict]`): the dump's lines, each with `step`, `prompt_id`, `sample_index`, `correct`,
            `features` (list of F floats or `None`), `cluster_size`, `penalty`.
        config (`MEDSConfig`): the run's `meds` block (feature clustering).

    Returns:
        `ReplayResult`.

    Raises:
        ValueError: for an answer-keyed config, or records without any features.
    """
    if config.clustering.method == "answer":
        raise ValueError("replay_dump: answer-keyed memories cannot be replayed (the dump has no answer keys)")
    width = next((len(r["features"]) for r in records if r.get("features")), None)
    if width is None:
        raise ValueError("replay_dump: no record has features")
    steps: dict[int, list[dict]] = defaultdict(list)
    for record in records:
        steps[int(record["step"])].append(record)
    step = MEDSStep(config)
    equal_sizes = equal_penalties = 0
    first = None
    for number in sorted(steps):
        batch = steps[number]
        n = len(batch)
        found = torch.tensor([r.get("features") is not None for r in batch])
        nan_row = [float("nan")] * width
        raw = torch.tensor([r["features"] or nan_row for r in batch], dtype=torch.float32)  # (N, F)
        minus_one = torch.full((n,), -1, dtype=torch.long)
        index = torch.where(found, torch.zeros(n, dtype=torch.long), minus_one)
        location = AnswerLocation(index=index, pred_pos=index, token=torch.zeros(n, dtype=torch.long))
        # Keys that sort like the trainer's: same prompt, then rollout index; the dump is already in that order.
        keys = [
            f"g_{int(r['sample_index'])}_0" if int(r["sample_index"]) >= 0 else f"g_{i}_0" for i, r in enumerate(batch)
        ]
        out = step.penalties(
            keys,
            [str(r["prompt_id"]) for r in batch],
            None,
            location,
            raw,
            np.array([bool(r["correct"]) for r in batch]),
        )
        sizes = np.array([int(r["cluster_size"]) for r in batch])
        penalties = np.array([float(r["penalty"]) for r in batch])
        replayed = out.penalties.numpy().astype(np.float64)
        same_size, same_penalty = out.cluster_sizes == sizes, replayed == penalties
        equal_sizes += int(same_size.sum())
        equal_penalties += int(same_penalty.sum())
        bad = np.flatnonzero(~(same_size & same_penalty))
        if first is None and bad.size:
            r = batch[int(bad[0])]
            first = {
                "step": number,
                "prompt_id": r["prompt_id"],
                "sample_index": r["sample_index"],
                "dump": (int(sizes[bad[0]]), float(penalties[bad[0]])),
                "replay": (int(out.cluster_sizes[bad[0]]), float(replayed[bad[0]])),
            }
    penalised = sum(1 for r in records if float(r["penalty"]) > 0)
    return ReplayResult(len(records), equal_sizes, equal_penalties, penalised, first)


def main(argv: list[str] | None = None) -> int:
    """Command line: prints the comparison; exit status 0 when every size and penalty is reproduced, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump", help="analysis.jsonl of a run (meds_dump.enable=true)")
    parser.add_argument("--config", help="YAML with the run's meds block (top level or under 'meds')")
    args = parser.parse_args(argv)
    block = None
    if args.config:
        from omegaconf import OmegaConf

        loaded = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True)
        block = loaded.get("meds", loaded) if isinstance(loaded, dict) else None
    with open(args.dump, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    result = replay_dump(records, MEDSConfig.from_dict(block))
    sys.stdout.write(
        f"{result.rows} rows: {result.equal_sizes} equal cluster sizes, {result.equal_penalties} equal penalties "
        f"({result.penalised} penalised in the dump)\n"
    )
    if result.first_mismatch:
        sys.stdout.write(f"first mismatch: {result.first_mismatch}\n")
    return 0 if result.identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
