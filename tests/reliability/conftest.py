"""Hypothesis profiles for the reliability suite, selected with the environment variable ``HYPOTHESIS_PROFILE``.

- ``ci`` (default): 200 examples per property; what ``pytest -m "not slow" tests`` runs.
- ``slow``: 10,000 examples per property. The ``@pytest.mark.slow`` tests of ``test_properties.py`` always run
  with it (``pytest -m slow tests/reliability``); ``HYPOTHESIS_PROFILE=slow`` also applies it to the CI tests.
- ``dev``: 20 examples, for editing the suite.

No deadline in any profile: a shared 2-core machine makes per-example timings meaningless. The example database is
off so that a run's result never depends on what an earlier run stored in ``.hypothesis/``; failures are reported
with their minimal example and ``@reproduce_failure`` blob instead.
"""

from __future__ import annotations

import os

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, settings  # noqa: E402

CI_EXAMPLES = 200
SLOW_EXAMPLES = 10_000

_COMMON = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}
settings.register_profile("ci", max_examples=CI_EXAMPLES, **_COMMON)
settings.register_profile("slow", max_examples=SLOW_EXAMPLES, **_COMMON)
settings.register_profile("dev", max_examples=20, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
