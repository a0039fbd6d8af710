#!/usr/bin/env bash
# Sets everything up, then runs the main job: a whole job through the marketplace, start to finish.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fabstir demo --mock "$@"
