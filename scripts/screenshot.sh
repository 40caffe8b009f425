#!/usr/bin/env bash
# Regenerates the dashboard screenshots in docs/ (docs/dashboard-*.png): starts the real
# gateway with a demo config, sends signed events (some to a sink that refuses them, so there
# are dead letters), a duplicate and a few rejections, then has headless Chromium
# (Debian's chromium + chromium-driver) save a PNG of every page.
# Usage: scripts/screenshot.sh [output dir, default docs]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-docs}")
mkdir -p "$out"
HOOKGATE_SCREENSHOTS="$out" cargo test --locked --test dashboard screenshots -- --ignored --exact
ls -l "$out"/dashboard-*.png
