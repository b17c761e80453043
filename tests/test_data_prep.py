"""Tests for ``data_prep``: synthetic task, verl parquet format, GSM8K/MATH conversion, tiny model builder.

The full tiny-model build (about 3 minutes on one CPU thread) is marked ``slow``; everything else runs in seconds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep import gsm8k, synthetic
from data_prep.synthetic import FAULTY_PROCEDURES, PROCEDURES, Problem
from data_prep.verl_format import BOXED_INSTRUCTION, EXTRA_INFO_FIELDS, VERL_COLUMNS, read_parquet

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_TRAIN = Path("/work/shared/data/gsm8k/train.jsonl")


def python_eval(expression: str) -> int:
    """Independent evaluator: Python's own arithmetic on a digits/operators-only string."""
    assert re.fullmatch(r"[0-9+\-*() ]+", expression), expression
    return int(eval(expression, {"__builtins__": {}}, {}))  # noqa: S307 - the string is checked above


# ------------------------------------------------------------------------------------------------------------------
# Synthetic task


def test_generator_is_deterministic_by_seed():
    first = synthetic.generate_problems(300, seed=3)
    assert first == synthetic.generate_problems(300, seed=3)
    assert first != synthetic.generate_problems(300, seed=4)
    assert synthetic.generate_problems(100, seed=3) == first[:100]
    assert len(set(first)) == len(first)
    assert {p.form for p in first} == set(synthetic.FORMS)


def test_answers_match_an_independent_evaluator():
    for problem in synthetic.generate_problems(500, seed=0):
        assert problem.answer == python_eval(problem.expression)
        assert problem.answer >= 0
        assert problem.question == f"What is {problem.expression}?"
        assert synthetic.parse_question(problem.question) == problem
        for (lo, hi), value in zip(synthetic.OPERAND_RANGES[problem.form], problem.operands, strict=True):
            assert lo <= value <= hi
            assert value < 100


def test_splits_are_disjoint_and_test_split_depends_only_on_n_test():
    splits = synthetic.split_problems(n_train=400, n_test=50, seed=1)
    assert len(splits["train"]) == 400 and len(splits["test"]) == 50
    assert not set(splits["train"]) & set(splits["test"])
    assert synthetic.split_problems(n_train=10, n_test=50, seed=1)["test"] == splits["test"]


def test_generator_rejects_bad_requests():
    with pytest.raises(ValueError, match="n must be in"):
        synthetic.generate_problems(-1)
    with pytest.raises(ValueError, match="unknown or empty forms"):
        synthetic.generate_problems(3, forms=["a-b"])
    with pytest.raises(ValueError, match=r"n must be in \[0, 864\]"):
        synthetic.generate_problems(865, forms=["(a+b)*c"])
    assert len(synthetic.generate_problems(3008)) == 3008
    with pytest.raises(ValueError, match="not a synthetic question"):
        synthetic.parse_question("How many apples?")
    with pytest.raises(ValueError, match="valid names"):
        synthetic.get_procedure("guess")


@pytest.mark.parametrize(
    ("form", "operands", "expected"),
    [
        # Worked by hand: 4*6=24, 17+24=41; (17+4)*6; 17+(4+6); 7+4 -> 1 and 1+2 -> 3 (carry dropped); 41+1.
        (
            "a+b*c",
            (17, 4, 6),
            {"correct": 41, "wrong_order": 126, "add_for_mul": 27, "dropped_carry": 31, "off_by_one": 42},
        ),
        # 8+6=14, 14*7=98; 8+6*7=50; 8+6+7=21; 8+6 -> 4, 4*7=28; 99.
        (
            "(a+b)*c",
            (8, 6, 7),
            {"correct": 98, "wrong_order": 50, "add_for_mul": 21, "dropped_carry": 28, "off_by_one": 99},
        ),
        # 12+9=21, 3*21=63; 3*12+9=45; 3+12+9=24; 12+9 -> 11 (2+9 -> 1, 1+0 -> 1), 3*11=33; 64.
        (
            "a*(b+c)",
            (3, 12, 9),
            {"correct": 63, "wrong_order": 45, "add_for_mul": 24, "dropped_carry": 33, "off_by_one": 64},
        ),
    ],
)
def test_procedures_on_hand_worked_examples(form, operands, expected):
    problem = Problem(form, operands)
    assert {name: fn(problem) for name, fn in PROCEDURES.items()} == expected
    for name in FAULTY_PROCEDURES:
        assert synthetic.error_modes(problem, expected[name]) == [name]
    assert synthetic.error_modes(problem, expected["correct"]) == []


