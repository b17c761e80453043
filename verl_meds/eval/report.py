r"""Evaluation summaries, the paper's Table-1 layout (Markdown and LaTeX), and pass@k curves.

A summary (`summarize`, written as `summary.json`) holds, for one model ("method"):

```
{"format_version": 1, "method": str, "model": str, "n": int, "ks": [int], "temperature": float, "top_p": float,
 "max_new_tokens": int, "seed": int, "backend": str,
 "benchmarks": {name: {"num_problems": int, "num_samples": int, "pass@1": float, "pass@<k>": float, ...,
                       "curve": [pass@1, ..., pass@n], "problems": {problem_id: [n, c]}}},
 "average": {"num_benchmarks": int, "pass@1": float, "pass@<k>": float, ..., "curve": [...]}}
```

Values are fractions in [0, 1] (tables print percentages). `pass@1` is the mean accuracy over all samples (every
problem has n samples, so it equals the mean unbiased pass@1). `pass@<k>` is the mean over problems of the unbiased
estimator (`verl_meds.eval.passk`). `average` is the unweighted mean over benchmarks, as in the paper's "Avg." column.

Tables (`format_table`) put methods in rows and, for each benchmark, a pass@1 and a pass@k column, then the average
over the shown benchmarks; the best value of each column is bold. Plots are functions that take summaries and return
a `matplotlib.figure.Figure` (matplotlib is imported inside them).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .passk import pass_at_k

logger = logging.getLogger(__name__)

SUMMARY_FORMAT_VERSION = 1

_DEFAULT_ORDER = ("aime24", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k")


def display_name(benchmark: str) -> str:
    """Column title of a benchmark (`verl_meds.eval.benchmarks` display name; the name itself when unknown)."""
    from verl_meds.eval.benchmarks import BENCHMARKS

    spec = BENCHMARKS.get(benchmark)
    return spec.display_name if spec is not None else benchmark


def default_ks(n: int) -> list[int]:
    """Powers of two up to `n`, and `n` itself: `default_ks(128) == [1, 2, 4, ..., 128]`, `default_ks(6) == [1, 2, 4,
    6]`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    return ks if ks[-1] == n else [*ks, n]


