#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite (on 2 processes unless arguments are given).
# Arguments are passed on to pytest: bash scripts/test.sh -m "not slow" -x
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"

# Best effort: PostGIS and pypgstac let the pgstac STAC API tests (query / CQL2 filters) run;
# without them those tests are skipped with the reason.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
        && ! ls /usr/share/postgresql/*/extension/postgis.control >/dev/null 2>&1 \
        && ls -d /usr/lib/postgresql/15 >/dev/null 2>&1; then
    echo "Installing PostGIS for the pgstac tests ..."
    { apt-get install -y -q postgresql-15-postgis-3 >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql-15-postgis-3 >/dev/null 2>&1; }; } \
        || echo "PostGIS could not be installed; the pgstac tests will be skipped." >&2
fi
"$VENV_PYTHON" -c "import pypgstac" 2>/dev/null \
    || "$VENV_PYTHON" -m pip install --quiet --no-deps "pypgstac==0.9.12" \
    || echo "pypgstac could not be installed; the pgstac tests will be skipped." >&2

# The layer contracts (pyproject [tool.importlinter]): each layer imports only those below it,
# no import cycle, the torch layers never import xarray.
"$VENV_DIR/bin/lint-imports"

if [ "$#" -eq 0 ]; then
    set -- -n 2
fi
status=0
"$VENV_PYTHON" -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "pytest collected no tests; treating that as a failure." >&2
    exit 1
fi
exit "$status"
