#!/usr/bin/env bash
# The whole test suite from a fresh checkout: install, start services, lint, test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/services.sh
.venv/bin/ruff check src tests bench
exec .venv/bin/python -m pytest "$@"