def count_correct(
    samples: Iterable[Mapping[str, Any]], problem_ids: Sequence[str], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """
    Per-problem sample and correct counts, using sample indices 0..n-1 only.

    Args:
        samples (`Iterable[Mapping]`): sample lines (`problem_id`, `sample_index`, `correct`).
        problem_ids (`Sequence[str]`): the P problems, in output order.
        n (`int`): samples per problem.

    Returns:
        `tuple[np.ndarray, np.ndarray]`: n and c as int64 arrays of shape `(P,)`.

    Raises:
        ValueError: if a problem has fewer than `n` samples (the message names a few).
    """
    position = {pid: i for i, pid in enumerate(problem_ids)}
    seen = np.zeros((len(problem_ids), n), dtype=bool)  # (P, n)
    correct = np.zeros((len(problem_ids), n), dtype=bool)  # (P, n)
    for sample in samples:
        row = position.get(str(sample["problem_id"]))
        index = int(sample["sample_index"])
        if row is None or not 0 <= index < n:
            continue
        seen[row, index] = True
        correct[row, index] = bool(sample["correct"])
    incomplete = [(problem_ids[i], int(seen[i].sum())) for i in np.flatnonzero(~seen.all(axis=1))]
    if incomplete:
        listed = ", ".join(f"{pid} ({have}/{n})" for pid, have in incomplete[:5])
        raise ValueError(f"{len(incomplete)} problems have fewer than n={n} samples: {listed}")
    return seen.sum(axis=1).astype(np.int64), correct.sum(axis=1).astype(np.int64)


def summarize(
    samples: Iterable[Mapping[str, Any]],
    benchmarks: Mapping[str, Sequence[str]],
    n: int,
    ks: Sequence[int] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    Summary of one run (format in the module docstring).

    Args:
        samples (`Iterable[Mapping]`): sample lines (see `verl_meds.eval.samples`).
        benchmarks (`Mapping[str, Sequence[str]]`): benchmark name -> its problem ids.
        n (`int`): samples per problem.
        ks (`Sequence[int]`, *optional*): reported k values; defaults to `default_ks(n)`; 1 is always included.
        metadata (`Mapping`, *optional*): run fields copied to the top level (`method`, `model`, `temperature`, ...).

    Returns:
        `dict`: the summary.

    Raises:
        ValueError: if a k exceeds n, a problem lacks samples, or there is no benchmark.
    """
    if not benchmarks:
        raise ValueError("summarize needs at least one benchmark")
    ks = sorted({1, *(ks if ks is not None else default_ks(n))})
    if ks[-1] > n:
        raise ValueError(f"reported k={ks[-1]} exceeds n={n} samples per problem")
    samples = list(samples)
    curve_ks = list(range(1, n + 1))
    per_benchmark: dict[str, Any] = {}
    for name, problem_ids in benchmarks.items():
        num_samples, num_correct = count_correct(samples, list(problem_ids), n)
        curve = pass_at_k(num_samples, num_correct, curve_ks).mean(axis=0)  # (n,)
        entry: dict[str, Any] = {"num_problems": len(problem_ids), "num_samples": int(num_samples.sum())}
        entry["pass@1"] = float(num_correct.sum() / num_samples.sum())
        entry.update({f"pass@{k}": float(curve[k - 1]) for k in ks if k > 1})
        entry["curve"] = [float(v) for v in curve]
        entry["problems"] = {
            pid: [int(a), int(b)] for pid, a, b in zip(problem_ids, num_samples, num_correct, strict=True)
        }
        per_benchmark[name] = entry
    average: dict[str, Any] = {"num_benchmarks": len(per_benchmark)}
    for k in ks:
        average[f"pass@{k}"] = float(np.mean([entry[f"pass@{k}"] for entry in per_benchmark.values()]))
    average["curve"] = [float(v) for v in np.mean([entry["curve"] for entry in per_benchmark.values()], axis=0)]
    summary: dict[str, Any] = {"format_version": SUMMARY_FORMAT_VERSION, **dict(metadata or {}), "n": n, "ks": ks}
    summary["benchmarks"] = per_benchmark
    summary["average"] = average
    return summary


def load_summary(path: str | os.PathLike) -> dict[str, Any]:
    """
    Read a `summary.json`.

    Raises:
        ValueError: if the file is not a summary of a known format version.
    """
    summary = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(summary, dict) or summary.get("format_version") != SUMMARY_FORMAT_VERSION:
        raise ValueError(f"{path} is not an evaluation summary (format_version {SUMMARY_FORMAT_VERSION})")
    return summary


def _table_benchmarks(summaries: Mapping[str, Mapping[str, Any]], benchmarks: Sequence[str] | None) -> list[str]:
    if benchmarks is not None:
        return list(benchmarks)
    present = {name for summary in summaries.values() for name in summary["benchmarks"]}
    ordered = [name for name in _DEFAULT_ORDER if name in present]
    return ordered + sorted(present - set(ordered))


def _table_k(summaries: Mapping[str, Mapping[str, Any]], k: int | None) -> int:
    if k is not None:
        return int(k)
    return int(min(summary["n"] for summary in summaries.values()))


def table_values(
    summaries: Mapping[str, Mapping[str, Any]], k: int | None = None, benchmarks: Sequence[str] | None = None
) -> tuple[list[str], int, dict[str, list[float]]]:
    """
    The numbers of a Table-1 layout: for each method, pass@1 and pass@k (percent) per benchmark, then the average.

    Args:
        summaries (`Mapping[str, Mapping]`): method name -> summary, in row order.
        k (`int`, *optional*): the k of the second column of each benchmark; defaults to the smallest n.
        benchmarks (`Sequence[str]`, *optional*): columns; defaults to every benchmark of any summary, paper order.

    Returns:
        `tuple[list[str], int, dict[str, list[float]]]`: the benchmarks, k, and for each method a list of
        `2 * (len(benchmarks) + 1)` values in percent (NaN where a method lacks a benchmark or that k; the average
        is NaN then too).

    Raises:
        ValueError: if there is no summary.
    """
    if not summaries:
        raise ValueError("format_table needs at least one summary")
    names = _table_benchmarks(summaries, benchmarks)
    k = _table_k(summaries, k)
    rows: dict[str, list[float]] = {}
    for method, summary in summaries.items():
        values: list[float] = []
        for name in names:
            entry = summary["benchmarks"].get(name, {})
            for key in ("pass@1", f"pass@{k}"):
                value = entry.get(key)
                if value is None and key != "pass@1" and "curve" in entry and k <= len(entry["curve"]):
                    value = entry["curve"][k - 1]
                values.append(100.0 * value if value is not None else float("nan"))
        pass1, passk = values[0::2], values[1::2]
        values += [float(np.mean(pass1)) if names else float("nan"), float(np.mean(passk)) if names else float("nan")]
        rows[method] = values
    return names, k, rows


def _best(rows: dict[str, list[float]], column: int, digits: int) -> float:
    """Best rounded value of a column; NaN (nothing bold) when fewer than two methods have a value there."""
    finite = [round(values[column], digits) for values in rows.values() if np.isfinite(values[column])]
    return max(finite) if len(finite) >= 2 else float("nan")


def format_table(
    summaries: Mapping[str, Mapping[str, Any]],
    k: int | None = None,
    fmt: Literal["markdown", "latex"] = "markdown",
    benchmarks: Sequence[str] | None = None,
    digits: int = 1,
    bold_best: bool = True,
) -> str:
    r"""
    Several methods side by side in the paper's Table-1 layout.

    Args:
        summaries (`Mapping[str, Mapping]`): method name -> summary (from `summarize` / `load_summary`), row order.
        k (`int`, *optional*): k of the pass@k columns; defaults to the smallest n among the summaries.
        fmt (`Literal["markdown", "latex"]`, *optional*, defaults to `"markdown"`): output format; LaTeX uses
            `booktabs` rules and `\multicolumn` benchmark headers.
        benchmarks (`Sequence[str]`, *optional*): benchmark columns, in order (see `table_values`).
        digits (`int`, *optional*, defaults to `1`): decimals of the percentages.
        bold_best (`bool`, *optional*, defaults to `True`): bold the best value of each column (ties all bold).

    Returns:
        `str`: the table, ending with a newline; a missing value prints as `-`.

    Raises:
        ValueError: for no summaries or an unknown `fmt`.
    """
    if fmt not in ("markdown", "latex"):
        raise ValueError(f"fmt must be 'markdown' or 'latex', got {fmt!r}")
    names, k, rows = table_values(summaries, k, benchmarks)
    titles = [display_name(name) for name in names] + ["Avg."]
    best = [_best(rows, column, digits) for column in range(2 * len(titles))]

    def cell(value: float, column: int) -> str:
        if not np.isfinite(value):
            return "-"
        text = f"{value:.{digits}f}"
        if bold_best and round(value, digits) == best[column]:
            return f"**{text}**" if fmt == "markdown" else f"\\textbf{{{text}}}"
        return text

    if fmt == "markdown":
        header = ["Method"] + [f"{title} {metric}" for title in titles for metric in ("pass@1", f"pass@{k}")]
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for method, values in rows.items():
            lines.append("| " + " | ".join([method] + [cell(v, i) for i, v in enumerate(values)]) + " |")
        return "\n".join(lines) + "\n"

    lines = [
        "\\begin{tabular}{l" + "cc" * len(titles) + "}",
        "\\toprule",
        "Method & " + " & ".join(f"\\multicolumn{{2}}{{c}}{{{_latex_escape(t)}}}" for t in titles) + " \\\\",
        " ".join(f"\\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(titles))),
        " & " + " & ".join(["pass@1", f"pass@{k}"] * len(titles)) + " \\\\",
        "\\midrule",
    ]
    for method, values in rows.items():
        lines.append(" & ".join([_latex_escape(method)] + [cell(v, i) for i, v in enumerate(values)]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    replacements = {
        "\\": "\\textbackslash{}",
        "&": "\\&",
        "%": "\\%",
        "$": "\\$",
        "#": "\\#",
        "_": "\\_",
        "{": "\\{",
        "}": "\\}",
        "~": "\\textasciitilde{}",
        "^": "\\textasciicircum{}",
    }
    return "".join(replacements.get(char, char) for char in str(text))


def plot_pass_at_k(
    summaries: Mapping[str, Mapping[str, Any]], benchmarks: Sequence[str] | None = None, include_average: bool = True
):
    """
    pass@k curves (k = 1..n on a log2 axis, pass@k in percent): one panel per benchmark (and the average), one line
    per method.

    Args:
        summaries (`Mapping[str, Mapping]`): method name -> summary; each benchmark entry needs its `curve`.
        benchmarks (`Sequence[str]`, *optional*): panels, in order; defaults as in `format_table`.
        include_average (`bool`, *optional*, defaults to `True`): add an "Average" panel (the summary's `average`).

    Returns:
        `matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    names = _table_benchmarks(summaries, benchmarks)
    panels = [(display_name(name), name) for name in names] + ([("Average", None)] if include_average else [])
    columns = min(3, len(panels))
    grid_rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.2 * columns, 3.3 * grid_rows + 0.4), layout="constrained")
    axes = figure.subplots(grid_rows, columns, squeeze=False)
    handles = {}
    for ax, (title, name) in zip(axes.flat, panels, strict=False):
        for position, (method, summary) in enumerate(summaries.items()):
            entry = summary["average"] if name is None else summary["benchmarks"].get(name)
            if entry is None:
                continue
            curve = np.asarray(entry["curve"], dtype=float)  # (n,)
            (line,) = ax.plot(
                np.arange(1, curve.size + 1),
                100.0 * curve,
                color=f"C{position % 10}",
                marker="o" if curve.size <= 16 else None,
                markersize=3,
                label=method,
            )
            handles.setdefault(method, line)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_ylim(-2, 102)
        ax.set_title(title)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    order = [method for method in summaries if method in handles]
    figure.legend(
        [handles[m] for m in order], order, loc="outside upper center", ncols=min(4, len(handles)), fontsize="small"
    )
    return figure
