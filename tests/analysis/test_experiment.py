"""The error-collapse experiment's measurement and report (`verl_meds.analysis.experiment`) on hand-made runs.

Its training runs are real verl, exercised by `tests/e2e/test_tiny_cpu.py::test_error_collapse_experiment_smoke`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from data_prep.synthetic import FAULTY_PROCEDURES, FORMS, PROCEDURES, error_modes, format_solution, generate_problems
from verl_meds.analysis import experiment as ex
from verl_meds.answer import extract_boxed


@pytest.mark.parametrize("form", FORMS)
def test_labeller_names_the_faulty_procedure_that_wrote_the_response(form):
    """Responses written by each faulty procedure (worked steps + boxed answer) are labelled with that procedure,
    through the same text path as a model's response: extract the boxed answer, then label it."""
    problems = generate_problems(60, seed=3, forms=[form])
    checked = 0
    for problem in problems:
        for procedure in FAULTY_PROCEDURES:
            text = format_solution(problem, procedure)
            answer = extract_boxed(text)
            value = PROCEDURES[procedure](problem)
            assert answer is not None and int(answer) == value
            if value == problem.answer:  # e.g. dropped_carry on a problem without a carry: not an error
                continue
            label = ex.mode_label(problem.question, answer)
            assert procedure in label.split("+"), (problem, procedure, label)
            assert label == "+".join(error_modes(problem, value))  # several names only when procedures coincide
            checked += 1
    assert checked > 100
    problem = problems[0]
    unrelated = next(v for v in range(1000, 2000) if not error_modes(problem, v))
    assert ex.mode_label(problem.question, str(unrelated)) == "other"
    assert ex.mode_label(problem.question, None) == "no_answer"
    assert ex.mode_label(problem.question, "x+1") == "no_answer"


def test_group_mode_stats_on_hand_cases():
    stats = ex._group_mode_stats({"a": ["x", "x", "y"], "b": ["z"], "c": ["x", "x"]})
    assert stats["collapse_share"] == pytest.approx((2 / 3 + 1.0) / 2)  # b has one wrong answer: left out
    assert stats["distinct_modes"] == pytest.approx(1.5)
    assert stats["pooled_top_mode_share"] == pytest.approx(4 / 6)
    assert stats["other_share"] == 0.0 and stats["num_wrong"] == 6.0
    assert ex._group_mode_stats({"a": ["other", "x"]})["other_share"] == 0.5
    empty = ex._group_mode_stats({"a": ["x"]})
    assert math.isnan(empty["collapse_share"]) and empty["pooled_top_mode_share"] == 1.0
    assert math.isnan(ex._group_mode_stats({})["pooled_top_mode_share"])


def test_mean_ci_is_the_student_t_interval():
    mean, lo, hi = ex.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert hi - mean == pytest.approx(4.3027 / math.sqrt(3), abs=1e-3)  # t(0.975, 2) = 4.3027, sd = 1
    assert mean - lo == pytest.approx(hi - mean)
    assert ex.mean_ci([1.0, float("nan"), 3.0])[0] == 2.0
    one = ex.mean_ci([0.5])
    assert one[0] == 0.5 and math.isnan(one[1]) and math.isnan(one[2])
    assert all(math.isnan(v) for v in ex.mean_ci([]))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown method"):
        ex.ExperimentConfig(out="x", methods=["grpo", "nope"])
    with pytest.raises(ValueError, match="steps"):
        ex.ExperimentConfig(out="x", steps=0)
    with pytest.raises(ValueError, match="seeds"):
        ex.ExperimentConfig(out="x", seeds=[1, 1])


# ------------------------------------------------------------------------------------------------ run folders

PROBLEMS = generate_problems(4, seed=11)
QUESTIONS = {str(i): p.question for i, p in enumerate(PROBLEMS)}


def _wrong_answer(problem, procedure: str) -> int | None:
    value = PROCEDURES[procedure](problem)
    return None if value == problem.answer or error_modes(problem, value) != [procedure] else value


