"""`verl_meds.eval.run`: outputs of a full run with a scripted sampler, resuming, the CLI with a tiny model, features.

The trained-checkpoint run on MATH500 is `slow` (it builds or reuses the tiny warm-started model).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from verl_meds.eval.generation import Completion
from verl_meds.eval.run import EvalConfig, evaluate, sample_seed
from verl_meds.eval.samples import SampleStore

REPO_ROOT = Path(__file__).resolve().parents[2]
MATH500 = Path("/work/shared/data/math500/test.jsonl")

GOLDS = ["\\frac{1}{2}", "3", "x^2+1", "(1, 2)"]
RIGHT = ["so it is \\boxed{0.5}.", "\\boxed{3}", "\\boxed{1+x^2}", "\\boxed{(1,2)}"]  # equal under math-verify only
NUM_CORRECT = [0, 1, 3, 4]  # of n = 4 samples


def write_problems(path: Path) -> Path:
    lines = [{"problem": f"Question {i}?", "answer": gold} for i, gold in enumerate(GOLDS)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


class ScriptedGenerator:
    """Sample s of problem p is right iff s < NUM_CORRECT[p]; decided from the seed, so it survives resuming."""

    def __init__(self, n: int, seed: int = 0, fail_after_calls: int | None = None) -> None:
        self.texts: dict[int, str] = {}
        for p in range(len(GOLDS)):
            for s in range(n):
                wrong = "\\boxed{7}" if s % 2 else "I do not know"
                self.texts[sample_seed(seed, f"math500/{p}", s)] = RIGHT[p] if s < NUM_CORRECT[p] else wrong
        self.fail_after_calls = fail_after_calls
        self.calls: list[list[int]] = []

    def generate(self, messages, seeds):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise RuntimeError("interrupted")
        assert all(m[-1]["content"].endswith("Put the final answer in \\boxed{}.") for m in messages)
        self.calls.append(list(seeds))
        return [Completion(text=self.texts[s], num_tokens=len(self.texts[s]), truncated=False) for s in seeds]


def make_config(tmp_path: Path, out: str = "out", **overrides) -> EvalConfig:
    values = {
        "model": "scripted",
        "benchmarks": {"math500": str(write_problems(tmp_path / "problems.jsonl"))},
        "output_dir": str(tmp_path / out),
        "n_samples": 4,
        "batch_size": 3,
        "method": "Scripted",
        "progress": False,
    }
    values.update(overrides)
    return EvalConfig(**values)


def test_full_run_writes_every_output_with_exact_values(tmp_path):
    config = make_config(tmp_path)
    summary = evaluate(config, ScriptedGenerator(4))
    out = Path(config.output_dir)

    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 16
    assert {(r["problem_id"], r["sample_index"]) for r in lines} == {
        (f"math500/{p}", s) for p in range(4) for s in range(4)
    }
    by_key = {(r["problem_id"], r["sample_index"]): r for r in lines}
    assert by_key[("math500/0", 0)]["answer"] is None and by_key[("math500/0", 0)]["correct"] is False
    assert by_key[("math500/0", 1)]["answer"] == "7" and by_key[("math500/0", 1)]["correct"] is False
    assert by_key[("math500/2", 0)]["answer"] == "1+x^2" and by_key[("math500/2", 0)]["correct"] is True
    assert by_key[("math500/1", 0)]["response"] == "\\boxed{3}"
    for p, c in enumerate(NUM_CORRECT):
        assert sum(by_key[(f"math500/{p}", s)]["correct"] for s in range(4)) == c

    problems = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert [p["ground_truth"] for p in problems] == GOLDS
    assert problems[0]["question"] == "Question 0? Put the final answer in \\boxed{}."

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    entry = on_disk["benchmarks"]["math500"]
    assert on_disk["n"] == 4 and on_disk["ks"] == [1, 2, 4] and on_disk["temperature"] == 1.0
    assert on_disk["method"] == "Scripted" and on_disk["backend"] == "custom"
    assert entry["pass@1"] == pytest.approx(8 / 16)
    assert entry["pass@2"] == pytest.approx((0 + 0.5 + 1 + 1) / 4)
    assert entry["pass@4"] == pytest.approx(0.75)
    assert entry["problems"] == {f"math500/{p}": [4, c] for p, c in enumerate(NUM_CORRECT)}
    np.testing.assert_allclose(entry["curve"], [0.5, 0.625, 0.6875, 0.75])
    assert on_disk["average"]["pass@4"] == pytest.approx(0.75)

    table = (out / "table.md").read_text().splitlines()
    assert table[0] == "| Method | MATH500 pass@1 | MATH500 pass@4 | Avg. pass@1 | Avg. pass@4 |"
    assert table[2] == "| Scripted | 50.0 | 75.0 | 50.0 | 75.0 |"
    latex = (out / "table.tex").read_text()
    assert "\\multicolumn{2}{c}{MATH500}" in latex and "Scripted & 50.0 & 75.0 & 50.0 & 75.0 \\\\" in latex

    import matplotlib.image

    image = matplotlib.image.imread(out / "pass_at_k.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_resume_draws_only_missing_samples_and_gives_the_same_summary(tmp_path):
    reference = evaluate(make_config(tmp_path, "reference"), ScriptedGenerator(4))
    config = make_config(tmp_path)
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate(config, ScriptedGenerator(4, fail_after_calls=2))
    assert len(SampleStore(Path(config.output_dir) / "samples.jsonl").load()) == 6
    with open(Path(config.output_dir) / "samples.jsonl", "a", encoding="utf-8") as f:
        f.write('{"benchmark": "math500", "problem_id": "math500/3", "ind')  # a write cut short by a crash

    resumed = ScriptedGenerator(4)
    summary = evaluate(config, resumed)
    drawn = [seed for call in resumed.calls for seed in call]
    assert len(drawn) == 10 and len(set(drawn)) == 10
    first_six = {sample_seed(0, f"math500/{s // 4}", s % 4) for s in range(6)}
    assert not first_six & set(drawn)
    assert summary["benchmarks"] == reference["benchmarks"]

    again = ScriptedGenerator(4)
    evaluate(config, again)
    assert again.calls == []  # everything is done: nothing is regenerated

    more = ScriptedGenerator(6)
    summary6 = evaluate(make_config(tmp_path, n_samples=6), more)
    assert sorted(len(call) for call in more.calls) == [2, 3, 3]  # 4 problems x 2 new sample indices
    assert summary6["n"] == 6 and summary6["benchmarks"]["math500"]["num_samples"] == 24

    with pytest.raises(ValueError, match="temperature"):
        evaluate(make_config(tmp_path, temperature=0.7), ScriptedGenerator(4))


def test_sample_store_repairs_a_torn_tail_and_keeps_first_duplicates(tmp_path):
    store = SampleStore(tmp_path / "samples.jsonl")
    assert store.load() == {}
    record = {"benchmark": "b", "problem_id": "b/0", "index": 0, "sample_index": 0, "answer": "1", "correct": True}
    store.append([record, {**record, "correct": False}, {**record, "sample_index": 1}])
    (tmp_path / "samples.jsonl").open("a").write('{"benchmark": "b", "problem_id"')
    loaded = store.load()
    assert list(loaded) == [("b/0", 0), ("b/0", 1)] and loaded[("b/0", 0)]["correct"] is True
    assert (tmp_path / "samples.jsonl").read_text().endswith("}\n")
    (tmp_path / "samples.jsonl").open("a").write('{"problem_id": "b/0"}\n')
    with pytest.raises(ValueError, match=r"samples.jsonl:4: sample line lacks fields"):
        store.load()


def test_config_validation():
    with pytest.raises(ValueError, match="n_samples"):
        EvalConfig(model="m", benchmarks={"x": None}, output_dir="o", n_samples=0)
    with pytest.raises(ValueError, match=r"ks must lie in 1..n_samples=4"):
        EvalConfig(model="m", benchmarks={"x": None}, output_dir="o", n_samples=4, ks=[8])
    with pytest.raises(ValueError, match="backend"):
        EvalConfig(model="m", benchmarks={"x": None}, output_dir="o", backend="tgi")
    assert EvalConfig(model="/ckpts/meds_step100/", benchmarks={"x": None}, output_dir="o").method == "meds_step100"


@pytest.mark.skipif(not MATH500.is_file(), reason="shared MATH500 copy not present")
def test_cli_end_to_end_on_math500_with_a_tiny_random_model(tiny_random_model_dir, tmp_path):
    out = tmp_path / "eval"
    command = [
        sys.executable,
        "-m",
        "verl_meds.eval",
        "run",
        "--model",
        str(tiny_random_model_dir),
        "--benchmark",
        f"math500={MATH500}",
        "--limit",
        "2",
        "--n",
        "3",
        "--max-new-tokens",
        "6",
        "--out",
        str(out),
        "--threads",
        "1",
        "--no-progress",
        "--method",
        "random",
    ]
    result = subprocess.run(
        command,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| random | 0.0 | 0.0 | 0.0 | 0.0 |" in result.stdout
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 6 and {s["problem_id"] for s in samples} == {"math500/0", "math500/1"}
    assert all(0 < s["num_tokens"] <= 6 and isinstance(s["response"], str) for s in samples)
    assert all(s["correct"] is False for s in samples)  # random weights never box the right answer
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "hf" and summary["benchmarks"]["math500"]["num_problems"] == 2
    assert summary["benchmarks"]["math500"]["problems"] == {"math500/0": [3, 0], "math500/1": [3, 0]}
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["n_samples"] == 3 and run_config["resolved_backend"] == "hf"
    assert (out / "table.tex").read_text().count("\\\\") == 3 and (out / "pass_at_k.png").stat().st_size > 10_000


def test_hf_features_match_the_reference_logit_lens(tiny_random_model_dir):
    """Features of a scripted response equal the logit lens computed from `output_hidden_states`."""
    import torch

    from verl_meds.config import FeatureConfig
    from verl_meds.eval.generation import HFGenerator, render_prompt
    from verl_meds.features import find_final_norm, logit_lens_from_hidden_states

    torch.set_num_threads(1)
    generator = HFGenerator(
        str(tiny_random_model_dir), max_new_tokens=12, feature_config=FeatureConfig(layers="all", final_norm=True)
    )
    tok = generator.tokenizer
    messages = [
        [{"role": "user", "content": "What is 3+4*5? Put the final answer in \\boxed{}."}],
        [{"role": "user", "content": "What is 12+3? Put the final answer in \\boxed{}."}],
    ]
    replies = ["4*5=20, 3+20=23. \\boxed{23}", "no idea"]
    prompts = tok(
        [render_prompt(tok, m) for m in messages], return_tensors="pt", padding=True, add_special_tokens=False
    )
    reply_ids = [tok.encode(text, add_special_tokens=False) + [tok.eos_token_id] for text in replies]
    width = max(len(ids) for ids in reply_ids)
    padded = [ids + [tok.pad_token_id] * (width - len(ids)) for ids in reply_ids]
    scripted = torch.cat([prompts["input_ids"], torch.tensor(padded)], dim=1)  # (2, P + T)
    generator.model.generate = lambda **kwargs: scripted

    completions = generator.generate(messages, seeds=[0, 1])
    assert [c.text for c in completions] == replies
    assert [c.num_tokens for c in completions] == [len(ids) for ids in reply_ids]
    assert completions[1].features is None and len(completions[0].features) == 2

    prompt_len = prompts["input_ids"].shape[1]
    answer_at = prompt_len + reply_ids[0].index(
        tok.convert_tokens_to_ids("2"), reply_ids[0].index(tok.convert_tokens_to_ids("\\boxed{"))
    )
    row = scripted[:1, : prompt_len + len(reply_ids[0])]
    mask = torch.ones_like(row)
    mask[0, :prompt_len] = prompts["attention_mask"][0]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hidden = generator.model(
            input_ids=row, attention_mask=mask, position_ids=positions, output_hidden_states=True
        ).hidden_states
    expected = logit_lens_from_hidden_states(
        hidden,
        torch.tensor([answer_at - 1]),
        row[:, answer_at],
        generator.model.lm_head.weight,
        find_final_norm(generator.model),
        [1, 2],
        final_norm=True,
    )
    np.testing.assert_allclose(completions[0].features, expected[0].numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not MATH500.is_file(), reason="shared MATH500 copy not present")
def test_trained_tiny_checkpoint_on_math500_and_the_synthetic_task(tmp_path):
    """The warm-started tiny model (built once, ~4 min, then cached): MATH500 runs end to end; on its own task it is
    right about 40% of the time, so pass@k rises with k."""
    from data_prep import synthetic
    from data_prep.tiny_model import build_tiny_model

    model_dir = build_tiny_model(REPO_ROOT / ".cache" / "tiny_cpu" / "model_seed0", seed=0)
    synthetic.write_synthetic(tmp_path / "synthetic", n_train=10, n_test=16, seed=0)
    config = EvalConfig(
        model=str(model_dir),
        output_dir=str(tmp_path / "eval"),
        n_samples=8,
        max_new_tokens=48,
        limit=3,
        progress=False,
        save_features=True,
        benchmarks={"math500": str(MATH500), "synthetic": str(tmp_path / "synthetic/test.parquet")},
    )
    summary = evaluate(config)
    assert summary["benchmarks"]["math500"]["num_samples"] == 24
    synthetic_entry = summary["benchmarks"]["synthetic"]
    assert 0.05 < synthetic_entry["pass@1"] < 0.9
    assert synthetic_entry["pass@8"] > synthetic_entry["pass@1"]
    samples = SampleStore(tmp_path / "eval" / "samples.jsonl").load().values()
    boxed = [s for s in samples if s["benchmark"] == "synthetic" and s["answer"] is not None]
    assert boxed and all(len(s["features"]) == 4 for s in boxed)  # last half of 8 layers


def test_console_script_and_recipe_are_wired():
    import ast

    tree = ast.parse((REPO_ROOT / "setup.py").read_text(encoding="utf-8"))
    call = next(
        node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    )
    entry_points = ast.literal_eval(next(kw.value for kw in call.keywords if kw.arg == "entry_points"))
    assert entry_points["console_scripts"] == ["verl-meds-eval = verl_meds.eval.run:main"]
    assert entry_points["verl.plugins"] == ["meds = verl_meds.verl.autoload"]
    recipe = REPO_ROOT / "recipes" / "eval" / "run_eval.sh"
    assert subprocess.run(["bash", "-n", str(recipe)], capture_output=True).returncode == 0
    usage = subprocess.run(["bash", str(recipe)], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "Usage:" in usage.stderr
