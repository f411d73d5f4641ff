#!/usr/bin/env bash
# Run the gateway: with no arguments, the demo model on an embedded SQLite file (./.faregate).
# Arguments go to `faregate serve` (e.g. scripts/serve.sh --config config.yaml --port 4000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/faregate serve "$@"
