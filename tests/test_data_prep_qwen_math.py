"""data_prep.qwen_math: the GPU training and validation files in the authors' Qwen-Math prompt format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.qwen_math import (
    DAPO_INDEX_OFFSET,
    QWEN_MATH_SYSTEM_PROMPT,
    build,
    dapo_question,
    qwen_math_messages,
    read_dapo_math,
    read_math_lvl3to5,
)
from data_prep.verl_format import read_parquet

DATA_DIR = Path("/work/shared/data")
MATH_LVL3TO5 = DATA_DIR / "math_lvl3to5" / "train.jsonl"
needs_shared = pytest.mark.skipif(not MATH_LVL3TO5.is_file(), reason="shared data copy not available")

DAPO_INSTRUCTION = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_REMINDER = '\n\nRemember to put your answer on its own line after "Answer:".'


def dapo_original(problem: str, answer: str, uid: str) -> dict:
    """A row as in the original DAPO-Math-17K release (chat prompt wrapping the problem, answer in reward_model)."""
    return {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": DAPO_INSTRUCTION + problem + DAPO_REMINDER}],
        "ability": "MATH",
        "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": uid},
    }


DAPO_ROWS = [
    dapo_original("In triangle $ABC$, $AB = 13$, $BC = 14$ and $CA = 15$. Find the area of the triangle.", "84", "a"),
    dapo_original("Find the number of positive divisors of $2024$.", "12", "b"),
    # The original release repeats every problem; the repeat is kept once.
    dapo_original("Find the number of positive divisors of $2024$.", "12", "c"),
    dapo_original("Compute $\\sum_{k=1}^{10} k^2$.", "385", "d"),
]


@pytest.fixture
def dapo_file(tmp_path):
    path = tmp_path / "dapo-math-17k.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in DAPO_ROWS), encoding="utf-8")
    return path


def test_messages_are_one_system_prompt_and_the_raw_problem():
    messages = qwen_math_messages("  What is $1+1$?\n")
    assert messages == [
        {"role": "system", "content": QWEN_MATH_SYSTEM_PROMPT},
        {"role": "user", "content": "What is $1+1$?"},
    ]


def test_templated_text_is_refused():
    with pytest.raises(ValueError, match="im_start"):
        qwen_math_messages("<|im_start|>user\nWhat is 2?<|im_end|>")


def test_dapo_instruction_is_removed_in_every_release_format():
    problem = "Find $x$ if $2x = 6$."
    assert dapo_question([{"role": "user", "content": DAPO_INSTRUCTION + problem + DAPO_REMINDER}]) == problem
    # The "processed" release has the problem itself as a string.
    assert dapo_question(problem) == problem
    with pytest.raises(ValueError, match="no user turn"):
        dapo_question([{"role": "assistant", "content": problem}])


def test_dapo_rows_are_deduplicated_and_indexed_after_the_offset(dapo_file):
    rows = read_dapo_math(dapo_file)
    assert [r["extra_info"]["question"] for r in rows] == [
        "In triangle $ABC$, $AB = 13$, $BC = 14$ and $CA = 15$. Find the area of the triangle.",
        "Find the number of positive divisors of $2024$.",
        "Compute $\\sum_{k=1}^{10} k^2$.",
    ]
    assert [r["extra_info"]["index"] for r in rows] == [DAPO_INDEX_OFFSET + i for i in range(3)]
    assert [r["reward_model"]["ground_truth"] for r in rows] == ["84", "12", "385"]
    for row in rows:
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert "Answer:" not in row["prompt"][1]["content"]


def test_dapo_processed_and_label_formats(tmp_path):
    processed = {"prompt": "Find $y$ if $y + 1 = 3$.", "solution": "2", "reward_model": {"ground_truth": "2"}}
    labelled = {"prompt": [{"role": "user", "content": "What is $3 \\cdot 4$?"}], "label": "12"}
    path = tmp_path / "dapo.json"
    path.write_text(json.dumps([processed, labelled]), encoding="utf-8")
    rows = read_dapo_math(path)
    assert [(r["extra_info"]["question"], r["reward_model"]["ground_truth"]) for r in rows] == [
        ("Find $y$ if $y + 1 = 3$.", "2"),
        ("What is $3 \\cdot 4$?", "12"),
    ]


def test_math_is_built_from_question_not_the_rendered_prompt(tmp_path):
    rendered = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nQ?<|im_end|>"
    records = [
        {"question": "What is $2+2$?", "answer": "4", "prompt": [{"role": "user", "content": rendered}]},
        {"question": "Unanswered?", "answer": "", "prompt": [{"role": "user", "content": rendered}]},
        {"question": "What is $3^2$?", "answer": "9", "prompt": [{"role": "user", "content": rendered}]},
    ]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    rows = read_math_lvl3to5(path)
    assert [r["extra_info"]["index"] for r in rows] == [0, 2]
    assert [r["prompt"][1]["content"] for r in rows] == ["What is $2+2$?", "What is $3^2$?"]
    assert all("<|im_start|>" not in m["content"] for r in rows for m in r["prompt"])


@needs_shared
def test_build_writes_every_file_the_recipes_read(tmp_path, dapo_file):
    written = build(tmp_path / "out", data_dir=DATA_DIR, dapo_path=dapo_file, limit=25)
    assert set(written) == {
        "math_lvl3to5_train",
        "dapo_math_17k_train",
        "unified_math_train",
        "aime24_test",
        "math500_test",
    }
    math_rows = read_parquet(written["math_lvl3to5_train"])
    unified = read_parquet(written["unified_math_train"])
    assert len(math_rows) == 25 and len(unified) == 25 + 3
    indices = [r["extra_info"]["index"] for r in unified]
    assert len(set(indices)) == len(indices)
    assert {r["data_source"] for r in unified} == {"math_lvl3to5", "dapo_math_17k"}
    aime = read_parquet(written["aime24_test"])
    assert len(aime) == 25 and aime[0]["reward_model"]["ground_truth"] == "204"
    for path in written.values():
        for row in read_parquet(path):
            assert [m["role"] for m in row["prompt"]] == ["system", "user"]
            assert row["prompt"][0]["content"] == QWEN_MATH_SYSTEM_PROMPT
            assert row["prompt"][1]["content"] == row["extra_info"]["question"]


@needs_shared
def test_build_without_dapo_writes_math_only(tmp_path):
    written = build(tmp_path, data_dir=DATA_DIR, limit=3)
    assert "unified_math_train" not in written and not (tmp_path / "unified_math_train.parquet").exists()
    first = read_parquet(written["math_lvl3to5_train"])[0]
    source = json.loads(MATH_LVL3TO5.read_text(encoding="utf-8").splitlines()[0])
    assert first["prompt"][1]["content"] == source["question"].strip()
    assert first["reward_model"]["ground_truth"] == source["answer"]


def test_missing_math_copy_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MATH level 3-5"):
        build(tmp_path, math_path=tmp_path / "nope.jsonl", data_dir=tmp_path)
