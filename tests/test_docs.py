"""The metric documentation lists every metric the core defines."""

from pathlib import Path

from verl_meds.metrics import METRIC_DESCRIPTIONS

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_core_metric_is_documented():
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    missing = [name for name in METRIC_DESCRIPTIONS if f"`{name}`" not in text]
    assert not missing, f"undocumented metrics: {missing}"


def test_trainer_metrics_are_documented():
    text = (DOCS / "metrics.md").read_text(encoding="utf-8")
    root = Path(__file__).resolve().parents[1] / "verl_meds"
    files = [root / "step.py", *sorted((root / "verl" / "hooks").glob("*.py")), root / "verl" / "trainer.py"]
    source = "\n".join(path.read_text(encoding="utf-8") for path in files)
    import re

    names = set(re.findall(r'"(meds/[a-z_]+/[a-z_]+)"', source))
    assert len(names) >= 4, f"too few metric names found in the step, hooks and trainer: {sorted(names)}"
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"undocumented trainer metrics: {missing}"
