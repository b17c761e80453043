"""The per-rollout analysis dump writes valid records in the memory's order."""

import numpy as np
import pytest

from verl_meds.analysis.records import load_records
from verl_meds.verl.dump import AnalysisDump, DumpConfig

pytestmark = pytest.mark.requires_verl


def test_dump_writes_valid_records_in_order(tmp_path):
    path = tmp_path / "out" / "analysis.jsonl"
    dump = AnalysisDump(str(path))
    feats = np.arange(8, dtype=np.float32).reshape(4, 2)
    n = dump.write_step(
        step=3,
        order=np.array([2, 0, 1, 3]),
        prompt_ids=["a", "a", "b", "b"],
        sample_indices=[0, 1, 0, 1],
        correct=np.array([False, True, False, False]),
        answers=["5", "7", "", "9"],
        features=feats,
        valid=np.array([True, True, False, True]),
        cluster_sizes=np.array([1, 0, 0, 2]),
        penalties=np.array([0.069, 0.0, 0.0, 0.11]),
    )
    assert n == 4
    records = load_records(path)
    assert [r["prompt_id"] for r in records] == ["b", "a", "a", "b"]
    assert records[0]["features"] is None and records[0]["answer"] is None  # row 2: no answer token
    assert records[1]["features"] == [0.0, 1.0] and records[1]["cluster_size"] == 1
    dump.write_step(
        4,
        np.array([0]),
        ["a"],
        [0],
        np.array([True]),
        ["1"],
        feats[:1],
        np.array([True]),
        np.array([0]),
        np.array([0.0]),
    )
    assert len(load_records(path)) == 5  # appended, not overwritten


def test_dump_config_validation():
    assert DumpConfig.from_dict(None).enable is False
    with pytest.raises(ValueError, match="unknown meds_dump keys"):
        DumpConfig.from_dict({"enabled": True})
    with pytest.raises(ValueError, match="filename"):
        DumpConfig(filename="a/b.jsonl")
