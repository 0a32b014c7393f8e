#!/usr/bin/env bash
# Set up .venv if needed, then run the TreeSatAI embedding demo.
# Arguments are passed on: bash scripts/demo.sh --out results/demo --model base
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec "$VENV_PYTHON" -m xanysat.apps.demo "$@"
