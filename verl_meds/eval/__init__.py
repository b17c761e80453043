"""Evaluation the way the MEDS paper reports it: n samples per problem at temperature 1.0, math-verify grading,
pass@1 (mean accuracy) and the unbiased pass@k, the Table-1 layout and pass@k curves.

Modules: `passk` (the estimator), `data` (benchmark problems), `generation` (HF and vLLM sampling), `samples`
(the resumable per-sample JSONL), `report` (summary, tables, curves), `run` (`EvalConfig`, `evaluate`, and the
`verl-meds-eval` console script). Importing this package imports neither verl, transformers nor matplotlib.
"""

from .data import EvalProblem, load_problems
from .passk import mean_pass_at_k, pass_at_k
from .report import default_ks, format_table, load_summary, plot_pass_at_k, summarize
from .run import EvalConfig, evaluate, write_report

__all__ = [
    "EvalConfig",
    "EvalProblem",
    "default_ks",
    "evaluate",
    "format_table",
    "load_problems",
    "load_summary",
    "mean_pass_at_k",
    "pass_at_k",
    "plot_pass_at_k",
    "summarize",
    "write_report",
]
