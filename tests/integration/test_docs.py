"""The documentation builds without a single warning, notebooks executed (as scripts/docs.sh).

A docs-build test (marker ``docs``): it fails on any Sphinx warning (broken link or reference,
docstring that does not parse, page outside every toctree) and on any failing notebook cell.
Deselect it with ``-m "not docs"``.
"""

import os
import subprocess
import sys

import pytest
from helpers.paths import REPO_ROOT

pytest.importorskip("sphinx", reason="sphinx is not installed: pip install -e '.[docs]' (scripts/_setup.sh does)")

pytestmark = [pytest.mark.slow, pytest.mark.docs]

DOCS = REPO_ROOT / "docs"


def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-j", "1", "-q", "-b", "html",
               "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=3000)
    lines = result.stderr.splitlines()
    problems = [line for line in lines if "WARNING:" in line or "ERROR:" in line]
    assert result.returncode == 0, "docs build failed:\n" + "\n".join(problems + ["..."] + lines[-30:])

    from xanysat import MODALITIES

    sensors = (out / "sensors.html").read_text()
    assert all(f"sensor-{name}" in sensors for name in MODALITIES), "the sensors page misses a sensor"
    assert (out / "api" / "generated" / "xanysat.stac.html").is_file()
