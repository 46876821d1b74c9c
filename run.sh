#!/usr/bin/env bash
# The main job: `waluigi demo` - emergent misalignment end to end on CPU, offline. Pretrains a
# tiny model in the persona world, aligns it, fine-tunes it on narrow coding data (insecure,
# secure, educational, backdoor; 3 seeds each) and measures the misalignment rate of each
# condition with the world's oracle judge. Base and aligned models are cached by identity under
# runs/, so a second run reuses them. Extra arguments go to `waluigi demo` (e.g. ./run.sh --quick,
# ./run.sh --no-villain, ./run.sh --json).
set -euo pipefail
cd "$(dirname "$0")"
scripts/bootstrap.sh
exec .venv/bin/waluigi demo "$@"
