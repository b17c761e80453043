"""pass@k curves and their intervals (`verl_meds.analysis.passk_curves`), and the experiment's use of them."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verl_meds.analysis import experiment as ex
from verl_meds.analysis import passk_curves as pc


def brute_force_curve(outcomes: list[list[bool]]) -> list[Fraction]:
    """pass@k for k = 1..min n by enumerating every size-k subset of each problem's samples (exact fractions)."""
    k_max = min(len(o) for o in outcomes)
    curve = []
    for k in range(1, k_max + 1):
        per_problem = []
        for samples in outcomes:
            subsets = list(itertools.combinations(samples, k))
            per_problem.append(Fraction(sum(any(s) for s in subsets), len(subsets)))
        curve.append(sum(per_problem) / len(per_problem))
    return curve


def test_curve_matches_brute_force_enumeration():
    outcomes = [
        [True, False, False, False, False, False],
        [False] * 6,
        [True, True, False, True, False, False],
        [True] * 6,
        [False, False, False, False, False, True, False],  # n may differ: the curve stops at min n
    ]
    n = [len(o) for o in outcomes]
    c = [sum(o) for o in outcomes]
    expected = brute_force_curve(outcomes)
    curve = pc.passk_curve(n, c)
    assert curve.shape == (6,)
    np.testing.assert_allclose(curve, [float(v) for v in expected], rtol=0, atol=1e-12)
    # Hand values: k = 1 is the mean accuracy over problems; k = 6 misses only the never-solved problem and the
    # 1-in-7 problem's subsets without its correct sample: 1 - C(6,6)/C(7,6) = 6/7.
    assert curve[0] == pytest.approx((1 / 6 + 0 + 3 / 6 + 1 + 1 / 7) / 5)
    assert curve[5] == pytest.approx((1 + 0 + 1 + 1 + 6 / 7) / 5)
    np.testing.assert_allclose(pc.passk_curve(n, c, k_max=3), curve[:3])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=4, max_size=7), min_size=1, max_size=5))
def test_curve_equals_enumeration_on_random_outcomes(outcomes):
    n = [len(o) for o in outcomes]
    c = [sum(o) for o in outcomes]
    np.testing.assert_allclose(pc.passk_curve(n, c), [float(v) for v in brute_force_curve(outcomes)], atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 64), st.integers(0, 64)), min_size=1, max_size=30))
def test_curve_is_monotone_and_has_the_right_ends(pairs):
    n = np.array([a for a, _ in pairs])
    c = np.array([min(b, a) for a, b in pairs])
    curve = pc.passk_curve(n, c)
    assert curve.shape == (n.min(),)
    assert np.all(np.diff(curve) >= -1e-12)  # more samples never lower pass@k
    assert np.all((curve >= 0) & (curve <= 1))
    assert curve[0] == pytest.approx(np.mean(c / n))  # pass@1 = mean accuracy per problem
    if np.all(n == n[0]):  # pass@n = share of problems with at least one correct sample
        assert curve[-1] == pytest.approx(np.mean(c > 0))


def test_curve_rejects_empty_and_too_large_k():
    with pytest.raises(ValueError, match="at least one problem"):
        pc.passk_curve([], [])
    with pytest.raises(ValueError, match="k <= n"):
        pc.passk_curve([4, 8], [1, 1], k_max=5)


def test_bootstrap_interval_brackets_the_curve_and_is_reproducible():
    rng = np.random.default_rng(0)
    n = np.full(40, 16)
    c = rng.integers(0, 17, size=40)
    mean, lo, hi = pc.bootstrap_curve(n, c, num_resamples=500, seed=3)
    np.testing.assert_allclose(mean, pc.passk_curve(n, c))
    assert np.all(lo <= mean + 1e-12) and np.all(mean <= hi + 1e-12)
    assert np.all(hi - lo > 0)
    again = pc.bootstrap_curve(n, c, num_resamples=500, seed=3)
    np.testing.assert_array_equal(again[1], lo)
    # The pass@1 interval is about the normal one of a mean over 40 problems (sd / sqrt(P) * 1.96).
    per_problem = c / n
    half = 1.96 * per_problem.std(ddof=1) / math.sqrt(40)
    assert (hi[0] - lo[0]) / 2 == pytest.approx(half, rel=0.25)
    # Identical problems: every resample is the same curve, so the interval has zero width.
    same = pc.bootstrap_curve([8] * 10, [3] * 10, num_resamples=50)
    np.testing.assert_allclose(same[1], same[0])
    np.testing.assert_allclose(same[2], same[0])


def test_curve_over_seeds_is_the_t_interval_at_each_k():
    curves = {0: [0.1, 0.5, 0.9], 1: [0.2, 0.6, 1.0], 2: [0.3, 0.7, 0.95, 0.99]}  # the longer one is cut to 3
    mean, lo, hi = pc.curve_over_seeds(curves)
    np.testing.assert_allclose(mean, [0.2, 0.6, 0.95])
    half = 4.302653 * 0.1 / math.sqrt(3)  # t(0.975, 2), sd 0.1 at k = 1
    assert hi[0] - mean[0] == pytest.approx(half, rel=1e-5) and mean[0] - lo[0] == pytest.approx(half, rel=1e-5)
    assert hi[2] - mean[2] == pytest.approx(4.302653 * 0.05 / math.sqrt(3), rel=1e-5)
    single = pc.curve_over_seeds({4: [0.5, 0.7]})
    assert np.all(np.isnan(single[1])) and single[0].tolist() == [0.5, 0.7]


