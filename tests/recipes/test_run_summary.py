"""verl_meds.verl.summary: the run report, including the first steps' answer-found fraction and clip ratio."""

from __future__ import annotations

import json

import pytest

from verl_meds.verl.summary import FIRST_STEPS, main, summarise


def write_metrics(path, records):
    path.write_text("".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in records), encoding="utf-8")


def test_first_steps_show_answer_found_and_clip_ratio(tmp_path, capsys):
    records = [(0, {"val-core/aime24/acc/mean@1": 0.1})]
    for step in range(1, 6):
        records.append(
            (
                step,
                {
                    "training/global_step": step,
                    "timing_s/step": 10.0,
                    "meds/features/answer_found_frac": 0.5 + 0.1 * step,
                    "meds/penalty/count": 2,
                    "response_length/clip_ratio": 0.4 - 0.05 * step,
                },
            )
        )
    write_metrics(tmp_path / "metrics.0.jsonl", records)
    report = summarise(str(tmp_path))
    assert list(report["first_steps"]) == [1, 2, 3] and FIRST_STEPS == 3
    assert report["first_steps"][1]["answer_found_frac"] == 0.6
    assert report["first_steps"][3]["clip_ratio"] == 0.4 - 0.15
    assert report["penalised_responses"] == 10
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "step 1   answer found   : 0.600  (responses cut at max length: 0.350)" in out
    saved = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert saved["first_steps"]["2"] == {"answer_found_frac": pytest.approx(0.7), "clip_ratio": pytest.approx(0.3)}


def test_rows_without_an_answer_metric_report_none(tmp_path):
    # GRPO logs neither meds/* nor explore/*; the exploration rows log the no-answer fraction.
    write_metrics(
        tmp_path / "metrics.0.jsonl",
        [
            (1, {"training/global_step": 1, "response_length/clip_ratio": 0.2}),
            (2, {"training/global_step": 2, "explore/no_answer_frac": 0.25}),
        ],
    )
    first = summarise(str(tmp_path))["first_steps"]
    assert first[1] == {"answer_found_frac": None, "clip_ratio": 0.2}
    assert first[2] == {"answer_found_frac": 0.75, "clip_ratio": None}
