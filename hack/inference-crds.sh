#!/usr/bin/env bash
# Prints the path of the Gateway API Inference Extension's InferencePool CRD, taken from the project's Go
# module at the pinned version (hack/versions.env), downloaded once into the module cache.
#   hack/inference-crds.sh    -> .../inference.networking.k8s.io_inferencepools.yaml
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
v=$GATEWAY_API_INFERENCE_EXTENSION_VERSION
mod="$GEMMA_CACHE/modules/inference-extension-$v"
mkdir -p "$mod"
[ -f "$mod/go.mod" ] || printf 'module local/inference-extension\ngo 1.25\n' > "$mod/go.mod"
dir=$(cd "$mod" && go mod download -json "sigs.k8s.io/gateway-api-inference-extension@$v" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
crd="$dir/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"
[ -f "$crd" ] || { echo "no InferencePool CRD in $dir" >&2; exit 1; }
echo "$crd"
