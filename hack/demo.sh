#!/usr/bin/env bash
# The demo, end to end on the built-in local cluster, from a fresh clone (the README's first command):
#
#   hack/demo.sh              the real path: pods really run on the cluster's real node
#   hack/demo.sh --simulated  the control plane only: KWOK simulates the pods (no root, no images)
#
# The real path builds what it needs (cluster tools, the real node, the images of images/*, a tiny
# generated Gemma 3), serves that model from a stand-in ModelScope hub on 10.250.0.1 under the seed's id
# LLM-Research/gemma-3-4b-it, installs the chart with Helm (the operator watching namespace gemma-demo),
# applies gemma.yaml unchanged and watches it go Pending -> Downloading -> Starting -> Ready. Then a
# client pod runs the seed's three curl calls (examples/curl_examples.sh) against status.endpoint,
# through the Service, and their answers from vLLM are printed.
#
# Afterwards the cluster, the operator and the model server keep running (hack/cluster.sh down stops
# everything); the stand-in hub stops with the demo (the model is on the cache volume by then).
# Running it again starts the resource afresh. Nothing it leaves affects hack/test.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
SYSTEM_NS=gemma-system
MODE=real
case ${1:-} in
  --simulated) MODE=simulated ;;
  "") ;;
  *) echo "usage: $0 [--simulated]" >&2; exit 2 ;;
esac
if [ $MODE = real ] && [ "$(id -u)" != 0 ]; then
  log "the real node needs root (containers, network namespaces); running the simulated demo instead"
  MODE=simulated
fi
# Each mode has its own namespace: the real one's operator (Helm) keeps watching gemma-demo.
if [ $MODE = real ]; then NS=${DEMO_NAMESPACE:-gemma-demo}; else NS=${DEMO_NAMESPACE:-gemma-demo-simulated}; fi
t0=$SECONDS

bash hack/build-tools.sh all
if [ $MODE = real ]; then bash hack/cluster.sh up; else GEMMA_REAL_NODE=${GEMMA_REAL_NODE:-0} bash hack/cluster.sh up; fi
bash hack/venv.sh
eval "$(bash hack/cluster.sh env)"

log "installing the GemmaDeployment CRD"
kubectl apply --server-side --force-conflicts -f crds/gemmadeployments.yaml >/dev/null
kubectl wait --for=condition=Established crd/gemmadeployments.gemma.ai --timeout=60s >/dev/null

namespace() {  # namespace NAME: created, and on the real path its pods go to the real node (restricted)
  kubectl create namespace "$1" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  if [ $MODE = real ]; then
    # shellcheck disable=SC2046 # one annotation per word
    kubectl annotate namespace "$1" --overwrite $(bash hack/node.sh namespace-annotations) >/dev/null
    kubectl label namespace "$1" --overwrite pod-security.kubernetes.io/enforce=restricted >/dev/null
  fi
}
namespace "$NS"
kubectl -n "$NS" delete gemma gemma --ignore-not-found --wait=true >/dev/null

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

if [ $MODE = real ]; then
  bash hack/images.sh
  model=$GEMMA_CACHE/demo/tiny-gemma3
  bash hack/tiny-model.sh "$model"
  log "serving $model as LLM-Research/gemma-3-4b-it from a stand-in ModelScope hub (slowed down, to watch it)"
  rm -f .cluster/demo-hub.url
  .venv/bin/python -m tests.support.hub_server --model-dir "$model" --model-id LLM-Research/gemma-3-4b-it \
    --bytes-per-second 20000 --url-file .cluster/demo-hub.url > .cluster/demo-hub.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 50); do [ -s .cluster/demo-hub.url ] && break; sleep 0.2; done
  hub=$(cat .cluster/demo-hub.url)
  eval "$(bash hack/images.sh names | sed 's/^\([a-z]*\)-\?\([a-z]*\)=/img_\1\2=/')"
  namespace "$SYSTEM_NS"
  log "helm upgrade --install gemma-operator charts/gemma-operator -n $SYSTEM_NS (watching namespace $NS)"
  # shellcheck disable=SC2154 # img_* come from `hack/images.sh names`
  helm upgrade --install gemma-operator charts/gemma-operator -n "$SYSTEM_NS" --wait --timeout 5m \
    --set image.repository="${img_operator%:*}" --set image.tag="${img_operator##*:}" \
    --set crds.enabled=false --set "watchNamespaces={$NS}" \
    --set operator.vllmImage="$img_vllmcpu" --set operator.downloaderImage="$img_downloader" \
    --set operator.modelscopeEndpoint="$hub" \
    --set 'operator.extraEnv[0].name=GEMMA_PROGRESS_INTERVAL_SECONDS' --set-string 'operator.extraEnv[0].value=2' \
    >/dev/null
  kubectl -n "$SYSTEM_NS" get pods -o wide
