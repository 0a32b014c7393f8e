"""Running the ``xanysat`` command in a subprocess, and reading its one error line."""

from __future__ import annotations

import os
import subprocess
import sys


def xanysat(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xanysat.cli", *args], check=False, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"})


def error_line(done: subprocess.CompletedProcess, command: str) -> str:
    """The run's one error line (stderr also carries progress lines), checked to be the last."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"xanysat {command}: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], done.stderr
    return errors[0]
