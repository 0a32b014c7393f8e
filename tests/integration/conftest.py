"""Integration tests: end to end, slow. Each module here says so itself with
``pytestmark = pytest.mark.slow`` (``pytest -m "not slow"`` leaves them out); this hook stops the
run when a test here lacks the mark."""

from pathlib import Path

import pytest
from helpers.paths import TESTS

HERE = TESTS / "integration"


def pytest_collection_modifyitems(config, items):
    unmarked = [item.nodeid for item in items
                if HERE in Path(item.path).resolve().parents and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError("tests in tests/integration/ without the slow mark (add "
                                "`pytestmark = pytest.mark.slow` to the module):\n  " + "\n  ".join(unmarked))
