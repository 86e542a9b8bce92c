#!/usr/bin/env bash
# The test command: sets up everything the tests need on a fresh machine, then runs them.
#   hack/test.sh              all suites: unit, cluster, download, e2e, chart, serving
#   hack/test.sh tests/unit   only what you name (any pytest arguments)
# Builds the cluster tools (first time: ~10 min), the vLLM CPU venv (first time: a few min,
# ~6 GB in ~/.cache/gemma-operator), starts the local cluster, and leaves it running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
bash hack/venv.sh
bash hack/build-tools.sh all lint-tools
bash hack/cluster.sh up >/dev/null
if [ $# -eq 0 ]; then
  set -- tests/unit tests/cluster tests/download tests/chart tests/e2e tests/serving
fi
exec .venv/bin/python -m pytest "$@"
