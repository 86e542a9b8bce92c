#!/usr/bin/env bash
# The test command: sets up everything the tests need on a fresh machine, then runs them.
#   hack/test.sh              all suites: unit, cluster, download, chart, e2e, serving, node
#   hack/test.sh tests/unit   only what you name (any pytest arguments)
# Builds the cluster tools (first time: ~10 min), the vLLM CPU venv (first time: a few min,
# ~6 GB in ~/.cache/gemma-operator), starts the local cluster with its real node (root; Debian's
# containerd, runc and CNI plugins are installed when missing), builds the images and imports them into
# the node (first time: ~10 min; seconds when nothing changed), and leaves the cluster running.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
bash hack/venv.sh
bash hack/build-tools.sh all lint-tools
bash hack/cluster.sh up >/dev/null
if [ $# -eq 0 ] || [[ " $* " == *" tests/node"* ]]; then
  bash hack/images.sh
fi
if [ $# -eq 0 ]; then
  set -- tests/unit tests/cluster tests/download tests/chart tests/e2e tests/serving tests/node
fi
exec .venv/bin/python -m pytest "$@"
