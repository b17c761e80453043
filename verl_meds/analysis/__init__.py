"""Diversity and memory analysis of MEDS runs: feature-covariance eigen ratio, within-step diversity, across-step
novelty, cluster/label agreement (ARI, NMI), the error-collapse curve, their plots, and an optional LLM judge.

Inputs are JSONL records, one per rollout (format in `verl_meds.analysis.records`), written by the trainer's dump
or derived from evaluation samples of successive checkpoints (`records_from_eval`). Run
`python -m verl_meds.analysis --help` for the command line. Importing this package imports neither verl nor
matplotlib (plots import it inside).
"""

from .diversity import cluster_label_agreement, step_metrics, top1_eigen_ratio
from .judge import JudgeConfig, JudgeError, LLMJudge, judge_records
from .records import add_labels, assign_clusters, load_records, records_from_eval, validate_record, write_records

__all__ = [
    "JudgeConfig",
    "JudgeError",
    "LLMJudge",
    "add_labels",
    "assign_clusters",
    "cluster_label_agreement",
    "judge_records",
    "load_records",
    "records_from_eval",
    "step_metrics",
    "top1_eigen_ratio",
    "validate_record",
    "write_records",
]
