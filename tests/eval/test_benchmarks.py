"""`data_prep.benchmarks` on the shared offline copies: counts, gold answers, stable indices, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep import benchmarks
from data_prep.verl_format import EXTRA_INFO_FIELDS, VERL_COLUMNS, read_parquet
from verl_meds.eval.data import load_problems

DATA_DIR = Path("/work/shared/data")
REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    not (DATA_DIR / "math500" / "test.jsonl").is_file(), reason=f"shared benchmark copies not present under {DATA_DIR}"
)


def raw_lines(name: str) -> list[dict]:
    path = DATA_DIR / benchmarks.BENCHMARKS[name].local.location
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def last_box(text: str) -> str:
    """Independent reading of the last \\boxed{...}: walk right from its brace until the depth returns to 0."""
    start = text.rindex("\\boxed{") + len("\\boxed{")
    depth = 1
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[start:end].strip()
    raise AssertionError("unbalanced box")


@pytest.mark.parametrize("name", list(benchmarks.BENCHMARKS))
def test_full_local_copy_has_the_standard_size_and_golds(name):
    spec = benchmarks.BENCHMARKS[name]
    rows = benchmarks.load_benchmark(name, data_dir=DATA_DIR)
    raw = raw_lines(name)
    assert len(rows) == spec.num_problems == len(raw)
    assert [r["extra_info"]["index"] for r in rows] == list(range(len(raw)))
    for row in rows:
        assert list(row) == list(VERL_COLUMNS) and list(row["extra_info"]) == list(EXTRA_INFO_FIELDS)
        assert row["data_source"] == spec.data_source and row["extra_info"]["split"] == "test"
        assert row["reward_model"]["ground_truth"] == row["extra_info"]["answer"] != ""
        assert row["prompt"][0]["content"].endswith("Put the final answer in \\boxed{}.")
    golds = [r["reward_model"]["ground_truth"] for r in rows]
    if name in ("aime24", "math500"):
        assert golds == [str(line["answer"]).strip() for line in raw]
    elif name == "amc23":
        assert golds == [str(int(line["answer"])) for line in raw]
    elif name == "minerva_math":
        assert golds[0] == "1.6" and golds == [last_box(line["solution"]) for line in raw]
    elif name == "olympiadbench":
        assert not any(g.startswith("$") and g.endswith("$") and g.count("$") == 2 for g in golds)
        assert golds[1] == "\\frac{1}{2 n+2}" and raw[1]["final_answer"] == ["$\\frac{1}{2 n+2}$"]
    elif name == "gsm8k":
        assert golds == [line["answer"].split("#### ")[-1].strip().replace(",", "") for line in raw]


def test_cli_writes_parquet_with_stable_indices(tmp_path):
    command = [
        sys.executable,
        "-m",
        "data_prep.benchmarks",
        "--data-dir",
        str(DATA_DIR),
        "--out-dir",
        str(tmp_path),
        "--benchmarks",
        "aime24",
        "minerva_math",
        "--limit",
        "3",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "aime24.parquet"), str(tmp_path / "minerva_math.parquet")]
    rows = read_parquet(tmp_path / "aime24.parquet")
    assert [r["extra_info"]["index"] for r in rows] == [0, 1, 2]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["204", "113", "371"]
    problems = load_problems("aime24", tmp_path / "aime24.parquet")
    assert [p.problem_id for p in problems] == ["aime24/0", "aime24/1", "aime24/2"]
    assert problems[0].ground_truth == "204" and problems[0].messages[0]["role"] == "user"
    same = load_problems("aime24", DATA_DIR / "aime24" / "test.jsonl", limit=3)
    assert same == problems  # raw JSONL converted on the fly gives the same problems as the parquet


def test_source_resolution_and_errors(tmp_path, monkeypatch):
    spec = benchmarks.get_benchmark("math500")
    assert benchmarks.resolve_source(spec, data_dir=DATA_DIR) == (str(DATA_DIR / "math500/test.jsonl"), spec.local)
    monkeypatch.delenv(benchmarks.DATA_DIR_ENV, raising=False)
    assert benchmarks.resolve_source(spec, data_dir=tmp_path) == ("HuggingFaceH4/MATH-500", spec.hub)
    monkeypatch.setenv(benchmarks.DATA_DIR_ENV, str(DATA_DIR))
    assert benchmarks.resolve_source(spec)[1] is spec.local
    with pytest.raises(ValueError, match="unknown benchmark 'math501'"):
        benchmarks.get_benchmark("math501")
    assert benchmarks.strip_math_delimiters(" $x^2$ ") == "x^2"
    assert benchmarks.strip_math_delimiters("$a$, $b$") == "$a$, $b$"
