#!/usr/bin/env bash
# (Issue 12, unrelated objects: .venv/bin/python -m bench.unrelated, see its docstring.)
# The scale benchmark of docs/benchmarks.md: bench/run.sh [N ...] (default: 50), extra options after --.
#   bench/run.sh              # N=50
#   bench/run.sh 200 500      # N=200, then N=500
#   bench/run.sh 50 -- --idle-seconds 30 --label after
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ns=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do ns+=(--n "$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#ns[@]} -eq 0 ] && ns=(--n 50)
exec .venv/bin/python -m bench.scale "${ns[@]}" "$@"
