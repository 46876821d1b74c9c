#!/usr/bin/env bash
# Run the test suite (sets up .venv first if needed). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh dev
scripts/install_browser.sh
exec .venv/bin/python -m pytest -q "$@"
