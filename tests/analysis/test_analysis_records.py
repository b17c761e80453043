"""Analysis records: validation, memory replay (vs `ErrorMemory`), evaluation samples as records, labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from verl_meds.analysis.records import (
    add_labels,
    assign_clusters,
    load_records,
    records_from_eval,
    synthetic_error_mode,
    validate_record,
    write_records,
)
from verl_meds.config import MEDSConfig
from verl_meds.memory import ErrorMemory


def blob(center, count, rng, scale=1e-4):  # spread within ClusterConfig.merge_distance
    return [list(np.asarray(center, dtype=float) + rng.normal(scale=scale, size=3)) for _ in range(count)]


def make_records():
    rng = np.random.default_rng(0)
    records = []
    for features in blob([1, 0, 0], 4, rng) + blob([0, 1, 0], 4, rng):
        records.append({"step": 0, "prompt_id": "A", "correct": False, "features": features})
    records.append({"step": 0, "prompt_id": "A", "correct": True, "features": [0.3, 0.3, 0.3]})
    for features in blob([1, 0, 0], 3, rng) + blob([0, 0, 1], 3, rng):
        records.append({"step": 1, "prompt_id": "A", "correct": False, "features": features})
    records.append({"step": 1, "prompt_id": "A", "correct": False, "features": None, "answer": None})
    return records


def test_replay_finds_old_and_new_clusters_and_matches_error_memory():
    records = make_records()
    replayed = assign_clusters(records)
    assert records[0].get("cluster") is None  # inputs are not modified
    step0, step1 = replayed[:8], replayed[9:15]
    assert len({r["cluster"] for r in step0[:4]}) == 1 and len({r["cluster"] for r in step0[4:]}) == 1
    assert step0[0]["cluster"] != step0[4]["cluster"] and all(r["past_members"] == 0 for r in step0)
    assert replayed[8]["cluster"] is None and replayed[15]["cluster"] is None  # right / no features
    assert [r["past_members"] for r in step1] == [4, 4, 4, 0, 0, 0]
    assert [r["cluster_size"] for r in step1] == [6, 6, 6, 2, 2, 2]

    memory = ErrorMemory(MEDSConfig())
    for step in (0, 1):
        rows = [r for r in records if r["step"] == step]
        features = np.array([r["features"] or [np.nan] * 3 for r in rows], dtype=np.float32)
        sizes, _ = memory.step(
            ["A"] * len(rows),
            features,
            valid=np.array([r["features"] is not None for r in rows]),
            correct=np.array([r["correct"] for r in rows]),
        )
        expected = [r["cluster_size"] if r["cluster_size"] is not None else 0 for r in replayed if r["step"] == step]
        assert sizes.tolist() == expected

    small = assign_clusters(records, capacity=4)  # only the second blob survives step 0
    assert [r["past_members"] for r in small[9:15]] == [0, 0, 0, 0, 0, 0]
    kept = assign_clusters([{**r, "cluster": 9} if r["step"] == 0 else r for r in records])
    assert kept[0]["cluster"] == 9 and assign_clusters(kept, overwrite=True)[0]["cluster"] != 9
    with pytest.raises(ValueError, match="capacity"):
        assign_clusters(records, capacity=0)


def test_records_from_eval_and_synthetic_labels(tmp_path):
    question = "What is 3+4*5? Put the final answer in \\boxed{}."
    (tmp_path / "problems.jsonl").write_text(json.dumps({"problem_id": "syn/7", "question": question}) + "\n")
    samples = [
        {
            "problem_id": "syn/7",
            "sample_index": 1,
            "answer": "35",
            "correct": False,
            "features": [0.1, 0.2],
            "response": "3+4=7, 7*5=35. \\boxed{35}",
        },
        {"problem_id": "syn/7", "sample_index": 0, "answer": "23", "correct": True, "features": [0.3, 0.1]},
        {"problem_id": "syn/7", "sample_index": 2, "answer": "24", "correct": False, "features": None},
    ]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    records = records_from_eval(tmp_path, step=40)
    assert [r["sample_index"] for r in records] == [0, 1, 2]
    assert all(r["step"] == 40 and r["prompt_id"] == "syn/7" and r["question"] == question for r in records)
    assert records[1]["response"].endswith("\\boxed{35}") and records[2]["features"] is None
    labelled = add_labels(records, "synthetic_error_mode")
    assert [r["label"] for r in labelled] == [None, "wrong_order", "off_by_one"]
    assert synthetic_error_mode(question, "99") == "other"
    assert synthetic_error_mode(question, "x") is None and synthetic_error_mode("no arithmetic", "3") is None
    with pytest.raises(ValueError, match="unknown labeler"):
        add_labels(records, "gsm8k_mode")

    path = write_records(labelled, tmp_path / "records.jsonl")
    assert load_records(path) == labelled


def test_validation_messages(tmp_path):
    good = {"step": 1, "prompt_id": 3, "correct": True}
    assert validate_record(good) is good
    for bad, message in [
        ({"step": 1, "correct": True}, "missing required fields \\['prompt_id'\\]"),
        ({**good, "step": "1"}, "step must be an int"),
        ({**good, "correct": 1}, "correct must be a bool"),
        ({**good, "prompt_id": [1]}, "prompt_id must be a str or int"),
        ({**good, "features": [1, "a"]}, "features must be a list of numbers"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate_record(bad)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match="bad.jsonl:2: invalid JSON"):
        load_records(path)
