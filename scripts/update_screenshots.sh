#!/usr/bin/env bash
# Copy the two screenshots the README shows from the last browser-test run into docs/.
#   .venv/bin/python -m pytest tests/e2e/test_call_browser.py -k full && scripts/update_screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
src=tests/artifacts/e2e
cp "$src/outlet-4-in-call.png" docs/screenshots/outlet-in-call.png
cp "$src/console-2-in-call-screen.png" docs/screenshots/console-in-call.png
echo "updated docs/screenshots/outlet-in-call.png and docs/screenshots/console-in-call.png"
