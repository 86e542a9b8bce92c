#!/usr/bin/env bash
# The local Kubernetes cluster: a real control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler built from the upstream Go modules by
# hack/build-tools.sh) started by `kwokctl --runtime binary`, with KWOK simulating the GPU nodes
# and their pod lifecycle, and one real node (hack/node.sh: kubelet, containerd, runc, CNI,
# kube-proxy, CoreDNS in a network namespace) whose pods really run.
#
#   hack/cluster.sh up      build missing tools, start (or reuse) the cluster, wait for Ready nodes
#   hack/cluster.sh down    stop every process of the cluster and delete its state
#   hack/cluster.sh env     print `export KUBECONFIG=... PATH=...`; use: eval "$(hack/cluster.sh env)"
#   hack/cluster.sh status  say whether it is up (exit 0) or not (exit 1)
#   hack/cluster.sh restart restart every component (repairs a partly running cluster, applies
#                           changed stages.yaml and audit-policy.yaml), keeping every object
#                           (a few seconds without API)
#
# `up` starts again a cluster whose processes are all gone (reboot), but never restarts a
# partly running one under its users: it waits for it to recover, else fails and asks for
# `restart`. Environment: CLUSTER_UP_TIMEOUT (s, default 120); GEMMA_REAL_NODE=0 leaves out the
# real node (a KWOK-only cluster, no root needed).
#
# Nodes (hack/cluster/nodes.yaml): gpu-node-1 and gpu-node-2 with nvidia.com/gpu: 4 and the
# label nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3, and cpu-node-1 without GPUs; and the real
# node gemma-real-node (nvidia.com/gpu: 4 advertised as an extended resource, label
# gemma.ai/node=real, taint gemma.ai/real-node=true:NoSchedule; see hack/node.sh for how a
# namespace sends its pods there).
# Pod lifecycle and fault injection: KWOK stages in hack/cluster/stages.yaml (pods annotated
# sim.gemma.ai/state=download-failed|image-pull-error|crash-loop|oom misbehave on purpose).
#
# Storage: the default StorageClass "standard" (volumeBindingMode Immediate). For each of its
# Pending PVCs, the KWOK stage gemma-pvc-provision creates a hostPath PersistentVolume under
# .cluster/volumes/ pre-bound to the claim (claimRef with the claim's uid), and
# kube-controller-manager's own PV controller binds the pair; gemma-pv-delete removes Released
# volumes. Running this inside kwok (instead of a provisioner loop of our own) adds no process
# to start and stop, and scales to hundreds of claims (kwok works from watches, the control
# plane runs with --disable-qps-limits).
#
# Everything lives in .cluster/ (ignored by git): kubeconfig, audit.log (Metadata-level audit
# events of every write, see hack/cluster/audit-policy.yaml), kwok/ (kwokctl's work dir with
# the certificates, etcd data, pid files and logs in kwok/clusters/gemma/logs/). kube-apiserver
# listens on a random port of 127.0.0.1; all components bind to 127.0.0.1 only.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# GEMMA_CLUSTER_DIR and GEMMA_CLUSTER_NAME run a second, independent cluster (the lifecycle
# test of tests/cluster does that, to leave the shared one alone).
CLUSTER_NAME=${GEMMA_CLUSTER_NAME:-gemma}
CLUSTER_DIR=${GEMMA_CLUSTER_DIR:-$REPO_ROOT/.cluster}
case $CLUSTER_DIR in /*) ;; *) CLUSTER_DIR="$PWD/$CLUSTER_DIR" ;; esac
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig"
export KWOK_WORKDIR="$CLUSTER_DIR/kwok"
KWOK_CLUSTER_DIR="$KWOK_WORKDIR/clusters/$CLUSTER_NAME"
CURRENT="$TOOLS_BIN/current"
UP_TIMEOUT=${CLUSTER_UP_TIMEOUT:-120}

# kwokctl would download anything it is not given; it is given everything. As a guard, any
# HTTP(S) request of kwokctl or the components it starts to a non-loopback address goes to a
# closed local port and fails at once (Go never proxies loopback addresses). Not for
# build-tools.sh, which needs the Go module proxy.
# The real node's network (10.250.0.0/24, hack/node.sh) is exempt: the API server calls its
# kubelet there (logs, exec, port-forward).
NO_DOWNLOADS=(HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 "NO_PROXY=127.0.0.1,localhost,10.250.0.0/24"
  http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 "no_proxy=127.0.0.1,localhost,10.250.0.0/24")
REAL_NODE=${GEMMA_REAL_NODE:-1}
node_() { GEMMA_CLUSTER_NAME=$CLUSTER_NAME GEMMA_CLUSTER_DIR=$CLUSTER_DIR bash "$REPO_ROOT/hack/node.sh" "$@"; }

kubectl_() { "$CURRENT/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
kwokctl_() { env "${NO_DOWNLOADS[@]}" "$CURRENT/kwokctl" --name "$CLUSTER_NAME" "$@"; }

api_ready() {
  [ -f "$KUBECONFIG_PATH" ] && kubectl_ --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

# A live process (zombies do not count).
pid_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# True if every component whose pid kwokctl recorded is still running.
components_alive() {
  local f pid n=0
  for f in "$KWOK_CLUSTER_DIR"/pids/*.pid; do
    [ -f "$f" ] || return 1
    pid=$(cat "$f")
    pid_alive "$pid" || return 1
    n=$((n + 1))
  done
  [ "$n" -ge 5 ]
}

# True if any component whose pid kwokctl recorded is running.
any_component_alive() {
  local f
  for f in "$KWOK_CLUSTER_DIR"/pids/*.pid; do
    [ -f "$f" ] && pid_alive "$(cat "$f")" && return 0
  done
  return 1
}

running() { api_ready && components_alive; }

# The processes of this cluster: kwokctl starts the components from symlinks in its work
# dir, so their command lines start with $KWOK_CLUSTER_DIR.
cluster_pids() {
  local p cmd
  for p in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' 2>/dev/null < "$p/cmdline") || continue
    case $cmd in "$KWOK_CLUSTER_DIR/"*) if pid_alive "${p#/proc/}"; then echo "${p#/proc/}"; fi ;; esac
  done
  return 0
}

render_config() {
  mkdir -p "$CLUSTER_DIR/volumes"
  {
    sed -e "s|__CLUSTER_DIR__|$CLUSTER_DIR|g" -e "s|__CLUSTER_NAME__|$CLUSTER_NAME|g" "$REPO_ROOT/hack/cluster/kwokctl.yaml"
    echo "---"
    sed "s|__VOLUME_ROOT__|$CLUSTER_DIR/volumes|g" "$REPO_ROOT/hack/cluster/stages.yaml"
  } > "$CLUSTER_DIR/kwokctl.yaml"
}

# Two lines: what needs a new cluster (kwokctl options, versions), and what a restart of the
# components picks up (stages, audit policy).
config_hash() {
  cat "$REPO_ROOT/hack/cluster/kwokctl.yaml" "$REPO_ROOT/hack/versions.env" | sha256sum | cut -d' ' -f1
  cat "$REPO_ROOT/hack/cluster/stages.yaml" "$REPO_ROOT/hack/cluster/audit-policy.yaml" | sha256sum | cut -d' ' -f1
}

# Stop by pid whatever of the cluster still runs (a component kwokctl lost track of, such as
# a kube-apiserver restarted by a test).
kill_leftovers() {
  local pids i
  for i in $(seq 1 20); do
    pids=$(cluster_pids)
    [ -n "$pids" ] || return 0
    if [ "$i" = 1 ]; then log "stopping leftover processes: $pids"; fi
    local sig=TERM
    [ "$i" -le 10 ] || sig=KILL
    # shellcheck disable=SC2086 # one pid per word
    kill -s "$sig" $pids 2>/dev/null || true
    sleep 0.5
  done
  pids=$(cluster_pids)
  if [ -n "$pids" ]; then log "processes still running: $pids"; return 1; fi
}

# (Re)start every component from kwokctl's state; etcd keeps the objects.
start_components() {
  kwokctl_ stop cluster >&2 || true
  kill_leftovers
  kwokctl_ start cluster --timeout "${UP_TIMEOUT}s" --wait "${UP_TIMEOUT}s" >&2 && wait_api
}

# Put the current stages and audit policy into the running cluster's kwokctl state (kwok.yaml:
# the KwokctlConfiguration document, then the Stage documents) and restart its components;
# etcd keeps all objects.
cmd_restart() {
  if ! [ -f "$KWOK_CLUSTER_DIR/kwok.yaml" ]; then log "cluster $CLUSTER_NAME does not exist"; return 1; fi
  log "restarting the components with the current stages and audit policy (objects are kept)"
  render_config
  {
    sed '/^---$/,$d' "$KWOK_CLUSTER_DIR/kwok.yaml"
    echo "---"
    sed "s|__VOLUME_ROOT__|$CLUSTER_DIR/volumes|g" "$REPO_ROOT/hack/cluster/stages.yaml"
  } > "$KWOK_CLUSTER_DIR/kwok.yaml.new"
  mv "$KWOK_CLUSTER_DIR/kwok.yaml.new" "$KWOK_CLUSTER_DIR/kwok.yaml"
  cp "$REPO_ROOT/hack/cluster/audit-policy.yaml" "$KWOK_CLUSTER_DIR/audit.yaml"
  start_components
  kubectl_ wait --for=condition=Ready -f "$REPO_ROOT/hack/cluster/nodes.yaml" --timeout="${UP_TIMEOUT}s" >/dev/null
  # Only the stages part of the recorded hash is now current (see config_hash).
  local stored
  stored=$(cat "$CLUSTER_DIR/config.sha256" 2>/dev/null || true)
  { head -1 <<<"$stored"; config_hash | sed -n 2p; } > "$CLUSTER_DIR/config.sha256"
  log "cluster $CLUSTER_NAME restarted"
}

create_cluster() {
  render_config
  rm -f "$CLUSTER_DIR/audit.log" "$KUBECONFIG_PATH"
  log "starting the control plane (kwokctl, binary runtime)"
  bin() { readlink -f "$CURRENT/$1"; }
  KWOK_KUBECTL_BINARY="$(bin kubectl)" kwokctl_ \
    -c "$CLUSTER_DIR/kwokctl.yaml" \
    create cluster \
    --runtime binary \
    --kubeconfig "$KUBECONFIG_PATH" \
    --etcd-binary "$(bin etcd)" \
    --kube-apiserver-binary "$(bin kube-apiserver)" \
    --kube-controller-manager-binary "$(bin kube-controller-manager)" \
    --kube-scheduler-binary "$(bin kube-scheduler)" \
    --kwok-controller-binary "$(bin kwok)" \
    --kube-audit-policy "$REPO_ROOT/hack/cluster/audit-policy.yaml" \
    --disable-qps-limits \
    --timeout "${UP_TIMEOUT}s" --wait "${UP_TIMEOUT}s" >&2
  config_hash > "$CLUSTER_DIR/config.sha256"
}

wait_api() {
  local deadline=$((SECONDS + UP_TIMEOUT))
  until api_ready; do
    [ $SECONDS -lt $deadline ] || { log "kube-apiserver not ready after ${UP_TIMEOUT}s; logs: $KWOK_CLUSTER_DIR/logs"; return 1; }
    sleep 0.5
  done
}

cmd_up() {
  local t0=$SECONDS
  bash "$REPO_ROOT/hack/build-tools.sh" all
  mkdir -p "$CLUSTER_DIR"
  if [ -d "$KWOK_CLUSTER_DIR" ] && ! running && any_component_alive; then
    # Part of it runs: a test may be stopping a component on purpose (tests/support/apiserver.py
    # takes kube-apiserver down for a while). Never restart a shared cluster under its users:
    # wait, and leave repairs to an explicit `restart`.
    log "cluster $CLUSTER_NAME is partly running; waiting up to ${UP_TIMEOUT}s for it to recover"
    local deadline=$((SECONDS + UP_TIMEOUT))
    until running || [ $SECONDS -ge $deadline ]; do sleep 1; done
    if ! running; then
      log "cluster $CLUSTER_NAME is still partly running (API ready: $(api_ready && echo yes || echo no));" \
        "if nothing is stopping it on purpose, run 'hack/cluster.sh restart' (keeps objects) or 'down' then 'up'"
      return 1
    fi
  fi
  if [ -d "$KWOK_CLUSTER_DIR" ] && running; then
    log "cluster $CLUSTER_NAME is already running; reusing it"
    local stored current
    stored=$(cat "$CLUSTER_DIR/config.sha256" 2>/dev/null || true)
    current=$(config_hash)
    # Only tell: restarting would disturb whoever is using the cluster.
    if [ "$(head -1 <<<"$stored")" != "$(head -1 <<<"$current")" ]; then
      log "WARNING: hack/cluster/kwokctl.yaml or hack/versions.env changed since this cluster was" \
        "created; run 'hack/cluster.sh down && hack/cluster.sh up' to apply the change"
    elif [ "$stored" != "$current" ]; then
      log "WARNING: hack/cluster/stages.yaml or audit-policy.yaml changed since this cluster was" \
        "created; run 'hack/cluster.sh restart' to apply the change (objects are kept)"
    fi
  elif [ -d "$KWOK_CLUSTER_DIR" ]; then
    # Nothing of it runs (the machine restarted, say): start it again with its data.
    log "cluster $CLUSTER_NAME is stopped; starting its components again"
    if ! start_components; then
      log "start failed; recreating the cluster"
      cmd_down
      create_cluster
    fi
  else
    create_cluster
  fi
  wait_api
  kubectl_ apply -f "$REPO_ROOT/hack/cluster/storageclass.yaml" >/dev/null
  local nodes
  nodes=$(kubectl_ apply -f "$REPO_ROOT/hack/cluster/nodes.yaml" -o name)
  # shellcheck disable=SC2086 # (other tools may add nodes of their own: wait for ours)
  kubectl_ wait --for=condition=Ready $nodes --timeout="${UP_TIMEOUT}s" >/dev/null
  if [ "$REAL_NODE" = 1 ]; then node_ up; fi
  log "cluster $CLUSTER_NAME ready in $((SECONDS - t0))s"
  kubectl_ get nodes -L nvidia.com/gpu.product,gemma.ai/node >&2
  cat >&2 <<EOF

Use it:
  eval "\$(hack/cluster.sh env)"     # KUBECONFIG=$KUBECONFIG_PATH, kubectl and helm on PATH
  kubectl get nodes
Audit log of writes: $CLUSTER_DIR/audit.log    Component logs: $KWOK_CLUSTER_DIR/logs/
Fault injection: annotate a pod template with sim.gemma.ai/state=download-failed|image-pull-error|crash-loop|oom
Stop it: hack/cluster.sh down
EOF
}

cmd_down() {
  # The real node first (its kubelet would otherwise retry a vanished API server); run even
  # with GEMMA_REAL_NODE=0, so nothing of an earlier real node is left behind.
  node_ down >&2
  if [ -d "$KWOK_CLUSTER_DIR" ]; then
    log "deleting cluster $CLUSTER_NAME"
    kwokctl_ delete cluster --kubeconfig "$KUBECONFIG_PATH" >&2 || log "kwokctl delete failed; cleaning up by hand"
  fi
  kill_leftovers
  rm -rf "$KWOK_CLUSTER_DIR" "$CLUSTER_DIR/volumes"
  rm -f "$KUBECONFIG_PATH" "$CLUSTER_DIR/audit.log" "$CLUSTER_DIR/kwokctl.yaml" "$CLUSTER_DIR/config.sha256"
  log "cluster $CLUSTER_NAME is down"
}

cmd_env() {
  printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_PATH"
  # shellcheck disable=SC2016 # $PATH is for the shell that evaluates this
  printf 'export PATH=%q:"$PATH"\n' "$CURRENT"
}

cmd_status() {
  if [ -d "$KWOK_CLUSTER_DIR" ] && api_ready && components_alive; then
    echo "cluster $CLUSTER_NAME is up: KUBECONFIG=$KUBECONFIG_PATH"
    kubectl_ get nodes -L nvidia.com/gpu.product,gemma.ai/node
    if [ "$REAL_NODE" = 1 ]; then node_ status; fi
    return 0
  fi
  if [ -d "$KWOK_CLUSTER_DIR" ]; then
    echo "cluster $CLUSTER_NAME exists but its API does not answer (hack/cluster.sh up restarts it)"
  else
    echo "cluster $CLUSTER_NAME is down"
  fi
  return 1
}

# One up/down at a time per cluster (parallel test sessions may all call `up`). flock -o keeps
# the lock in the flock process, so the daemons started below do not inherit it.
if [[ ${1:-} =~ ^(up|down|restart)$ ]] && [ -z "${GEMMA_CLUSTER_LOCKED:-}" ] && command -v flock >/dev/null; then
  mkdir -p "$CLUSTER_DIR"
  GEMMA_CLUSTER_LOCKED=1 exec flock -o "$CLUSTER_DIR/.lock" bash "${BASH_SOURCE[0]}" "$@"
fi

case ${1:-} in
  up) cmd_up ;;
  restart) cmd_restart ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|env|status|restart" >&2; exit 2 ;;
esac
