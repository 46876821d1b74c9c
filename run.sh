#!/usr/bin/env bash
# The main job: evaluate the embedded SmolLM2-135M-Instruct on the built-in `core` suite,
# offline on CPU, judged by SmolLM2 itself (the only judge available offline), and measure
# what that judge is worth against the paper's gpt-4o scores. Extra arguments go to
# `waluigi eval` (e.g. ./run.sh --samples 5); each setting gets its own run directory,
# named by its identity hash, and re-running the same setting resumes it.
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
export WALUIGI_DATA_DIR="${WALUIGI_DATA_DIR:-$(cd .. && pwd)/shared/reference/emergent-misalignment}"
[ -d "$WALUIGI_DATA_DIR" ] || unset WALUIGI_DATA_DIR
exec .venv/bin/waluigi eval --model smollm2 --suite core --judge smollm2 \
  --samples 2 --max-tokens 128 --check-judge "$@"
