#!/usr/bin/env bash
# The whole test suite from a fresh checkout: install, start services, lint, test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/real-model.sh   # llama-server + SmolLM2 for tests marked real_model (FAREGATE_SKIP_REAL_MODEL=1: skip)
scripts/services.sh
scripts/browser.sh      # Debian's chromium for tests/ui (Playwright drives it; no browser download)
.venv/bin/ruff check src tests bench
.venv/bin/lint-imports        # the layering: [tool.importlinter] in pyproject.toml
.venv/bin/mypy src            # strict types: [tool.mypy] in pyproject.toml
# Test files run in parallel (-n, one file per worker at a time so module fixtures stay
# together): most tests wait on real processes and the network, not on the CPU.
exec .venv/bin/python -m pytest -n "${FAREGATE_TEST_WORKERS:-3}" --dist loadfile "$@"
