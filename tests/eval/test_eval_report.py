"""Summaries, the Table-1 layout with several methods, and the pass@k curve figure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from verl_meds.eval.report import count_correct, default_ks, format_table, load_summary, plot_pass_at_k, summarize
from verl_meds.eval.run import write_report


def samples_for(benchmark: str, correct_counts: list[int], n: int) -> list[dict]:
    return [
        {"problem_id": f"{benchmark}/{p}", "sample_index": s, "correct": s < c}
        for p, c in enumerate(correct_counts)
        for s in range(n)
    ]


def make_summary(method: str, counts: dict[str, list[int]], n: int) -> dict:
    samples = [s for name, c in counts.items() for s in samples_for(name, c, n)]
    benchmarks = {name: [f"{name}/{p}" for p in range(len(c))] for name, c in counts.items()}
    return summarize(samples, benchmarks, n, metadata={"method": method, "temperature": 1.0})


def test_default_ks():
    assert default_ks(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]


def test_summary_values_and_average():
    summary = make_summary("m", {"aime24": [0, 2], "math500": [4, 4, 0, 1]}, n=4)
    aime, math = summary["benchmarks"]["aime24"], summary["benchmarks"]["math500"]
    assert aime["pass@1"] == pytest.approx(2 / 8) and math["pass@1"] == pytest.approx(9 / 16)
    assert aime["pass@2"] == pytest.approx((0 + (1 - 1 / 6)) / 2)  # c=2 of 4: 1 - C(2,2)/C(4,2)
    assert math["pass@4"] == pytest.approx(3 / 4)
    assert summary["average"]["pass@1"] == pytest.approx((2 / 8 + 9 / 16) / 2)  # unweighted over benchmarks
    np.testing.assert_allclose(summary["average"]["curve"], np.mean([aime["curve"], math["curve"]], axis=0))
    assert summary["ks"] == [1, 2, 4] and summary["temperature"] == 1.0 and summary["format_version"] == 1
    assert aime["problems"] == {"aime24/0": [4, 0], "aime24/1": [4, 2]}


def test_summary_uses_only_the_first_n_samples_and_rejects_missing_ones():
    samples = samples_for("b", [3], 6)  # samples 0..2 right, 3..5 wrong
    n, c = count_correct(samples, ["b/0"], 4)
    assert n.tolist() == [4] and c.tolist() == [3]
    with pytest.raises(ValueError, match=r"fewer than n=8 samples: b/0 \(6/8\)"):
        summarize(samples, {"b": ["b/0"]}, 8)
    with pytest.raises(ValueError, match="exceeds n=4"):
        summarize(samples, {"b": ["b/0"]}, 4, ks=[8])


def test_table_layout_with_several_methods():
    grpo = make_summary("GRPO", {"aime24": [0, 1], "math500": [2, 2]}, n=4)
    meds = make_summary("MEDS", {"aime24": [1, 1], "math500": [2, 4]}, n=4)
    only_math = make_summary("Base", {"math500": [0, 4]}, n=4)
    markdown = format_table({"GRPO": grpo, "MEDS": meds, "Base": only_math}, fmt="markdown").splitlines()
    assert markdown[0] == (
        "| Method | AIME24 pass@1 | AIME24 pass@4 | MATH500 pass@1 | MATH500 pass@4 | Avg. pass@1 | Avg. pass@4 |"
    )
    assert markdown[1] == "|---|---:|---:|---:|---:|---:|---:|"
    assert markdown[2] == "| GRPO | 12.5 | 50.0 | 50.0 | **100.0** | 31.2 | 75.0 |"
    assert markdown[3] == "| MEDS | **25.0** | **100.0** | **75.0** | **100.0** | **50.0** | **100.0** |"
    assert markdown[4] == "| Base | - | - | 50.0 | 50.0 | - | - |"

    latex = format_table({"GRPO": grpo, "MEDS_v2": meds}, k=2, fmt="latex", digits=2).splitlines()
    assert latex[0] == "\\begin{tabular}{lcccccc}"
    assert latex[2] == (
        "Method & \\multicolumn{2}{c}{AIME24} & \\multicolumn{2}{c}{MATH500} & \\multicolumn{2}{c}{Avg.} \\\\"
    )
    assert latex[4] == " & pass@1 & pass@2 & pass@1 & pass@2 & pass@1 & pass@2 \\\\"
    assert latex[6].startswith("GRPO & 12.50 & 25.00 & ")
    assert latex[7].startswith("MEDS\\_v2 & \\textbf{25.00} & \\textbf{50.00} & ")
    assert latex[2].count("&") == 3 and all(line.count("&") == 6 for line in latex[4:8] if line.endswith("\\\\"))
    assert latex[-1] == "\\end{tabular}"
    with pytest.raises(ValueError, match="fmt"):
        format_table({"GRPO": grpo}, fmt="html")


def test_curves_figure_has_one_line_per_method_and_panel(tmp_path):
    grpo = make_summary("GRPO", {"aime24": [0, 1], "math500": [2, 2]}, n=8)
    meds = make_summary("MEDS", {"aime24": [1, 1], "math500": [2, 4]}, n=8)
    figure = plot_pass_at_k({"GRPO": grpo, "MEDS": meds})
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["AIME24", "MATH500", "Average"]
    for ax, name in zip(visible, ["aime24", "math500", None], strict=True):
        assert ax.get_xscale() == "log"
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == ["GRPO", "MEDS"]
        expected = meds["average"] if name is None else meds["benchmarks"][name]
        np.testing.assert_allclose(lines[1].get_xdata(), np.arange(1, 9))
        np.testing.assert_allclose(lines[1].get_ydata(), 100 * np.asarray(expected["curve"]))

    (tmp_path / "grpo.json").write_text(json.dumps(grpo))
    written = write_report({"GRPO": load_summary(tmp_path / "grpo.json"), "MEDS": meds}, tmp_path / "report")
    assert set(written) == {"markdown", "latex", "plot"}
    assert written["markdown"].read_text().count("\n") == 4
    assert written["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an evaluation summary"):
        load_summary(tmp_path / "bad.json")


def test_importing_eval_and_analysis_leaves_heavy_packages_out():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, verl_meds.eval, verl_meds.analysis\n"
        "print(','.join(m for m in ('verl', 'ray', 'matplotlib', 'transformers', 'vllm') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout.strip() == ""
