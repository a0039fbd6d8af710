#!/usr/bin/env bash
# Sets everything up, then runs the whole quality gate: ruff, mypy (strict) and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
echo "[test] ruff" >&2
ruff check src tests bench
ruff format --check src tests bench
echo "[test] mypy --strict" >&2
mypy
echo "[test] pytest" >&2
pytest "$@"
