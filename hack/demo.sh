#!/usr/bin/env bash
# The demo, end to end on the built-in local cluster, from a fresh clone:
#   builds the cluster tools if needed, starts the local control plane (KWOK GPU nodes), sets up
#   the Python venv, installs the CRD, runs the operator, applies gemma.yaml and watches it go
#   Pending -> Downloading -> Starting -> Ready, then prints the endpoint and the conditions.
# KWOK simulates the pods (the download Job completes, the vLLM pod becomes Ready): the control
# plane, scheduler, controllers and operator are real. The operator stops when the demo ends;
# the cluster stays up (hack/cluster.sh down stops it).
#   hack/demo.sh --serve   also runs the Deployment's vLLM container for real as a local process
#                          (CPU build of vLLM, tiny generated Gemma 3) and calls it with examples/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
NS=${DEMO_NAMESPACE:-gemma-demo}
SERVE=0
[ "${1:-}" = --serve ] && SERVE=1

bash hack/build-tools.sh all
bash hack/cluster.sh up
bash hack/venv.sh
eval "$(bash hack/cluster.sh env)"

log "installing the GemmaDeployment CRD"
kubectl apply --server-side --force-conflicts -f crds/gemmadeployments.yaml >/dev/null
kubectl wait --for=condition=Established crd/gemmadeployments.gemma.ai --timeout=60s >/dev/null

log "starting the operator (log: .cluster/operator-demo.log)"
.venv/bin/python -m gemma_operator --namespace "$NS" --http-port 0 > .cluster/operator-demo.log 2>&1 &
operator_pid=$!
trap 'kill $operator_pid 2>/dev/null || true' EXIT

kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" delete gemma gemma --ignore-not-found --wait=true >/dev/null
log "kubectl -n $NS apply -f gemma.yaml"
kubectl -n "$NS" apply -f gemma.yaml

log "kubectl -n $NS get gemma -w   (until Ready)"
kubectl -n "$NS" get gemma
last=""
for _ in $(seq 1 240); do
  row=$(kubectl -n "$NS" get gemma gemma --no-headers 2>/dev/null || true)
  if [ "$row" != "$last" ]; then echo "$row"; last=$row; fi
  phase=$(kubectl -n "$NS" get gemma gemma -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [ "$phase" = Ready ] && break
  if [ "$phase" = Failed ]; then kubectl -n "$NS" describe gemma gemma; exit 1; fi
  if ! kill -0 $operator_pid 2>/dev/null; then cat .cluster/operator-demo.log; exit 1; fi
  sleep 0.5
done
[ "$phase" = Ready ] || { echo "not Ready in time"; kubectl -n "$NS" describe gemma gemma; exit 1; }

echo
kubectl -n "$NS" get gemma,pvc,jobs,deployments,services,pods
echo
kubectl -n "$NS" get gemma gemma -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo
endpoint=$(kubectl -n "$NS" get gemma gemma -o jsonpath='{.status.endpoint}')
log "Ready. In-cluster OpenAI endpoint: $endpoint"
echo "  from a pod:  curl $endpoint/models"
echo "               OPENAI_BASE_URL=$endpoint python examples/vllm_openai_chat_completions.py"
if [ $SERVE = 1 ]; then
  log "running the vLLM server of deployment/gemma for real (hack/serve_local.py)"
  .venv/bin/python hack/serve_local.py "$NS" gemma
fi
echo "  the cluster stays up: eval \"\$(hack/cluster.sh env)\"; kubectl -n $NS get gemma   (stop: hack/cluster.sh down)"
