#!/usr/bin/env bash
# Set everything up and serve the embedded demo bundle at 127.0.0.1:8000 (extra args go to `brainstacks serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/brainstacks serve "$@"
