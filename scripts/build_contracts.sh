#!/usr/bin/env bash
# Rebuilds the committed contract artifacts (src/fabstir/chain/artifacts/) from contracts/src with the
# pinned solc-js (contracts/package-lock.json). Run it after changing a .sol file and commit the result:
# tests/chain/test_artifacts.py fails while the artifacts and the sources disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d contracts/node_modules/solc ]; then
  echo "[build_contracts] contracts/node_modules is missing: run scripts/setup.sh first" >&2
  exit 1
fi
exec node contracts/build.mjs "$@"
