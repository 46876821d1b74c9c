#!/usr/bin/env bash
# Run the test suite (sets up .venv first if needed). Extra arguments go to pytest.
# One pytest-xdist worker per core, whole files to a worker (their fixtures build once);
# `./test.sh -n 0 ...` runs in one process.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh dev
scripts/install_browser.sh
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@"