def test_faulty_procedures_differ_from_correct_on_typical_inputs():
    problems = synthetic.generate_problems(1000, seed=5)
    differ = {
        name: sum(PROCEDURES[name](p) != python_eval(p.expression) for p in problems) / len(problems)
        for name in FAULTY_PROCEDURES
    }
    for name in ("wrong_order", "add_for_mul", "off_by_one"):
        assert differ[name] > 0.95, differ
    # dropped_carry only differs when an addition carries: about half of these problems.
    assert 0.3 < differ["dropped_carry"] < 0.7, differ
    # The faulty answers are mostly distinct from each other too, so a wrong answer names one error mode.
    distinct = [
        len({PROCEDURES[name](p) for name in FAULTY_PROCEDURES if PROCEDURES[name](p) != p.answer})
        == sum(PROCEDURES[name](p) != p.answer for name in FAULTY_PROCEDURES)
        for p in problems
    ]
    assert sum(distinct) / len(problems) > 0.9
    assert min(PROCEDURES[name](p) for p in problems for name in FAULTY_PROCEDURES) >= 0


def test_worked_solutions_follow_their_procedure():
    step_pattern = re.compile(r"(\d+)([+*\-])(\d+)=(\d+)")
    for problem in synthetic.generate_problems(200, seed=2):
        for name in PROCEDURES:
            text = synthetic.format_solution(problem, name)
            work, boxed = text.split(". \\boxed{")
            assert boxed == f"{PROCEDURES[name](problem)}}}"
            steps = [step_pattern.fullmatch(s).groups() for s in work.split(", ")]
            assert len(steps) == 2
            if name == "correct":
                for x, op, y, z in steps:
                    assert python_eval(f"{x}{op}{y}") == int(z)


# ------------------------------------------------------------------------------------------------------------------
# verl parquet format


def check_verl_rows(rows: list[dict], split: str) -> None:
    for i, row in enumerate(rows):
        assert list(row) == list(VERL_COLUMNS)
        assert row["ability"] == "math"
        assert isinstance(row["prompt"], list) and len(row["prompt"]) == 1
        assert set(row["prompt"][0]) == {"role", "content"} and row["prompt"][0]["role"] == "user"
        assert row["prompt"][0]["content"].endswith(" " + BOXED_INSTRUCTION)
        assert row["reward_model"] == {"style": "rule", "ground_truth": row["extra_info"]["answer"]}
        assert list(row["extra_info"]) == list(EXTRA_INFO_FIELDS)
        assert row["extra_info"]["split"] == split
        assert row["prompt"][0]["content"].startswith(row["extra_info"]["question"])
        assert isinstance(row["extra_info"]["index"], int)
        assert isinstance(row["reward_model"]["ground_truth"], str)
        if split == "synthetic":
            assert row["extra_info"]["index"] == i


def test_synthetic_cli_writes_verl_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep.synthetic",
            "--out",
            str(tmp_path),
            "--n-train",
            "40",
            "--n-test",
            "10",
            "--seed",
            "0",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "train.parquet" in result.stdout
    for split, n in (("train", 40), ("test", 10)):
        schema = pq.read_schema(tmp_path / f"{split}.parquet")
        assert schema.names == list(VERL_COLUMNS)
        prompt_type = schema.field("prompt").type
        assert pa.types.is_list(prompt_type)
        assert prompt_type.value_type == pa.struct([("role", pa.string()), ("content", pa.string())])
        assert schema.field("reward_model").type == pa.struct([("style", pa.string()), ("ground_truth", pa.string())])
        assert schema.field("extra_info").type == pa.struct(
            [("index", pa.int64()), ("split", pa.string()), ("question", pa.string()), ("answer", pa.string())]
        )
        rows = read_parquet(tmp_path / f"{split}.parquet")
        assert len(rows) == n
        check_verl_rows(rows, split)
        assert [r["extra_info"]["index"] for r in rows] == list(range(n))
        assert {r["data_source"] for r in rows} == {"meds_synthetic"}
        for row in rows:
            expression = re.fullmatch(r"What is (.+)\?", row["extra_info"]["question"]).group(1)
            assert row["reward_model"]["ground_truth"] == str(python_eval(expression))
    train_q = {r["extra_info"]["question"] for r in read_parquet(tmp_path / "train.parquet")}
    assert not train_q & {r["extra_info"]["question"] for r in read_parquet(tmp_path / "test.parquet")}