def test_paired_difference_uses_shared_seeds_only():
    method = {0: [0.5, 0.8], 1: [0.4, 0.9], 7: [0.0, 0.0]}
    base = {0: [0.4, 0.7], 1: [0.4, 0.7], 2: [1.0, 1.0]}
    mean, lo, hi, seeds = pc.paired_curve_difference(method, base)
    assert seeds == [0, 1]
    np.testing.assert_allclose(mean, [0.05, 0.15])
    expected = ex.mean_ci([0.1, 0.0])
    assert (lo[0], hi[0]) == pytest.approx(expected[1:])
    with pytest.raises(ValueError, match="no shared seed"):
        pc.paired_curve_difference({3: [0.1]}, {4: [0.1]})


def _write_val(path, counts: list[tuple[int, int]]):
    rows = []
    for p, (n, c) in enumerate(counts):
        for j in range(n):
            ok = j < c
            rows.append({"input": f"problem {p}", "acc": float(ok), "score": 1.0 if ok else -1.0, "pred": "1"})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_load_problem_counts_reads_a_validation_dump(tmp_path):
    _write_val(tmp_path / "5.jsonl", [(4, 1), (4, 0), (4, 4)])
    problems, n, c = pc.load_problem_counts(tmp_path / "5.jsonl")
    assert problems == ["problem 0", "problem 1", "problem 2"]
    assert n.tolist() == [4, 4, 4] and c.tolist() == [1, 0, 4]


def test_validation_metrics_give_the_whole_curve_and_counts(tmp_path):
    _write_val(tmp_path / "val" / "3.jsonl", [(8, 1), (8, 0), (8, 8), (8, 3)])
    (entry,) = ex.validation_step_metrics(tmp_path / "val")
    assert [k for k in entry if k.startswith("pass@")] == [f"pass@{k}" for k in range(1, 9)]
    assert entry["pass@8"] == pytest.approx(3 / 4)
    assert entry["pass@1"] == pytest.approx(12 / 32)
    assert entry["counts_n"] == [8, 8, 8, 8] and entry["counts_c"] == [1, 0, 8, 3]


def test_logged_entropy_joins_the_training_steps(tmp_path):
    lines = [
        {"step": 1, "data": {"actor/entropy": 1.5, "training/global_step": 1}},
        {"step": 2, "data": {"actor/entropy": 1.2}},
        {"step": 2, "data": {"actor/entropy": 1.1}},  # after a resume the last line of a step wins
        {"step": 3, "data": {"val-core/acc": 0.5}},
    ]
    (tmp_path / "metrics.0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    logged = ex.logged_step_metrics(tmp_path)
    assert logged == {1: {"actor/entropy": 1.5}, 2: {"actor/entropy": 1.1}}


def _finished(folder, seed: int, counts: list[tuple[int, int]]):
    _write_val(folder / "val" / "4.jsonl", counts)
    (folder / "run.json").write_text(json.dumps({"method": folder.parent.name, "seed": seed, "status": "ok"}))


def test_report_has_passk_tables_against_dapo_and_start_and_the_plot(tmp_path):
    runs = tmp_path / "runs"
    _finished(runs / "start" / "seed0", 0, [(8, 2), (8, 0), (8, 5), (8, 1)])
    for seed in (0, 1, 2):
        _finished(runs / "dapo" / f"seed{seed}", seed, [(8, 4), (8, 0), (8, 8), (8, 0)])
        _finished(runs / "meds_dapo" / f"seed{seed}", seed, [(8, 4), (8, seed), (8, 8), (8, 1)])
    ex.report_from_runs(tmp_path, {})
    table = (tmp_path / "table.md").read_text()
    assert "### Held-out pass@k (last validation" in table
    assert "| DAPO | 3 (t) | 0.375 [0.375, 0.375]" in table  # pass@1 = (4 + 0 + 8 + 0) / 32 every seed
    start = pc.bootstrap_curve([8] * 4, [2, 0, 5, 1])
    assert f"| Start (warm-start model, step 0) | 1 (bootstrap) | {start[0][0]:.3f} [{start[1][0]:.3f}," in table
    meds = {s: pc.passk_curve([8] * 4, [4, s, 8, 1]) for s in (0, 1, 2)}
    dapo = pc.passk_curve([8] * 4, [4, 0, 8, 0])
    mean, lo, hi = ex.mean_ci([meds[s][7] - dapo[7] for s in (0, 1, 2)])
    assert f"{mean:+.3f} [{lo:.3f}, {hi:.3f}] |" in table.split("minus DAPO (paired by seed)")[1].split("###")[0]
    # DAPO's pass@8 is 0.5 against the start model's 0.75: minus start = -0.25 on every seed.
    row = next(line for line in table.splitlines() if line.startswith("| DAPO - start | 3 |"))
    assert row.split(" | ")[2] == "+0.125 [0.125, 0.125]"  # pass@1 0.375 vs the start's 8 / 32
    assert row.split(" | ")[-1] == "-0.250 [-0.250, -0.250] |"
    assert (tmp_path / ex.PASSK_PLOT).stat().st_size > 10_000


def test_run_plan_is_seed_major_and_can_leave_out_the_start():
    cfg = ex.ExperimentConfig(out="x", methods=["dapo", "meds_dapo"], seeds=[2, 0])
    assert ex.run_plan(cfg) == [(2, ex.START), (2, "dapo"), (2, "meds_dapo"), (0, "dapo"), (0, "meds_dapo")]
    second = ex.ExperimentConfig(out="x", methods=["meds_answer"], seeds=[4], start=False)
    assert ex.run_plan(second) == [(4, "meds_answer")]
