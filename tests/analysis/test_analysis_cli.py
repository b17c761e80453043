"""Analysis plots (figures hold exactly the metric values) and the command line (metrics JSON and PNGs)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from verl_meds.analysis.cli import main
from verl_meds.analysis.diversity import step_metrics
from verl_meds.analysis.plots import PANELS, PLOTS, plot_error_collapse, plot_step_metrics
from verl_meds.analysis.records import assign_clusters, write_records


def training_records(collapse: bool, seed: int) -> list[dict]:
    """Three steps, two prompts, ten responses each (one right, three per wrong mode); with `collapse` every wrong
    response after step 0 follows mode 0."""
    rng = np.random.default_rng(seed)
    centers = np.eye(4)
    records = []
    for step in range(3):
        for prompt in ("p0", "p1"):
            for sample in range(10):
                mode = 0 if collapse and step > 0 else sample % 3
                correct = sample == 9
                features = centers[mode] + rng.normal(scale=1e-4, size=4)  # within the default merge_distance
                records.append(
                    {
                        "step": step,
                        "prompt_id": prompt,
                        "sample_index": sample,
                        "correct": correct,
                        "answer": "right" if correct else f"wrong{mode}",
                        "features": features.tolist(),
                        "label": None if correct else f"mode{mode}",
                    }
                )
    return records


def test_plot_functions_draw_the_given_values():
    runs = {
        "MEDS": step_metrics(assign_clusters(training_records(False, 0))),
        "GRPO": step_metrics(assign_clusters(training_records(True, 1))),
    }
    figure = plot_error_collapse(runs)
    assert len(figure.axes) == 2 and figure.get_suptitle() == "Error collapse"
    for ax, (key, label) in zip(figure.axes, PANELS["error_collapse"], strict=True):
        assert ax.get_ylabel() == label and ax.get_xlabel() == "step"
        for line, name in zip(ax.get_lines(), runs, strict=True):
            assert line.get_label() == name
            np.testing.assert_allclose(line.get_xdata(), [0, 1, 2])
            np.testing.assert_allclose(line.get_ydata(), [r[key] for r in runs[name]])
    grpo_share = [r["largest_cluster_share"] for r in runs["GRPO"]]
    meds_share = [r["largest_cluster_share"] for r in runs["MEDS"]]
    assert meds_share[0] == grpo_share[0] == pytest.approx(1 / 3)  # three equal wrong modes at step 0
    assert grpo_share[2] == 1.0 and max(meds_share) == pytest.approx(1 / 3)  # collapse is visible in the curve
    single = plot_step_metrics(runs["MEDS"], [("novelty", "novel")])
    assert [line.get_label() for line in single.axes[0].get_lines()] == ["run"]


def test_cli_writes_metrics_and_plots(tmp_path):
    meds = write_records(training_records(False, 0), tmp_path / "meds.jsonl")
    grpo_path = tmp_path / "grpo.jsonl"
    grpo = training_records(True, 1)
    write_records([r for r in grpo if r["step"] < 2], grpo_path)
    write_records([r for r in grpo if r["step"] == 2], tmp_path / "grpo_tail.jsonl")
    main(
        [
            "--out",
            str(tmp_path / "out"),
            "--records",
            f"MEDS={meds}",
            "--records",
            f"GRPO={grpo_path}",
            "--records",
            f"GRPO={tmp_path / 'grpo_tail.jsonl'}",
        ]
    )
    metrics = json.loads((tmp_path / "out" / "step_metrics.json").read_text())
    assert list(metrics) == ["MEDS", "GRPO"]
    expected = step_metrics(assign_clusters(grpo))
    for got, want in zip(metrics["GRPO"], expected, strict=True):
        for key, value in want.items():
            assert (got[key] is None and math.isnan(value)) or got[key] == pytest.approx(value), key
    assert metrics["MEDS"][0]["ari"] == pytest.approx(1.0)  # three tight blobs, labelled by their mode
    assert metrics["GRPO"][2]["novelty"] == pytest.approx(0.0)

    import matplotlib.image

    written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert written == sorted(f"{name}.png" for name in PLOTS if name != "patterns")  # no judge: no patterns plot
    for name in written:
        image = matplotlib.image.imread(tmp_path / "out" / name)
        assert image.shape[0] > 200 and image[..., :3].std() > 0.05