# ------------------------------------------------------------------------------------------------------------------
# GSM8K / MATH conversion


@pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason=f"shared GSM8K file {GSM8K_TRAIN} is not present")
def test_gsm8k_conversion_on_shared_file(tmp_path):
    out = tmp_path / "gsm8k_train.parquet"
    subprocess.run(
        [sys.executable, "-m", "data_prep.gsm8k", "--input", str(GSM8K_TRAIN), "--out", str(out), "--limit", "50"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = read_parquet(out)
    raw = [json.loads(line) for line in GSM8K_TRAIN.read_text(encoding="utf-8").splitlines()[:50]]
    assert len(rows) == 50
    check_verl_rows(rows, "train")
    assert [r["extra_info"]["index"] for r in rows] == list(range(50))
    assert {r["data_source"] for r in rows} == {"openai/gsm8k"}
    assert rows[0]["reward_model"]["ground_truth"] == "72"  # Natalia's clips
    for row, record in zip(rows, raw, strict=True):
        gold = record["answer"].split("#### ")[-1].strip().replace(",", "")
        assert row["reward_model"]["ground_truth"] == gold
        assert re.fullmatch(r"-?\d+(\.\d+)?", gold)
        assert row["extra_info"]["question"] == record["question"].strip()


def test_answer_extraction_helpers():
    assert gsm8k.extract_gsm8k_answer("so 3 + 4 = 7\n#### 1,234") == "1234"
    with pytest.raises(ValueError, match="no '####'"):
        gsm8k.extract_gsm8k_answer("the answer is 4")
    with pytest.raises(ValueError, match="empty answer"):
        gsm8k.extract_gsm8k_answer("#### ")
    assert gsm8k.extract_last_boxed(r"a \boxed{1} then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    with pytest.raises(ValueError, match="unbalanced"):
        gsm8k.extract_last_boxed(r"\boxed{\frac{1}{2}")
    assert gsm8k.gold_answer(27.0, "math") == "27"
    assert gsm8k.gold_answer(2.5, "math") == "2.5"
    assert gsm8k.gold_answer(["2", " 3 "], "math") == "2, 3"
    assert gsm8k.gold_answer("", "math") is None
    assert gsm8k.gold_answer(None, "math") is None
    with pytest.raises(ValueError, match="unknown answer style"):
        gsm8k.gold_answer("1", "latex")


def test_math_style_conversion_keeps_line_indices_and_skips_missing_answers(tmp_path, caplog):
    path = tmp_path / "math.jsonl"
    lines = [
        {"problem": "What is $1+1$?", "answer": "2"},
        {"problem": "Find $x$.", "answer": None},
        {"problem": "AMC style", "answer": 27.0},
        {"problem": "Minerva style", "answer": "", "solution": r"so \boxed{\frac{3}{4}}"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    out = gsm8k.convert_file(path, tmp_path / "math.parquet", style="math", data_source="lighteval/MATH")
    rows = read_parquet(out)
    check_verl_rows(rows, "math")
    assert [(r["extra_info"]["index"], r["reward_model"]["ground_truth"]) for r in rows] == [(0, "2"), (2, "27")]
    assert "skipped 2 records" in caplog.text
    boxed = gsm8k.convert_records(gsm8k.iter_jsonl(path), split="test", style="boxed", answer_field="solution")
    assert [r["reward_model"]["ground_truth"] for r in boxed if r["extra_info"]["index"] == 3] == [r"\frac{3}{4}"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "no answer marker", "answer": "4"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="record 0: no '####'"):
        gsm8k.convert_file(bad, tmp_path / "bad.parquet")
    bad.write_text(json.dumps({"answer": "#### 4"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="'question' is missing"):
        gsm8k.convert_file(bad, tmp_path / "bad.parquet")


# ------------------------------------------------------------------------------------------------------------------
# Tiny model: tokenizer and fast pieces


@pytest.fixture(scope="module")
def tiny_tokenizer():
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from data_prep import tiny_model

    problems = synthetic.generate_problems(300, seed=0)
    return tiny_model.build_tokenizer(tiny_model.tokenizer_corpus(problems, 300, seed=0), vocab_size=340)


def test_tokenizer_round_trip_after_save_and_auto_load(tiny_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from data_prep import tiny_model

    # A qwen2 config.json makes transformers 5 load the folder with its Qwen2 tokenizer class; it must agree.
    tiny_model.make_model(tiny_model.TinyModelConfig(), len(tiny_tokenizer), 2, 0).config.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.eos_token == "<|im_end|>" and loaded.pad_token == "<|endoftext|>"
    assert loaded.pad_token_id != loaded.eos_token_id
    assert 260 < len(loaded) <= 341
    problem = Problem("a+b*c", (24, 7, 3))
    messages = tiny_model.prompt_messages(problem)
    prompt = loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == tiny_model.render_chat(messages)
    assert prompt == (
        "<|im_start|>user\nWhat is 24+7*3? Put the final answer in \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
    )
    response = synthetic.format_solution(problem) + "<|im_end|>"
    texts = [prompt + response, "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "héllo, ﬁnal café ∑ 3.5"]
    for text in texts:
        ids = loaded.encode(text, add_special_tokens=False)
        assert ids == tiny_tokenizer.encode(text, add_special_tokens=False)
        assert loaded.decode(ids) == __import__("unicodedata").normalize("NFC", text)
    tokens = loaded.convert_ids_to_tokens(loaded.encode(response, add_special_tokens=False))
    boxed_at = tokens.index("\\boxed{")
    assert tokens[boxed_at + 1 :] == ["4", "5", "}", "<|im_end|>"]
    assert all(len(t) == 1 for t in tokens if t.isdigit())
    assert len(loaded.encode(prompt, add_special_tokens=False)) < 40


def test_tiny_model_shape_and_config_validation(tiny_tokenizer):
    from data_prep import tiny_model

    config = tiny_model.TinyModelConfig()
    tok = tiny_tokenizer
    model = tiny_model.make_model(config, len(tok), tok.eos_token_id, tok.pad_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    assert 200_000 < n_params < 2_000_000
    assert model.config.num_hidden_layers >= 8 and model.config.hidden_size == 64
    assert model.config.num_key_value_heads == 2 and not model.config.tie_word_embeddings
    assert config.config_hash(0) == tiny_model.TinyModelConfig().config_hash(0) != config.config_hash(1)
    assert config.config_hash(0) != tiny_model.TinyModelConfig(train_steps=10).config_hash(0)
    with pytest.raises(ValueError, match="sum to 1"):
        tiny_model.TinyModelConfig(mix={"correct": 0.5})
    with pytest.raises(ValueError, match="unknown procedures"):
        tiny_model.TinyModelConfig(mix={"correct": 0.5, "guess": 0.5})
    with pytest.raises(ValueError, match="accuracy_band"):
        tiny_model.TinyModelConfig(accuracy_band=(0.5, 0.2))
    assert tiny_model.resolve_model_path("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"
    assert tiny_model.resolve_model_path("/some/local/folder") == "/some/local/folder"


def test_sft_mix_rates_and_grading():
    from data_prep import tiny_model

    problems = synthetic.generate_problems(300, seed=0)
    pairs = tiny_model.sample_sft_examples(problems, tiny_model.DEFAULT_MIX, 4000, seed=0)
    for name, share in tiny_model.DEFAULT_MIX.items():
        assert abs(sum(proc == name for _, proc in pairs) / len(pairs) - share) < 0.03
    form_share = sum(p.form == "a+b*c" for p, _ in pairs) / len(pairs)
    assert abs(form_share - 1 / 3) < 0.03
    chosen = problems[:3]
    responses = [synthetic.format_solution(chosen[0]), synthetic.format_solution(chosen[1], "off_by_one"), "no idea"]
    grades = tiny_model.grade_responses(chosen, responses)
    assert grades["accuracy"] == pytest.approx(1 / 3)
    assert grades["mode/off_by_one"] == pytest.approx(1 / 3)
    assert grades["no_answer"] == pytest.approx(1 / 3)
    assert tiny_model.extract_boxed_int("x \\boxed{3} then \\boxed{ 41 }") == 41
    assert tiny_model.extract_boxed_int("\\boxed{x}") is None


def test_tiny_build_pipeline_end_to_end_with_a_tiny_budget(tmp_path):
    pytest.importorskip("accelerate")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep import tiny_model

    torch.set_num_threads(1)
    config = tiny_model.TinyModelConfig(
        train_steps=2, batch_size=8, n_test=8, max_new_tokens=6, tokenizer_corpus_size=200, accuracy_band=(0.0, 1.0)
    )
    out = tiny_model.build_tiny_model(tmp_path / "tiny", seed=0, config=config)
    info = json.loads((out / tiny_model.INFO_FILE).read_text())
    assert info["config_hash"] == config.config_hash(0) and info["train_steps"] == 2
    assert set(info["sampled_grades"]) >= {"accuracy", "no_answer"}
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.use_cache and model.config.model_type == "qwen2"
    assert sum(p.numel() for p in model.parameters()) == info["num_parameters"]
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert tiny_model.build_tiny_model(tmp_path / "tiny", seed=0, config=config) == out  # cache hit: no rebuild
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    with pytest.raises(RuntimeError, match="outside the band"):
        tiny_model.build_tiny_model(
            tmp_path / "never",
            seed=0,
            config=tiny_model.TinyModelConfig(
                train_steps=1,
                batch_size=4,
                n_test=4,
                max_new_tokens=2,
                tokenizer_corpus_size=100,
                max_rounds=1,
                accuracy_band=(0.9, 1.0),
            ),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # no staging folder left behind
    (tmp_path / "user_folder").mkdir()
    (tmp_path / "user_folder" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a tiny-model folder"):
        tiny_model.build_tiny_model(tmp_path / "user_folder", seed=0, config=config)
    assert (tmp_path / "user_folder" / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------------------------------------------------------
# Tiny model: full build (slow)


@pytest.mark.slow
def test_full_tiny_model_build_reaches_the_accuracy_band():
    pytest.importorskip("accelerate")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data_prep import tiny_model

    torch.set_num_threads(1)
    # Built once into the repository cache (gitignored) and reused while its config hash matches.
    out = tiny_model.build_tiny_model(REPO_ROOT / tiny_model.DEFAULT_TINY_DIR, seed=0)
    info = json.loads((out / tiny_model.INFO_FILE).read_text())
    assert 0.1 <= info["sampled_accuracy"] <= 0.8
    assert info["mix"] == tiny_model.DEFAULT_MIX
    model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert 200_000 < sum(p.numel() for p in model.parameters()) < 2_000_000
    # Re-measure with a different sampling seed and an independent grader (Python eval of the question).
    problems = synthetic.split_problems(n_train=0, n_test=200, seed=0)["test"]
    responses = tiny_model.sample_responses(model, tokenizer, problems, seed=123)
    boxed = [re.findall(r"\\boxed\{(\d+)\}", r) for r in responses]
    correct = [bool(b) and int(b[-1]) == python_eval(p.expression) for b, p in zip(boxed, problems, strict=True)]
    assert 0.08 <= sum(correct) / len(correct) <= 0.85
    wrong = [(p, int(b[-1])) for b, p, ok in zip(boxed, problems, correct, strict=True) if b and not ok]
    labeled = {mode for p, answer in wrong for mode in synthetic.error_modes(p, answer)}
    assert len(labeled) >= 3, labeled  # several distinct error modes show up in samples
