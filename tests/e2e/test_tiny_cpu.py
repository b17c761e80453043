"""End-to-end: the tiny CPU recipes train through real verl (Ray, FSDP2, the hf rollout) on this machine.

All runs share one Ray cluster (started once for the module). Each run is a real verl training job with a few
steps; the assertions read what verl wrote: its metric JSONL, checkpoints and the MEDS memory files.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import verl_inprocess
from verl_inprocess import ROOT, train
from verl_subprocess import tiny_assets

pytestmark = pytest.mark.requires_verl

GSM8K_TRAIN = Path(os.environ.get("VERL_MEDS_SHARED", ROOT.parent / "shared")) / "data" / "gsm8k" / "train.jsonl"


@pytest.fixture(scope="module")
def assets() -> dict[str, Path]:
    """Synthetic task and tiny warm-started model, cached where the quick-start recipe caches them."""
    return tiny_assets()


@pytest.fixture(scope="module")
def ray_cluster():
    with verl_inprocess.ray_cluster(gpus_per_node=[1]):
        yield


def memory_record(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f)


def test_meds_trains_penalises_checkpoints_and_resumes_exactly(ray_cluster, assets, tmp_path):
    """MEDS on a batch built to repeat answers: every prompt of a step is the same problem, so its responses repeat
    within the step and across steps. The warm-started tiny model answers it mostly right and its few wrong answers
    differ (8, 16, 35, 12 in a measured run), which the absolute clustering scale rightly leaves as noise; so both
    outcomes are tracked (`penalty_target=both`) and the repeated right answers are what is clustered and penalised.
    Dynamic sampling is off so an all-wrong group is still trained on."""
    from verl_meds.verl.checkpoint import read_memory_state

    out = tmp_path / "meds"
    one_problem = [
        "data.train_max_samples=1",
        "data.train_batch_size=1",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "algorithm.filter_groups.enable=false",
        "trainer.save_freq=1",
        "meds_dump.enable=true",
        "meds.shaping.penalty_target=both",
    ]
    steps = train("meds_dapo", out, assets, steps=2, extra=one_problem)
    assert sorted(steps) == [1, 2]
    for step in (1, 2):
        keys = steps[step]
        for name in (
            "meds/penalty/mean",
            "meds/frac_penalized",
            "meds/memory/num_entries",
            "meds/features/missing_frac",
            "meds/groups/singleton_frac",
            "meds/groups/flat_frac",
        ):
            assert name in keys, f"{name} not logged at step {step}"
        assert 0.0 <= keys["meds/groups/flat_frac"] <= 1.0 and keys["meds/groups/singleton_frac"] == 0.0
        assert keys["meds/features/located_in_reward"] == 1.0, "verl's reward workers did not record the answers"
    assert steps[1]["meds/features/missing_frac"] < 1.0, "no feature was captured"
    # Step 2 sees the answers of step 1 for the same prompt: repeated answers are penalised.
    assert max(steps[s]["meds/penalty/max"] for s in (1, 2)) > 0.0
    assert steps[2]["meds/memory/num_entries"] >= steps[1]["meds/memory/num_entries"] > 0

    memory_file = out / "checkpoints" / "global_step_2" / "meds_memory.pkl"
    assert memory_file.exists() and (out / "checkpoints" / "global_step_1" / "meds_memory.pkl").exists()
    saved = memory_record(memory_file)
    state = read_memory_state(str(memory_file))
    assert sum(len(b["features"]) for b in state["buffers"]) == steps[2]["meds/memory/num_entries"]

    # The analysis dump: one record per rollout per step, and an offline replay gives the same cluster sizes.
    from verl_meds.analysis.records import assign_clusters, load_records

    records = load_records(out / "checkpoints" / "analysis.jsonl")
    assert [sum(r["step"] == s for r in records) for s in (1, 2)] == [8, 8]
    replayed = assign_clusters([dict(r, cluster_size=None) for r in records], overwrite=True)
    for dumped, again in zip(records, replayed, strict=True):
        if not dumped["correct"] and dumped["features"] is not None:
            assert again["cluster_size"] == dumped["cluster_size"]

    # Resume: one more step from global_step_2. The memory must come back bit for bit before training continues.
    resumed = train("meds_dapo", out, assets, steps=3, extra=one_problem, attempt=1)
    record = json.loads((out / "checkpoints" / "meds_memory_restored.json").read_text())
    assert record["global_step"] == 2
    assert record["sha256"] == saved["sha256"]
    assert 3 in resumed and (out / "checkpoints" / "global_step_3" / "meds_memory.pkl").exists()
    assert resumed[3]["meds/memory/num_entries"] >= steps[2]["meds/memory/num_entries"]


@pytest.mark.parametrize("method", ["dapo", "grpo", "grpo_entropy"])
def test_baselines_train_without_meds(ray_cluster, assets, tmp_path, method):
    steps = train(method, tmp_path / method, assets, steps=2)
    assert sorted(steps) == [1, 2]
    for step in (1, 2):
        assert not any(k.startswith("meds/") for k in steps[step]), "baselines must not run MEDS"
        assert "actor/pg_loss" in steps[step]
        if method == "grpo_entropy":
            # The bonus is positive on some tokens and bounded by |A| / 2 (so it never flips an advantage's sign).
            assert steps[step]["entropy_adv/bonus_max"] >= steps[step]["entropy_adv/bonus_mean"] >= 0.0
        else:
            assert "entropy_adv/bonus_mean" not in steps[step]
    if method == "grpo_entropy":
        assert max(steps[s]["entropy_adv/bonus_max"] for s in (1, 2)) > 0.0


# Table 2 variants and MEDS on GRPO: each trains 2 real steps and logs its MEDS metrics.
VARIANT_FEATURES = {
    "meds_grpo": 4,
    "meds_single": 4,
    "meds_all": 8,
    "meds_all_diff": 7,
    "meds_half_diff": 3,
    "meds_dapo_shaped_ds": 4,
    "meds_fork_faults": 4,
}


# Answer-keyed MEDS and outcome-based exploration (arXiv 2509.06941): the metrics each of their steps must log.
OUTCOME_METRICS = ("explore/bonus_mean", "explore/bonus_min", "explore/bonus_max", "explore/distinct_answers")
OUTCOME_METHODS = {
    "meds_answer": (
        "meds/penalty/mean",
        "meds/memory/num_entries",
        "meds/cluster_size/max",
        "meds/features/missing_frac",
    ),
    "explore_hist": (*OUTCOME_METRICS, "explore/new_answer_frac", "explore/counts/num_answers"),
    "explore_batch": OUTCOME_METRICS,
}
ROLLOUTS_PER_STEP = 8 * 8  # tiny_cpu: data.train_batch_size x rollout.n, no dynamic sampling on GRPO


def check_outcome_method(method: str, steps: dict, checkpoint: Path) -> None:
    """What the answer-keyed memory and the exploration counts left in the metrics and in global_step_2."""
    from verl_meds.verl.checkpoint import COUNTS_FORMAT, counts_path, read_memory_state, read_state

    for step in (1, 2):
        for name in OUTCOME_METHODS[method]:
            assert name in steps[step], f"{name} missing at step {step}"
        # The recipes let the reward workers key the answers; the driver only read them.
        assert steps[step]["answer_key/from_reward"] == 1.0
        # ... and located the answers (the driver reads no responses).
        located = "explore/located_in_reward" if method.startswith("explore") else "meds/features/located_in_reward"
        assert steps[step][located] == 1.0
    if method == "meds_answer":
        state = read_memory_state(str(checkpoint / "meds_memory.pkl"))
        assert state["fingerprint"] == {"memory_keys": "answer"} and state["num_features"] is None
        assert all(
            "features" not in b and all(k.startswith(("sym:", "str:")) for k in b["answer_keys"])
            for b in state["buffers"]
        )
        assert sum(len(b["answer_keys"]) for b in state["buffers"]) == steps[2]["meds/memory/num_entries"]
        return
    for step in (1, 2):
        assert not any(k.startswith("meds/") for k in steps[step]), "exploration runs without MEDS"
        low, mean, high = (steps[step][f"explore/bonus_{stat}"] for stat in ("min", "mean", "max"))
        assert low - 1e-9 <= mean <= high + 1e-9
    if method == "explore_hist":
        # UCB-Con, c = 0.2, b_0 = 0.5: every bonus lies in c * [0 - b_0, 1 - b_0].
        assert all(
            -0.1 - 1e-6 <= steps[s]["explore/bonus_min"] and steps[s]["explore/bonus_max"] <= 0.1 + 1e-6
            for s in (1, 2)
        )
        counts = read_state(counts_path(str(checkpoint)), COUNTS_FORMAT)["counts"]
        assert sum(len(answers) for answers in counts.values()) == steps[2]["explore/counts/num_answers"]
        assert sum(sum(answers.values()) for answers in counts.values()) == 2 * ROLLOUTS_PER_STEP
    else:
        # The batch bonus is a penalty: never positive; no counts are kept.
        assert all(steps[s]["explore/bonus_max"] <= 0.0 for s in (1, 2))
        assert not os.path.exists(counts_path(str(checkpoint)))


@pytest.mark.parametrize("method", sorted(VARIANT_FEATURES) + sorted(OUTCOME_METHODS))
def test_meds_variants_train(ray_cluster, assets, tmp_path, method):
    from verl_meds.verl.checkpoint import read_memory_state

    out = tmp_path / method
    steps = train(method, out, assets, steps=2, extra=["trainer.save_freq=2"])
    assert sorted(steps) == [1, 2]
    if method in OUTCOME_METHODS:
        check_outcome_method(method, steps, out / "checkpoints" / "global_step_2")
        return
    for step in (1, 2):
        for name in ("meds/penalty/mean", "meds/frac_penalized", "meds/memory/num_entries", "meds/cluster_size/max"):
            assert name in steps[step], f"{name} missing at step {step}"
        assert steps[step]["meds/features/located_in_reward"] == 1.0, f"answers located on the driver ({method})"
    state = read_memory_state(str(out / "checkpoints" / "global_step_2" / "meds_memory.pkl"))
    widths = {b["features"].shape[1] for b in state["buffers"] if len(b["features"])}
    assert widths == {VARIANT_FEATURES[method]}, f"feature width {widths} for {method}"
    if method == "meds_dapo_shaped_ds":
        # No accuracy filter at sampling time; after shaping, flat groups leave the loss.
        assert all(0.0 < steps[s]["meds/dynamic_sampling/kept_frac"] <= 1.0 for s in (1, 2))
        assert not any("filter_groups/evicted" in k for k in steps[2])
    if method == "meds_single":
        # One cluster per prompt: every stored wrong response counts, so |C| reaches the group's wrong count.
        assert steps[2]["meds/clusters/per_prompt_mean"] <= 1.0


def test_meds_on_gsm8k(ray_cluster, assets, tmp_path):
    """The same recipe on real input: GSM8K training problems converted by data_prep, a few steps, MEDS on."""
    if not GSM8K_TRAIN.exists():
        pytest.skip(f"GSM8K training file not found at {GSM8K_TRAIN} (set VERL_MEDS_SHARED to the shared folder)")
    from data_prep.gsm8k import convert_file

    parquet = tmp_path / "gsm8k_train.parquet"
    convert_file(GSM8K_TRAIN, parquet, limit=64)
    gsm = dict(assets, train=parquet, val=parquet)
    steps = train(
        "meds_dapo",
        tmp_path / "gsm8k",
        gsm,
        steps=2,
        extra=[
            "data.max_prompt_length=512",
            "data.filter_overlong_prompts=true",
            "data.truncation=left",
            "data.train_batch_size=2",
            "actor_rollout_ref.actor.ppo_mini_batch_size=2",
            "algorithm.filter_groups.enable=false",
        ],
    )
    assert sorted(steps) == [1, 2]
    assert "meds/memory/num_prompts" in steps[2] and "meds/penalty/mean" in steps[2]


def test_error_collapse_experiment_smoke(ray_cluster, assets, tmp_path):
    """The science experiment's own path (`verl_meds.analysis.experiment`): the shared start-point validation, one
    observe-only baseline through real verl, then the measurements and the report, at the smallest budget."""
    from verl_meds.analysis import experiment as ex

    cfg = ex.ExperimentConfig(
        out=str(tmp_path / "science"), methods=["dapo"], seeds=[0], steps=2, val_n=2, train_problems=8, cache=None
    )
    results = ex.run_experiment(cfg)
    assert [(r["method"], r["status"]) for r in results] == [(ex.START, "ok"), ("dapo", "ok")], results
    questions = ex.load_questions(tmp_path / "science" / "data" / "train_8.parquet")
    assert len(questions) == 8
    collected = ex.report_from_runs(cfg.out, questions)
    dapo = collected["dapo"][0]["measured"]
    assert [s["step"] for s in dapo["train"]] == [1.0, 2.0]
    assert [v["step"] for v in dapo["val"]] == [2.0] and 0.0 <= dapo["val"][0]["pass@2"] <= 1.0
    assert [v["step"] for v in collected[ex.START][0]["measured"]["val"]] == [0.0]
    assert dapo["val"][0]["num_problems"] == 64.0
    # Observe-only: features are captured and clustered, but no reward changes.
    assert all(s["penalised"] == 0.0 for s in dapo["train"])
    assert all(0.0 <= s["accuracy"] <= 1.0 and "eigen_ratio" in s for s in dapo["train"])
    from verl_meds.verl.summary import read_metrics

    for metrics in read_metrics(str(ex.run_dir(cfg.out, "dapo", 0))).values():
        assert metrics["meds/reward/shaped_mean"] == pytest.approx(metrics["meds/reward/raw_mean"])
        assert metrics["meds/penalty/max"] == 0.0
    table = (tmp_path / "science" / "table.md").read_text()
    assert "| DAPO | 1 |" in table and "| Start (warm-start model, step 0) | 1 |" in table