def write_run(folder: Path, seed: int, modes_per_step: list[list[str]], val_correct: list[int], val_n: int = 4):
    """A finished run: the trainer's dump (features separated by error mode) and one validation file."""
    rng = np.random.default_rng(seed)
    centres = {name: rng.normal(size=4) * 10 for name in FAULTY_PROCEDURES}
    lines = []
    for step, modes in enumerate(modes_per_step, start=1):
        for pid, problem in enumerate(PROBLEMS):
            for i, mode in enumerate(modes):
                wrong = _wrong_answer(problem, mode) if mode != "correct" else None
                correct = mode == "correct" or wrong is None
                answer = problem.answer if correct else wrong
                features = (centres.get(mode, np.zeros(4)) + 1e-4 * rng.normal(size=4)).tolist()
                lines.append(
                    {
                        "step": step,
                        "prompt_id": str(pid),
                        "sample_index": i,
                        "correct": correct,
                        "answer": str(answer),
                        "features": features,
                        "cluster_size": 0,
                        "penalty": 0.1 if not correct and step > 1 else 0.0,
                    }
                )
    dump = folder / "checkpoints" / "analysis.jsonl"
    dump.parent.mkdir(parents=True)
    dump.write_text("".join(json.dumps(line) + "\n" for line in lines))
    val = folder / "val"
    val.mkdir()
    rows = []
    for problem, c in zip(PROBLEMS, val_correct, strict=True):
        prompt = f"user\n{problem.question} Put the final answer in \\boxed{{}}.\nassistant\n"
        for j in range(val_n):
            ok = j < c
            pred = str(problem.answer if ok else PROCEDURES["wrong_order"](problem))
            rows.append(
                {
                    "input": prompt,
                    "output": f"\\boxed{{{pred}}}",
                    "score": 1.0 if ok else -1.0,
                    "acc": float(ok),
                    "pred": pred,
                    "step": len(modes_per_step),
                }
            )
    (val / f"{len(modes_per_step)}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "run.json").write_text(json.dumps({"method": folder.parent.name, "seed": seed, "status": "ok"}))


def test_validation_metrics_give_unbiased_pass_at_k_and_modes(tmp_path):
    write_run(tmp_path, 0, [["correct", "wrong_order"]], val_correct=[1, 0, 4, 2])
    (entry,) = ex.validation_step_metrics(tmp_path / "val", ks=(1, 2, 4, 8))
    # pass@1 = mean c/n; pass@2 = mean of 1 - C(n-c, 2)/C(n, 2) = (0.5 + 0 + 1 + 5/6) / 4
    assert entry["pass@1"] == pytest.approx((1 + 0 + 4 + 2) / 16)
    assert entry["pass@2"] == pytest.approx((0.5 + 0.0 + 1.0 + 5 / 6) / 4)
    assert entry["pass@4"] == pytest.approx(3 / 4) and "pass@8" not in entry  # k > n is left out
    assert entry["num_problems"] == 4.0
    assert entry["collapse_share"] == 1.0 and entry["distinct_modes"] == 1.0  # every wrong sample is wrong_order


def test_training_metrics_recover_error_modes_from_separated_features(tmp_path):
    modes = ["correct", "wrong_order", "wrong_order", "wrong_order", "add_for_mul", "add_for_mul", "add_for_mul"]
    write_run(tmp_path, 0, [modes, modes, ["correct"] * 2 + ["wrong_order"] * 5], val_correct=[1, 1, 1, 1])
    steps = ex.training_step_metrics(tmp_path / "checkpoints" / "analysis.jsonl", QUESTIONS)
    assert [s["step"] for s in steps] == [1.0, 2.0, 3.0]
    expected_acc = [
        np.mean([m == "correct" or _wrong_answer(p, m) is None for p in PROBLEMS for m in ms])
        for ms in (modes, modes, ["correct"] * 2 + ["wrong_order"] * 5)
    ]
    assert [s["accuracy"] for s in steps] == pytest.approx(expected_acc)
    assert steps[2]["collapse_share"] == 1.0 and steps[2]["distinct_modes"] == 1.0  # collapsed onto one mode
    assert steps[0]["distinct_modes"] > 1.0 and steps[0]["collapse_share"] < 1.0
    # Features separated by mode: the clusters recover the modes (HDBSCAN may split a tight blob: not exactly 1)
    assert steps[1]["nmi"] > 0.9 and steps[1]["ari"] > 0.8
    assert steps[0]["penalised"] == 0.0 and steps[1]["penalised"] > 0.0


def test_report_writes_table_with_intervals_paired_differences_and_plots(tmp_path):
    modes = ["correct", "correct", "wrong_order", "wrong_order", "add_for_mul", "off_by_one"]
    for seed in (0, 1, 2):
        write_run(tmp_path / "runs" / "dapo" / f"seed{seed}", seed, [modes, modes], val_correct=[1, 1, 2, 0])
        write_run(tmp_path / "runs" / "meds_dapo" / f"seed{seed}", seed, [modes, modes], val_correct=[2, 1, 2, seed])
    failed = tmp_path / "runs" / "grpo" / "seed0"
    failed.mkdir(parents=True)
    (failed / "run.json").write_text(json.dumps({"method": "grpo", "seed": 0, "status": "failed", "error": "boom"}))
    collected = ex.report_from_runs(tmp_path, QUESTIONS)
    assert set(collected) == {"dapo", "meds_dapo", "grpo"}
    table = (tmp_path / "table.md").read_text()
    dapo_pass1 = (1 + 1 + 2 + 0) / 16
    assert f"| DAPO | 3 | {dapo_pass1:.3f} [{dapo_pass1:.3f}, {dapo_pass1:.3f}]" in table  # same value every seed
    meds = [(2 + 1 + 2 + s) / 16 for s in (0, 1, 2)]
    mean, lo, hi = ex.mean_ci([m - dapo_pass1 for m in meds])
    assert f"| MEDS (DAPO) - DAPO | 3 | {mean:.3f} [{lo:.3f}, {hi:.3f}]" in table
    assert "| GRPO | 0 (+1 failed) |" in table
    for seed, value in enumerate(meds):
        assert f"| MEDS (DAPO) | {seed} | {value:.3f} |" in table
    # Every wrong held-out sample of the fabricated runs is wrong_order: the pooled mode mix says so.
    assert "| DAPO | 36 | 1.000 |" in table and "| wrong_order |" in table.replace("| method | wrong samples ", "")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meds_dapo"]["2"]["summary"]["pass@1"] == pytest.approx(meds[2])
    for name in ex.PLOTS:
        assert (tmp_path / name).stat().st_size > 10_000


def test_report_without_runs_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished run"):
        ex.report_from_runs(tmp_path, QUESTIONS)


def test_run_overrides_make_baselines_observe_only_and_seed_everything(tmp_path):
    cfg = ex.ExperimentConfig(out=str(tmp_path), steps=7, val_n=3)
    assets = {"train": Path("t.parquet"), "val": Path("v.parquet"), "model": Path("m")}
    dapo = ex.run_overrides(cfg, "dapo", 4, assets)
    meds = ex.run_overrides(cfg, "meds_dapo", 4, assets)
    for overrides in (dapo, meds):
        assert "data.seed=4" in overrides and "actor_rollout_ref.rollout.seed=4" in overrides
        assert "trainer.total_training_steps=7" in overrides and "trainer.test_freq=7" in overrides
        assert "actor_rollout_ref.rollout.val_kwargs.n=3" in overrides
    assert set(ex.OBSERVE_ONLY) <= set(dapo) and not set(ex.OBSERVE_ONLY) & set(meds)
    start = ex.run_overrides(cfg, ex.START, 0, assets)
    assert "trainer.val_only=true" in start and ex.recipe_of(ex.START) == "dapo"


def test_answer_key_agreement_counts_shared_answers_and_split_modes():
    group = [
        {"answer": "35", "label": "wrong_order", "cluster": 0},
        {"answer": "35", "label": "wrong_order", "cluster": 0},
        {"answer": "12", "label": "add_for_mul+off_by_one", "cluster": 1},  # two modes reproduce one answer
        {"answer": "x+7", "label": "other", "cluster": 1},
        {"answer": None, "label": "other", "cluster": 1},  # one mode ("other"), two answers (one missing)
    ]
    out = ex.answer_key_agreement([group, [{"answer": "3", "label": "other", "cluster": -1}]])
    assert out["shared_answer_frac"] == pytest.approx(1 / 6)
    assert out["split_mode_frac"] == pytest.approx(2 / 6)
    assert 0.0 < out["nmi_answer"] < 1.0  # answers split "other": not a perfect match
    perfect = [{"answer": a, "label": m, "cluster": c} for a, m, c in [("1", "x", 0), ("1", "x", 0), ("2", "y", 1)]]
    out = ex.answer_key_agreement([perfect])
    assert out["nmi_answer"] == pytest.approx(1.0) and out["nmi_cluster_answer"] == pytest.approx(1.0)
    assert out["shared_answer_frac"] == 0.0 and out["split_mode_frac"] == 0.0
    assert math.isnan(ex.answer_key_agreement([])["shared_answer_frac"])


def test_checkout_root_is_found_or_named(tmp_path, monkeypatch):
    from verl_meds.analysis import experiment

    root = experiment.checkout_root()
    assert (root / "recipes" / "meds" / "config" / "paper.yaml").is_file()
    fake = tmp_path / "clone"
    (fake / "recipes" / "meds" / "config").mkdir(parents=True)
    (fake / "data_prep").mkdir()
    monkeypatch.setenv(experiment.CHECKOUT_ENV, str(fake))
    assert experiment.checkout_root() == fake
    monkeypatch.setattr(experiment, "__file__", str(tmp_path / "site" / "verl_meds" / "analysis" / "experiment.py"))
    monkeypatch.setenv(experiment.CHECKOUT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=experiment.CHECKOUT_ENV):
        experiment.checkout_root()
