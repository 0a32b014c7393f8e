#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite.
# Arguments are passed on to pytest: bash scripts/test.sh -m "not slow" -n 2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"

status=0
"$VENV_PYTHON" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests; treating that as a failure." >&2
    exit 1
fi
exit "$status"
