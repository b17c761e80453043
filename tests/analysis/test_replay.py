"""`verl_meds.analysis.replay`: a dump written by the MEDS step replays to the same penalties, a changed one not."""

from __future__ import annotations

import json

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_meds.analysis.replay import main, replay_dump
from verl_meds.config import MEDSConfig
from verl_meds.step import AnswerLocation, MEDSStep
from verl_meds.verl.dump import AnalysisDump


def _write_run(path, seed: int, steps: int, config: MEDSConfig) -> None:
    """A few steps of MEDSStep on random features (two error modes per prompt), dumped as the MEDS hook dumps."""
    rng = np.random.default_rng(seed)
    step = MEDSStep(config)
    dump = AnalysisDump(str(path))
    for number in range(1, steps + 1):
        n = 12
        prompt_ids = [f"p{r % 3}" for r in range(n)]
        keys = [f"u{r % 3}_{r // 3}_0" for r in range(n)]
        modes = rng.integers(0, 2, n)
        raw = torch.tensor(modes[:, None] * 1.0 + rng.normal(0, 1e-4, (n, 4)), dtype=torch.float32)
        found = torch.from_numpy(rng.random(n) < 0.9)
        raw[~found] = float("nan")
        index = torch.where(found, 0, -1)
        location = AnswerLocation(index=index, pred_pos=index, token=torch.zeros(n, dtype=torch.long))
        correct = rng.random(n) < 0.3
        out = step.penalties(keys, prompt_ids, None, location, raw, correct)
        dump.write_step(
            number,
            out.order,
            prompt_ids,
            [r // 3 for r in range(n)],
            correct,
            [""] * n,
            out.features,
            out.has_feature,
            out.cluster_sizes,
            out.penalties.numpy(),
        )


@given(seed=st.integers(0, 10_000), steps=st.integers(1, 4))
@settings(max_examples=15, deadline=None)
def test_dump_of_the_step_replays_identically(tmp_path_factory, seed, steps):
    path = tmp_path_factory.mktemp("run") / "analysis.jsonl"
    config = MEDSConfig()
    _write_run(path, seed, steps, config)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    result = replay_dump(records, config)
    assert result.identical and result.first_mismatch is None and result.rows == 12 * steps


def test_changed_penalty_or_other_config_is_reported(tmp_path, capsys):
    path = tmp_path / "analysis.jsonl"
    config = MEDSConfig()
    _write_run(path, 3, 3, config)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    penalised = [i for i, r in enumerate(records) if r["penalty"] > 0]
    assert penalised, "the run should penalise something"
    records[penalised[0]]["penalty"] += 1e-3
    result = replay_dump(records, config)
    assert not result.identical and result.equal_penalties == result.rows - 1
    assert result.first_mismatch["step"] == records[penalised[0]]["step"]
    other = MEDSConfig.from_dict({"shaping": {"alpha": 0.05}})
    assert not replay_dump([json.loads(line) for line in path.read_text().splitlines()], other).identical
    assert main([str(path)]) == 0 and "0 equal" not in capsys.readouterr().out
