#!/usr/bin/env bash
# Runs benchmarks one after another — the scripts given as arguments, or every bench/bench_*.py (~25 min)
# — then regenerates docs/BENCHMARKS.md's tables from bench/results/ (bench/report.py). Other arguments go
# to each script, e.g. `bash scripts/bench.sh bench/bench_model.py --quick` (a smoke run writes no
# results, so the report then changes nothing). Sets up first (scripts/setup.sh), then adds the `bench`
# extra: the LiteLLM proxy bench_model.py compares against, kept out of setup.sh so the tests and CI never
# install it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

VENV=.venv
STAMP="$VENV/.bench-stamp"
want=$(cat pyproject.toml scripts/bench.sh | sha256sum | cut -d' ' -f1)
if ! { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/litellm" ]; }; then
  echo "[bench] installing the bench extra" >&2
  "$VENV/bin/python" -m pip install --quiet -e '.[bench]'
  echo "$want" > "$STAMP"
fi

scripts=()
options=()
for arg in "$@"; do
  case "$arg" in
    *.py) scripts+=("$arg") ;;
    *) options+=("$arg") ;;
  esac
done
[ "${#scripts[@]}" -gt 0 ] || scripts=(bench/bench_*.py)

for script in "${scripts[@]}"; do
  echo "[bench] $script ${options[*]}" >&2
  "$VENV/bin/python" "$script" "${options[@]}"
done

"$VENV/bin/python" bench/report.py
