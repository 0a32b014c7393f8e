"""Paths the tests read, computed once from this file's place (``tests/helpers/paths.py``).

``REPO_ROOT`` is the repository, ``TESTS`` its ``tests/`` folder, ``FIXTURES`` the shared
fixtures beside the repository (``../shared/fixtures``); ``load_fixture`` reads a parity
reference from ``FIXTURES / "parity"`` or skips the test when the fixtures are absent.
"""

from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS.parent
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"
PARITY = FIXTURES / "parity"


def load_fixture(name: str):
    path = PARITY / name
    if not path.is_file():
        pytest.skip(f"parity fixture {path} not present (expected ../shared/fixtures beside the repo)")
    return torch.load(path, weights_only=True)
