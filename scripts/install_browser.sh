#!/usr/bin/env bash
# The headless browser the report tests drive (Debian's chromium; Playwright drives it, and never
# downloads a browser of its own). A no-op when /usr/bin/chromium is there; needs root and apt.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "the report tests need Chromium: install Debian's 'chromium' package (apt-get install chromium)" >&2
  exit 0
fi
echo "installing chromium for the report tests (first run only, about 30 s)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null; }
