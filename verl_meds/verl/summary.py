"""Summarise a training run from verl's metric files: `python -m verl_meds.verl.summary OUT_DIR`.

Reads every `OUT_DIR/metrics.*.jsonl` (one per attempt: the first run and each resume; verl's file logger writes
one JSON record `{"step": s, "data": {...}}` per step), merges them by step (a later attempt wins), prints a short
report and writes it to `OUT_DIR/summary.json`.

The report also shows the first `FIRST_STEPS` training steps' answer-found fraction and response clip ratio, the two
numbers that tell early whether the response budget fits the model (a thinking model that runs out of tokens ends
without a `\\boxed{}`: reward 0, no MEDS feature, no penalty):

- `answer_found_frac`: `meds/features/answer_found_frac` (MEDS rows), else `reward/answer_found_frac` (every
  row graded by `verl_meds.verl.reward`: a closed final box), else `1 - explore/no_answer_frac`; `None` when none
  is logged.
- `clip_ratio`: verl's `response_length/clip_ratio`, the fraction of responses that hit
  `data.max_response_length`.
"""

from __future__ import annotations

import glob
import json
import os
import re
import sys
from typing import Any

ACC_PATTERN = re.compile(r"^val-core/.+/acc/mean@\d+$")
FIRST_STEPS = 3
"""Training steps listed in the report's early-steps table."""


def read_metrics(out_dir: str) -> dict[int, dict[str, Any]]:
    """Per-step metrics of all attempts in `out_dir`, merged (later attempts override earlier ones)."""

    def attempt(path: str) -> int:
        match = re.search(r"metrics\.(\d+)\.jsonl$", path)
        return int(match.group(1)) if match else -1

    steps: dict[int, dict[str, Any]] = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "metrics.*.jsonl")), key=attempt):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                record = json.loads(line)
                steps.setdefault(int(record["step"]), {}).update(record["data"])
    return steps


def early_step(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Answer-found fraction and response clip ratio of one step's metrics (`None` when not logged).

    >>> early_step({"explore/no_answer_frac": 0.25, "response_length/clip_ratio": 0.5})
    {'answer_found_frac': 0.75, 'clip_ratio': 0.5}
    """
    found = metrics.get("meds/features/answer_found_frac", metrics.get("reward/answer_found_frac"))
    if found is None and metrics.get("explore/no_answer_frac") is not None:
        found = 1.0 - float(metrics["explore/no_answer_frac"])
    clip = metrics.get("response_length/clip_ratio")
    return {
        "answer_found_frac": None if found is None else float(found),
        "clip_ratio": None if clip is None else float(clip),
    }


def summarise(out_dir: str) -> dict[str, Any]:
    """Report of a run: steps, validation accuracy before/after, MEDS penalties, step time, artefact paths."""
    steps = read_metrics(out_dir)
    val = [(s, v) for s, d in sorted(steps.items()) for k, v in d.items() if ACC_PATTERN.match(k)]
    train_steps = sorted(s for s, d in steps.items() if "training/global_step" in d or "timing_s/step" in d)
    penalised = sum(float(steps[s].get("meds/penalty/count", 0.0)) for s in train_steps)
    step_times = [float(steps[s]["timing_s/step"]) for s in train_steps if "timing_s/step" in steps[s]]
    checkpoints = sorted(glob.glob(os.path.join(out_dir, "checkpoints", "global_step_*")))
    memories = sorted(glob.glob(os.path.join(out_dir, "checkpoints", "global_step_*", "meds_memory.pkl")))
    return {
        "out_dir": os.path.abspath(out_dir),
        "train_steps": len(train_steps),
        "val_acc_before": val[0][1] if val else None,
        "val_acc_after": val[-1][1] if len(val) > 1 else None,
        "penalised_responses": int(penalised),
        "mean_step_seconds": sum(step_times) / len(step_times) if step_times else None,
        "train_acc_last": steps[train_steps[-1]].get("critic/score/mean") if train_steps else None,
        "first_steps": {s: early_step(steps[s]) for s in train_steps[:FIRST_STEPS]},
        "metrics_files": sorted(glob.glob(os.path.join(os.path.abspath(out_dir), "metrics.*.jsonl"))),
        "latest_checkpoint": os.path.abspath(checkpoints[-1]) if checkpoints else None,
        "latest_memory": os.path.abspath(memories[-1]) if memories else None,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m verl_meds.verl.summary OUT_DIR", file=sys.stderr)
        return 2
    report = summarise(argv[0])
    with open(os.path.join(argv[0], "summary.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)

    def fmt(value: Any) -> str:
        return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))

    print("== verl_meds run summary ==")
    print(f"steps trained          : {report['train_steps']}  (mean step {fmt(report['mean_step_seconds'])} s)")
    print(f"val accuracy before    : {fmt(report['val_acc_before'])}")
    print(f"val accuracy after     : {fmt(report['val_acc_after'])}")
    print(f"responses penalised    : {report['penalised_responses']}")
    for step, early in report["first_steps"].items():
        print(
            f"step {step:<3} answer found   : {fmt(early['answer_found_frac'])}"
            f"  (responses cut at max length: {fmt(early['clip_ratio'])})"
        )
    print(f"metrics (JSONL)        : {', '.join(report['metrics_files']) or 'none'}")
    print(f"latest checkpoint      : {report['latest_checkpoint'] or 'none'}")
    print(f"MEDS memory checkpoint : {report['latest_memory'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
