# Shared set-up for scripts/demo.sh, scripts/test.sh and scripts/docs.sh; source it, don't run it.
# Creates .venv if missing and (re)installs xanysat with its test and docs extras whenever
# pyproject.toml or constraints.txt changed since the last successful install.
# Override the interpreter used to create the venv with PYTHON=/path/to/python3.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

VENV_DIR="$REPO_ROOT/.venv"
VENV_PYTHON="$VENV_DIR/bin/python"
INSTALL_STAMP="$VENV_DIR/.xanysat-install-stamp"

if [ ! -x "$VENV_PYTHON" ]; then
    base_python="${PYTHON:-python3}"
    if ! "$base_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "xanysat needs Python >= 3.11; '$base_python' is missing or older." >&2
        echo "Set PYTHON=/path/to/python3.11+ and run again." >&2
        exit 1
    fi
    echo "Creating virtual environment in .venv ..."
    "$base_python" -m venv "$VENV_DIR"
fi

wanted_hash="$("$VENV_PYTHON" - <<'PY'
import hashlib
digest = hashlib.sha256()
for name in ("pyproject.toml", "constraints.txt"):
    with open(name, "rb") as handle:
        digest.update(handle.read())
print(digest.hexdigest())
PY
)"

if [ ! -f "$INSTALL_STAMP" ] || [ "$(cat "$INSTALL_STAMP")" != "$wanted_hash" ]; then
    echo "Installing xanysat and its dependencies into .venv (first run or changed requirements) ..."
    "$VENV_PYTHON" -m pip install --quiet -c constraints.txt -e ".[test,docs]"
    echo "$wanted_hash" > "$INSTALL_STAMP"
fi
