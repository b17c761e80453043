"""Shared pytest configuration: the project's test markers."""


def pytest_configure(config):
    """Register markers so ``-m "not slow"`` and ``--strict-markers`` work."""
    config.addinivalue_line("markers", "slow: takes more than about a minute on one CPU thread")
    config.addinivalue_line("markers", "requires_verl: needs verl installed (skipped otherwise)")


def pytest_collection_modifyitems(config, items):
    """Run the fast unit tests first and the real verl training runs (tests/e2e) last."""
    items.sort(key=lambda item: "/e2e/" in str(item.fspath).replace("\\", "/"))
