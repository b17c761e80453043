"""Tests for ``data_prep.smollm2`` that need neither the model package nor the weights (seconds).

The real model (conversion, the logit lens on SmolLM2) is checked in ``tests/test_features_smollm2.py``.
"""

from __future__ import annotations

import importlib.util
import re
from types import SimpleNamespace

import pytest

from data_prep import smollm2
from data_prep.smollm2 import SingleDigitProblem
from data_prep.verl_format import EXTRA_INFO_FIELDS, VERL_COLUMNS, read_parquet
from verl_meds.answer import extract_boxed
from verl_meds.verl.reward import compute_score


def test_task_has_every_single_digit_sum_and_product_except_the_examples():
    problems = smollm2.all_single_digit_problems()
    assert len(problems) == len(set(problems)) == 198
    assert not set(smollm2.WORKED_EXAMPLES.values()) & set(problems)
    for p in problems:
        expected = int(eval(p.expression, {"__builtins__": {}}, {}))  # noqa: S307 - digits and one operator
        assert p.answer == expected
        assert p.question == f"What is {p.expression}?"


@pytest.mark.parametrize("bad", [(10, "+", 1), (1, "-", 1), (True, "+", 1)])
def test_problem_rejects_out_of_range_operands_and_unknown_operators(bad):
    with pytest.raises(ValueError, match=r"must be"):
        SingleDigitProblem(*bad)


def test_split_is_disjoint_balanced_and_seeded():
    splits = smollm2.split_single_digit(n_test=40, seed=0)
    train, test = splits["train"], splits["test"]
    assert len(test) == 40 and len(train) == 158
    assert not set(train) & set(test)
    assert sum(p.op == "+" for p in test) == sum(p.op == "*" for p in test) == 20
    assert smollm2.split_single_digit(n_test=40, seed=0) == splits
    assert smollm2.split_single_digit(n_test=40, seed=1)["test"] != test
    with pytest.raises(ValueError, match="n_test"):
        smollm2.split_single_digit(n_test=41)


def test_prompt_is_one_worked_example_of_the_same_operation_then_the_question():
    problem = SingleDigitProblem(7, "*", 8)
    messages = smollm2.prompt_messages(problem)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    example = smollm2.WORKED_EXAMPLES["*"]
    assert messages[0]["content"].startswith(example.question)
    assert extract_boxed(messages[1]["content"]) == str(example.answer)
    assert compute_score("x", messages[1]["content"], str(example.answer))["acc"] == 1.0
    assert messages[2]["content"] == "What is 7*8? " + smollm2.INSTRUCTION


def test_records_follow_the_verl_format_and_the_reward_grades_them(tmp_path):
    paths = smollm2.write_single_digit(tmp_path, n_test=10, seed=0)
    rows = {split: read_parquet(paths[split]) for split in ("train", "val")}
    assert len(rows["train"]) == 188 and len(rows["val"]) == 10
    indices = [r["extra_info"]["index"] for split in rows.values() for r in split]
    assert len(set(indices)) == len(indices)
    for row in rows["train"][:20] + rows["val"]:
        assert tuple(row) == VERL_COLUMNS and tuple(row["extra_info"]) == EXTRA_INFO_FIELDS
        assert row["data_source"] == smollm2.DATA_SOURCE
        a, op, b = re.fullmatch(r"What is (\d)([+*])(\d)\?", row["extra_info"]["question"]).groups()
        problem = SingleDigitProblem(int(a), op, int(b))
        assert row["reward_model"]["ground_truth"] == row["extra_info"]["answer"] == str(problem.answer)
        assert row["prompt"] == smollm2.prompt_messages(problem)
        assert row["extra_info"]["index"] == smollm2.problem_index(problem)
        right = f"{problem.expression}={problem.answer}. The answer is \\boxed{{{problem.answer}}}."
        assert compute_score("x", right, row["reward_model"]["ground_truth"])["acc"] == 1.0
        wrong = f"The answer is \\boxed{{{problem.answer + 1}}}."
        assert compute_score("x", wrong, row["reward_model"]["ground_truth"])["acc"] == 0.0


def test_missing_package_error_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == smollm2.PACKAGE else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match=re.escape(smollm2.PIP_INSTALL)):
        smollm2.find_gguf()


def test_package_without_weights_error_names_the_pip_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    empty = SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: empty if name == smollm2.PACKAGE else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match=re.escape(smollm2.PIP_INSTALL)):
        smollm2.find_gguf()


def test_clear_quantized_marks_drops_every_mark_and_reports_it():
    config = SimpleNamespace(quantization_config={"quant_method": "gguf"})
    model = SimpleNamespace(hf_quantizer=object(), is_quantized=True, quantization_method="gguf", config=config)
    removed = smollm2.clear_quantized_marks(model)
    assert removed == ["hf_quantizer", "is_quantized", "quantization_method", "config.quantization_config"]
    assert model.hf_quantizer is None and not model.is_quantized and model.quantization_method is None
    assert getattr(model.config, "quantization_config", None) is None
    assert smollm2.clear_quantized_marks(model) == []


def test_convert_refuses_to_replace_a_foreign_folder(monkeypatch, tmp_path):
    gguf = tmp_path / smollm2.GGUF_NAME
    gguf.write_bytes(b"not really")
    monkeypatch.setattr(smollm2, "find_gguf", lambda: gguf)
    foreign = tmp_path / "model"
    foreign.mkdir()
    (foreign / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="refusing to replace"):
        smollm2.convert_smollm2(foreign)
