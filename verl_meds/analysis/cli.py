"""Command line of the analysis: records in, per-step metrics (JSON) and plots (PNG) out.

Run:

    python -m verl_meds.analysis --out DIR --records MEDS=outputs/meds/analysis.jsonl \\
        --records GRPO=outputs/grpo/analysis.jsonl
    python -m verl_meds.analysis --out DIR --eval MEDS=10:outputs/eval/meds_step10 \\
        --eval MEDS=20:outputs/eval/meds_step20 --label synthetic_error_mode

`--records NAME=PATH` reads a training dump (repeat a NAME to concatenate files); `--eval NAME=STEP:DIR` reads the
samples of an evaluation folder (`verl-meds-eval run --save-features`) as the records of step STEP. Records without
clusters are clustered by replaying the memory (`assign_clusters`, `--replay`). `--label` derives given labels
(for ARI/NMI); `--judge-url` and `--judge-model` turn on the LLM judge (off by default).

Writes `DIR/step_metrics.json` (`{run: [per-step dict]}`, keys in `verl_meds.analysis.diversity`) and one PNG per
figure of `verl_meds.analysis.plots.PLOTS` that has data (`agreement` needs labels, `patterns` the judge).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from verl_meds.config import ClusterConfig

from .diversity import step_metrics
from .judge import JudgeConfig, LLMJudge, judge_records
from .records import LABELERS, add_labels, assign_clusters, load_records, records_from_eval

logger = logging.getLogger(__name__)


def _split_named(text: str, flag: str) -> tuple[str, str]:
    if "=" not in text:
        raise SystemExit(f"{flag} expects NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    return name.strip(), value.strip()


def collect_runs(records_args: Sequence[str], eval_args: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Records per run name from `--records NAME=PATH` and `--eval NAME=STEP:DIR` arguments (in order)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for text in records_args:
        name, path = _split_named(text, "--records")
        runs.setdefault(name, []).extend(load_records(path))
    for text in eval_args:
        name, value = _split_named(text, "--eval")
        step, _, folder = value.partition(":")
        if not step.strip().lstrip("-").isdigit() or not folder:
            raise SystemExit(f"--eval expects NAME=STEP:DIR, got {text!r}")
        runs.setdefault(name, []).extend(records_from_eval(folder, int(step)))
    return runs


def _has_data(step_records: dict[str, list[dict[str, Any]]], keys: Sequence[str]) -> bool:
    return any(
        isinstance(record.get(key), (int, float)) and not math.isnan(record[key])
        for records in step_records.values()
        for record in records
        for key in keys
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `python -m verl_meds.analysis`; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m verl_meds.analysis", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--records", action="append", default=[], metavar="NAME=PATH", help="training dump JSONL")
    parser.add_argument("--eval", action="append", default=[], metavar="NAME=STEP:DIR", help="evaluation folder")
    parser.add_argument(
        "--replay",
        choices=("auto", "always", "never"),
        default="auto",
        help="replay the memory to cluster records: when clusters are missing (auto), always, never",
    )
    parser.add_argument("--capacity", type=int, default=256, help="memory rows per prompt for the replay")
    parser.add_argument("--min-cluster-size", type=int, default=2, help="HDBSCAN min_cluster_size for the replay")
    parser.add_argument("--label", choices=sorted(LABELERS), default=None, help="derive given labels for ARI/NMI")
    parser.add_argument("--subset", choices=("all", "wrong", "right"), default="all", help="rows of eigen_ratio")
    parser.add_argument("--min-wrong", type=int, default=2, help="smallest group counted in the group means")
    parser.add_argument("--judge-url", default=None, help="OpenAI-compatible API base URL (turns the judge on)")
    parser.add_argument("--judge-model", default=None, help="model name for the judge")
    parser.add_argument("--judge-api-key-env", default="OPENAI_API_KEY", help="environment variable of the API key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.records and not args.eval:
        parser.error("give at least one --records or --eval")
    if bool(args.judge_url) != bool(args.judge_model):
        parser.error("--judge-url and --judge-model go together")

    runs = collect_runs(args.records, args.eval)
    judge = LLMJudge(JudgeConfig(args.judge_url, args.judge_model, args.judge_api_key_env)) if args.judge_url else None
    cluster_config = ClusterConfig(min_cluster_size=args.min_cluster_size)
    step_records: dict[str, list[dict[str, Any]]] = {}
    for name, records in runs.items():
        missing = any(not r["correct"] and r.get("features") and r.get("cluster") is None for r in records)
        if args.replay == "always" or (args.replay == "auto" and missing):
            records = assign_clusters(records, cluster_config, args.capacity, overwrite=args.replay == "always")
        if args.label:
            records = add_labels(records, args.label)
        if judge is not None:
            records = judge_records(records, judge)
        step_records[name] = step_metrics(records, subset=args.subset, min_wrong=args.min_wrong)

    from verl_meds.eval.samples import write_json

    from .plots import PANELS, PLOTS

    out = Path(args.out)
    paths = [write_json(out / "step_metrics.json", step_records)]
    for figure_name, plot in PLOTS.items():
        if not _has_data(step_records, [key for key, _ in PANELS[figure_name]]):
            logger.info("no data for the %s plot; skipped", figure_name)
            continue
        paths.append(out / f"{figure_name}.png")
        plot(step_records).savefig(paths[-1], dpi=120)
    for path in paths:
        print(path)  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
