#!/usr/bin/env bash
# Set up .venv if needed, then build the documentation into docs/_build/html, executing the
# notebooks. Any warning or failing notebook cell fails the build. No network is needed.
# -E reads every page afresh, so that warnings of unchanged pages are not hidden by the cache.
# Arguments are passed on to sphinx-build: bash scripts/docs.sh -j 2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
"$VENV_DIR/bin/sphinx-build" -W --keep-going -E -b html "$@" docs docs/_build/html
echo "Built docs/_build/html/index.html"
