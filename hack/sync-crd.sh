#!/usr/bin/env bash
# Copies the CRD (crds/gemmadeployments.yaml, the one source of truth) into the Helm chart, which
# renders it with the keep annotation set on the parsed object (charts/gemma-operator/templates/crds.yaml).
# tests/chart checks that the two files are identical; run this after every change to the CRD.
#   hack/sync-crd.sh          copy
#   hack/sync-crd.sh --check  exit 1 if the chart's copy differs
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/crds/gemmadeployments.yaml"
dst="$root/charts/gemma-operator/files/gemmadeployments.yaml"
if [ "${1:-}" = "--check" ]; then
  cmp -s "$src" "$dst" || { echo "$dst differs from $src: run hack/sync-crd.sh" >&2; exit 1; }
  exit 0
fi
cp "$src" "$dst"
echo "copied $src -> $dst"