else
  log "starting the operator as a local process (log: .cluster/operator-demo.log)"
  .venv/bin/python -m gemma_operator --namespace "$NS" --http-port 0 > .cluster/operator-demo.log 2>&1 &
  pids+=($!)
fi

log "kubectl -n $NS apply -f gemma.yaml"
kubectl -n "$NS" apply -f gemma.yaml

log "kubectl -n $NS get gemma -w   (until Ready)"
kubectl -n "$NS" get gemma
last="" phase=""
deadline=$((SECONDS + 900))
while [ $SECONDS -lt $deadline ]; do
  row=$(kubectl -n "$NS" get gemma gemma --no-headers 2>/dev/null || true)
  # A new line when something but the AGE column changed.
  if [ "${row% *}" != "${last% *}" ]; then echo "$row"; fi
  last=$row
  phase=$(kubectl -n "$NS" get gemma gemma -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [ "$phase" = Ready ] && break
  if [ "$phase" = Failed ]; then kubectl -n "$NS" describe gemma gemma; exit 1; fi
  sleep 1
done
[ "$phase" = Ready ] || { echo "not Ready in time"; kubectl -n "$NS" describe gemma gemma; exit 1; }

echo
kubectl -n "$NS" get gemma,pvc,jobs,deployments,services,pods -o wide
echo
kubectl -n "$NS" get gemma gemma -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo
endpoint=$(kubectl -n "$NS" get gemma gemma -o jsonpath='{.status.endpoint}')
log "Ready in $((SECONDS - t0))s. In-cluster OpenAI endpoint: $endpoint"

if [ $MODE = real ]; then
  log "the seed's curl calls from a client pod, through the Service ($endpoint)"
  kubectl -n "$NS" create configmap demo-examples --from-file=examples/curl_examples.sh \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl -n "$NS" delete pod demo-client --ignore-not-found --wait=true >/dev/null
  kubectl -n "$NS" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: demo-client
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: curl
    image: $img_vllmcpu
    command: [bash, /examples/curl_examples.sh]
    env:
    - {name: OPENAI_BASE_URL, value: "$endpoint"}
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
    volumeMounts: [{name: examples, mountPath: /examples}]
  volumes: [{name: examples, configMap: {name: demo-examples}}]
EOF
  kubectl -n "$NS" wait pod/demo-client --for=jsonpath='{.status.phase}'=Succeeded --timeout=180s >/dev/null \
    || { kubectl -n "$NS" logs demo-client; kubectl -n "$NS" describe pod demo-client | tail -20; exit 1; }
  kubectl -n "$NS" logs demo-client
  kubectl -n "$NS" delete pod demo-client --wait=false >/dev/null
  echo
  log "demo done in $((SECONDS - t0))s"
  echo "  from your shell:  eval \"\$(hack/cluster.sh env)\"; kubectl -n $NS port-forward svc/gemma 8000:8000 &"
  echo "                    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 examples/curl_examples.sh"
else
  echo "  (simulated pods: nothing answers there; hack/demo.sh without --simulated runs vLLM for real)"
fi
echo "  the cluster stays up: eval \"\$(hack/cluster.sh env)\"; kubectl -n $NS get gemma   (stop: hack/cluster.sh down)"
