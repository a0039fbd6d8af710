#!/usr/bin/env bash
# Sets everything up, then runs the main job: a whole job through a throwaway devnet (a bootstrap peer and
# two hosts in processes of their own, real libp2p on loopback, the built-in model), start to finish.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fabstir demo "$@"
