"""Plots of the per-step analysis metrics (`verl_meds.analysis.diversity.step_metrics`).

Every function takes the step records of one or several runs (`{run name: [step dict, ...]}`, or one list for a
single run), does no computation beyond picking keys, and returns a `matplotlib.figure.Figure`; matplotlib is
imported inside the functions (extra `verl_meds[plots]`). Missing values (NaN/None) leave gaps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

StepRecords = Sequence[Mapping[str, Any]]
Runs = Mapping[str, StepRecords] | StepRecords

PANELS: dict[str, list[tuple[str, str]]] = {
    "eigen_ratio": [("eigen_ratio", "top-1 eigen ratio λ1/Σλ")],
    "diversity": [
        ("distinct_clusters_frac", "distinct clusters / wrong"),
        ("distinct_answers_frac", "distinct answers / wrong"),
    ],
    "novelty": [("novelty", "novel wrong responses (fraction)")],
    "agreement": [("ari", "adjusted Rand index"), ("nmi", "normalised mutual information")],
    "error_collapse": [
        ("largest_cluster_share", "largest wrong-cluster share"),
        ("largest_answer_share", "largest wrong-answer share"),
    ],
    "patterns": [("distinct_patterns_frac", "distinct judged patterns / wrong")],
}
"""Figure name -> panels (metric key, y-axis label)."""

TITLES = {
    "eigen_ratio": "Feature covariance: top-1 eigen ratio",
    "diversity": "Within-step diversity of wrong responses",
    "novelty": "Across-step novelty of wrong responses",
    "agreement": "Clusters vs given labels",
    "error_collapse": "Error collapse",
    "patterns": "LLM-judged reasoning patterns",
}


def _as_runs(runs: Runs) -> Mapping[str, StepRecords]:
    return runs if isinstance(runs, Mapping) else {"run": runs}


def _value(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    return float("nan") if value is None else float(value)


def plot_step_metrics(
    runs: Runs, panels: Sequence[tuple[str, str]], title: str | None = None, unit_interval: bool = True
):
    """
    One panel per metric, x = training step, one line per run.

    Args:
        runs (`Mapping[str, Sequence[Mapping]]` or `Sequence[Mapping]`): step records per run.
        panels (`Sequence[tuple[str, str]]`): (metric key, y-axis label) per panel.
        title (`str`, *optional*): figure title.
        unit_interval (`bool`, *optional*, defaults to `True`): fix the y axis to [0, 1] (every metric of
            `PANELS` is a fraction), so small changes are not blown up by autoscaling.

    Returns:
        `matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    runs = _as_runs(runs)
    figure = Figure(figsize=(4.6 * len(panels), 3.4), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, records in runs.items():
            steps = [r["step"] for r in records]
            ax.plot(steps, [_value(r, key) for r in records], marker="o", markersize=3, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if unit_interval:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize="small")
    if title:
        figure.suptitle(title)
    return figure


def plot_eigen_ratio(runs: Runs):
    """Top-1 eigen ratio of the feature covariance per step (`eigen_ratio`)."""
    return plot_step_metrics(runs, PANELS["eigen_ratio"], TITLES["eigen_ratio"])


def plot_diversity(runs: Runs):
    """Within-step diversity: distinct clusters and distinct answers per wrong response."""
    return plot_step_metrics(runs, PANELS["diversity"], TITLES["diversity"])


def plot_novelty(runs: Runs):
    """Across-step novelty: fraction of wrong responses outside every stored cluster."""
    return plot_step_metrics(runs, PANELS["novelty"], TITLES["novelty"])


def plot_agreement(runs: Runs):
    """ARI and NMI between clusters and given labels."""
    return plot_step_metrics(runs, PANELS["agreement"], TITLES["agreement"])


def plot_error_collapse(runs: Runs):
    """Largest wrong-cluster share (and largest wrong-answer share) per step: the error-collapse curve."""
    return plot_step_metrics(runs, PANELS["error_collapse"], TITLES["error_collapse"])


def plot_patterns(runs: Runs):
    """Distinct LLM-judged reasoning patterns per wrong response."""
    return plot_step_metrics(runs, PANELS["patterns"], TITLES["patterns"])


PLOTS = {
    "eigen_ratio": plot_eigen_ratio,
    "diversity": plot_diversity,
    "novelty": plot_novelty,
    "agreement": plot_agreement,
    "error_collapse": plot_error_collapse,
    "patterns": plot_patterns,
}
"""Figure name -> plot function."""


PassKCurve = tuple[Sequence[float], Sequence[float], Sequence[float], Sequence[float]]
"""(k, mean pass@k, lower bound, upper bound), each of the same length; NaN bounds draw no band."""


def plot_passk_curves(curves: Mapping[str, PassKCurve], title: str | None = None, log_k: bool = True):
    """
    Held-out pass@k against k, one line per method with its interval as a band.

    Args:
        curves (`Mapping[str, PassKCurve]`): label -> (k, mean, lower, upper), as computed by
            `verl_meds.analysis.passk_curves` (over seeds, or a bootstrap over problems for a single run).
        title (`str`, *optional*): figure title.
        log_k (`bool`, *optional*, defaults to `True`): k on a base-2 log axis (k = 1..64 spreads evenly).

    Returns:
        `matplotlib.figure.Figure`.
    """
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = figure.subplots()
    for label, (ks, mean, lo, hi) in curves.items():
        ks, mean, lo, hi = (np.asarray(v, dtype=float) for v in (ks, mean, lo, hi))
        line = ax.plot(ks, mean, marker="o", markersize=2.5, label=label)
        if np.isfinite(lo).any():
            ax.fill_between(ks, lo, hi, alpha=0.15, color=line[0].get_color())
    if log_k:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples per problem)")
    ax.set_ylabel("held-out pass@k")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    if title:
        figure.suptitle(title)
    return figure
