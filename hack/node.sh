#!/usr/bin/env bash
# The real node of the local cluster: a kubelet that runs real containers, joined to the same
# control plane as the KWOK nodes. hack/cluster.sh runs it (`up` starts it, `down` stops it);
# it can also be run on its own:
#
#   hack/node.sh up       start (or reuse) the node; needs root and the running control plane
#   hack/node.sh down     stop every process of the node, unmount everything, delete its netns
#   hack/node.sh status   say whether it runs (exit 0) or not (exit 1)
#   hack/node.sh import FILE.tar IMAGE ID  import an image archive into the node's containerd
#   hack/node.sh image-current IMAGE ID    true when the node has IMAGE, imported from image ID
#   hack/node.sh exec CMD ...              run CMD in the node's namespaces (debugging)
#   hack/node.sh ctr ARGS ...              the node's containerd client (namespace k8s.io)
#
# What it is (versions pinned in hack/versions.env; DESIGN.md section 6 has what this sandbox needs):
#   - network namespace gemma-node-<id> (<id>: a hash of the cluster's directory) holding everything: a veth pair (host 10.250.0.1,
#     node 10.250.0.2), the pods' bridge cni0 (10.244.0.0/24, Debian's CNI plugins), kube-proxy's
#     iptables rules, the cluster DNS; nothing is routed anywhere else;
#   - a private mount namespace (pinned at /run/gemma-node-<id>/mnt), so every mount the
#     kubelet and containerd make (volumes, rootfs, pod netns) goes when the node goes;
#   - containerd (Debian's 1.6) and runc, kubelet and kube-proxy (built from the Kubernetes module
#     of the control plane), CoreDNS (built from its module) answering <svc>.<ns>.svc.cluster.local;
#   - socat on 10.250.0.1 forwarding to the API server, which listens on 127.0.0.1 only; the API
#     server advertises 10.250.0.1, so the `kubernetes` Service reaches it from pods too;
#   - hack/node/volume_dirs.py making the directories of the storage class "standard"'s volumes
#     (hostPath, under .cluster/volumes) writable for the pods' non-root users;
#   - every process in the cgroup gemma-node-<id> (the kubelet's cgroupRoot), which is how
#     `down` finds them all, containers included.
# The node is named gemma-real-node, labelled gemma.ai/node=real, tainted gemma.ai/real-node=true:
# NoSchedule (so KWOK tests never land on it) and advertises nvidia.com/gpu: 4 (an extended
# resource, so the operator's server pods schedule on it unchanged). A namespace whose pods should
# run here carries the annotations that `hack/node.sh namespace-annotations` prints (the
# PodNodeSelector and PodTolerationRestriction admission plugins add the node selector and the
# toleration to every pod of that namespace).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER_NAME=${GEMMA_CLUSTER_NAME:-gemma}
CLUSTER_DIR=${GEMMA_CLUSTER_DIR:-$REPO_ROOT/.cluster}
case $CLUSTER_DIR in /*) ;; *) CLUSTER_DIR="$PWD/$CLUSTER_DIR" ;; esac
KWOK_CLUSTER_DIR="$CLUSTER_DIR/kwok/clusters/$CLUSTER_NAME"
KUBECONFIG_PATH="$CLUSTER_DIR/kubeconfig"
CURRENT="$TOOLS_BIN/current"
TEMPLATES="$REPO_ROOT/hack/node"

NODE_NAME=gemma-real-node
NODE_DIR="$CLUSTER_DIR/node"                  # configs, certificates, logs, kubelet root
# Host-wide names are per cluster directory, so that the cluster of another checkout (or the second
# cluster of tests/cluster) never touches this one's node.
NODE_ID=$(printf '%s' "$CLUSTER_DIR/$CLUSTER_NAME" | sha256sum | cut -c1-8)
RUN_DIR="/run/gemma-node-$NODE_ID"            # sockets and runtime state (short paths)
NETNS="gemma-node-$NODE_ID"
CGROUP="gemma-node-$NODE_ID"
# containerd's root (images and their snapshots) outlives the node, so a new node does not
# import the multi-GB vLLM image again. Containers never survive: `up` and `down` remove them.
CONTAINERD_ROOT="$GEMMA_CACHE/node/containerd"
PAUSE_IMAGE=localhost/gemma-operator/pause:1
HOST_IF=gmnode0
HOST_IP=10.250.0.1
NODE_IP=10.250.0.2
NODE_SUBNET=10.250.0.0/24
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
SERVICE_CIDR=10.0.0.0/24
GPUS=${GEMMA_REAL_NODE_GPUS:-4}
UP_TIMEOUT=${CLUSTER_UP_TIMEOUT:-120}
DAEMONS=(apiserver-forward volume-dirs containerd kubelet kube-proxy coredns)

# Nothing on the node may reach beyond loopback and the node's own networks: a request for
# anything else goes to a closed port and fails at once (an image pull, say).
NO_PROXY_LIST="127.0.0.1,localhost,$NODE_SUBNET,$POD_CIDR,$SERVICE_CIDR,.svc,.cluster.local"
NODE_ENV=(HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 "NO_PROXY=$NO_PROXY_LIST"
  http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 "no_proxy=$NO_PROXY_LIST"
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "HOME=$NODE_DIR")

kubectl_() { "$CURRENT/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
in_node() { nsenter --mount="$RUN_DIR/mnt" --net="/var/run/netns/$NETNS" -- "$@"; }
ctr_() { in_node ctr --address "$RUN_DIR/containerd.sock" -n k8s.io "$@"; }

pid_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

daemon_alive() { [ -f "$NODE_DIR/pids/$1.pid" ] && pid_alive "$(cat "$NODE_DIR/pids/$1.pid")"; }

all_alive() {
  local d
  [ -e "/var/run/netns/$NETNS" ] || return 1
  for d in "${DAEMONS[@]}"; do daemon_alive "$d" || return 1; done
}

any_alive() {
  local d
  for d in "${DAEMONS[@]}"; do daemon_alive "$d" && return 0; done
  [ -n "$(cgroup_pids)" ]
}

# ------------------------------------------------------------------------------ preconditions

require() {
  if [ "$(id -u)" != 0 ]; then
    log "the real node needs root (containers, network namespaces); run as root or set GEMMA_REAL_NODE=0"
    exit 1
  fi
  bash "$REPO_ROOT/hack/host-deps.sh" node
  local missing=()
  for c in kubelet kube-proxy coredns; do [ -x "$CURRENT/$c" ] || missing+=("$c"); done
  if [ ${#missing[@]} -gt 0 ]; then bash "$REPO_ROOT/hack/build-tools.sh" all; fi
}

# ------------------------------------------------------------------------------ cgroups

cgroup_dirs() {
  local h
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] && echo "${h%/}/$CGROUP"
  done
}

make_cgroups() {
  local h d
  for h in /sys/fs/cgroup/*/; do
    [ -f "$h/cgroup.procs" ] || continue
    d="${h%/}/$CGROUP"
    mkdir -p "$d"
    if [ -f "$d/cpuset.cpus" ]; then  # a new cpuset has no CPUs until it is given its parent's
      cat "$h/cpuset.cpus" > "$d/cpuset.cpus"
      cat "$h/cpuset.mems" > "$d/cpuset.mems"
    fi
  done
  mkdir -p "/sys/fs/cgroup/pids/$CGROUP/daemons"
}

# Every process of the node (daemons, shims, containers), from the pids hierarchy.
cgroup_pids() {
  local d="/sys/fs/cgroup/pids/$CGROUP"
  [ -d "$d" ] || return 0
  find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u
}

remove_cgroups() {
  local d
  for d in $(cgroup_dirs); do
    [ -d "$d" ] || continue
    # Deepest first; a cgroup is removed with rmdir once it has no process.
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

# ------------------------------------------------------------------------------ namespaces

make_netns() {
  if [ -e "/var/run/netns/$NETNS" ]; then ip netns del "$NETNS"; fi
  ip netns add "$NETNS"
  ip link add "$HOST_IF" type veth peer name eth0 netns "$NETNS"
  ip addr add "$HOST_IP/24" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  local n=(nsenter --net="/var/run/netns/$NETNS")
  "${n[@]}" ip link set lo up
  "${n[@]}" ip addr add "$NODE_IP/24" dev eth0
  "${n[@]}" ip link set eth0 up
  # The default route ends at the host: the node's and pods' only peers are the host's 10.250.0.1 (API
  # server forwarder, stand-in hubs). The host does not forward it further unless its own
  # net.ipv4.ip_forward is on, which this script never turns on.
  "${n[@]}" ip route add default via "$HOST_IP"
  # The host reaches pod IPs through the node (tests probe a pod's port directly); the route goes with the veth.
  ip route add "$POD_CIDR" via "$NODE_IP" dev "$HOST_IF"
  # Routing between the pods' bridge and the node; bridged pod-to-pod traffic through iptables,
  # so that a Service's DNAT is undone on the way back.
  "${n[@]}" sysctl -qw net.ipv4.ip_forward=1
  "${n[@]}" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null \
    || log "net.bridge.bridge-nf-call-iptables is not settable here; Services to pods on the same bridge may fail"
}

make_mountns() {
  mkdir -p "$RUN_DIR"
  if ! mountpoint -q "$RUN_DIR"; then
    # A mount namespace can only be pinned on a private mount.
    mount --bind "$RUN_DIR" "$RUN_DIR"
    mount --make-private "$RUN_DIR"
  fi
  touch "$RUN_DIR/mnt"
  unshare --mount="$RUN_DIR/mnt" --propagation private true
}

# ------------------------------------------------------------------------------ configuration

api_port() { sed -n 's|.*server: https://127.0.0.1:\([0-9]*\).*|\1|p' "$KUBECONFIG_PATH" | head -1; }

render() {  # render TEMPLATE OUT
  sed -e "s|__RUN__|$RUN_DIR|g" -e "s|__ROOT__|$CONTAINERD_ROOT|g" -e "s|__NODE__|$NODE_DIR|g" \
    -e "s|__PAUSE_IMAGE__|$PAUSE_IMAGE|g" -e "s|__POD_CIDR__|$POD_CIDR|g" -e "s|__POD_GATEWAY__|$POD_GATEWAY|g" \
    -e "s|__NODE_IP__|$NODE_IP|g" -e "s|__NODE_NAME__|$NODE_NAME|g" -e "s|__CGROUP__|$CGROUP|g" \
    -e "s|__CA__|$KWOK_CLUSTER_DIR/pki/ca.crt|g" "$1" > "$2"
}

kubeconfig() {  # kubeconfig OUT CERT KEY
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://$HOST_IP:$(api_port)
    certificate-authority: $KWOK_CLUSTER_DIR/pki/ca.crt
users:
- name: node
  user:
    client-certificate: $2
    client-key: $3
contexts:
- name: node
  context: {cluster: local, user: node}
current-context: node
EOF
}

# A client certificate signed by the cluster CA: the kubelet is system:node:<name> in group
# system:nodes (the Node authorizer's identity of a node), not the cluster admin.
client_cert() {  # client_cert NAME SUBJECT
  local pki="$KWOK_CLUSTER_DIR/pki" out="$NODE_DIR/pki/$1"
  [ -f "$out.crt" ] && return 0
  openssl req -new -newkey rsa:2048 -nodes -keyout "$out.key" -subj "$2" -out "$out.csr" 2>/dev/null
  openssl x509 -req -in "$out.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 365 -out "$out.crt" 2>/dev/null
  rm -f "$out.csr"
}

configure() {
  mkdir -p "$NODE_DIR"/{pids,logs,pki,cni/net.d,cni/ipam,pod-logs,kubelet} "$CONTAINERD_ROOT"
  render "$TEMPLATES/containerd.toml" "$NODE_DIR/containerd.toml"
  render "$TEMPLATES/cni.conflist" "$NODE_DIR/cni/net.d/10-gemma-pods.conflist"
  render "$TEMPLATES/kubelet.yaml" "$NODE_DIR/kubelet.yaml"
  render "$TEMPLATES/kube-proxy.yaml" "$NODE_DIR/kube-proxy.yaml"
  render "$TEMPLATES/Corefile" "$NODE_DIR/Corefile"
  echo "# no upstream resolver: nothing outside the cluster resolves" > "$NODE_DIR/resolv.conf"
  client_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  client_cert kube-proxy "/CN=system:kube-proxy"
  client_cert coredns "/CN=gemma-node:coredns"
  kubeconfig "$NODE_DIR/kubeconfig-kubelet" "$NODE_DIR/pki/kubelet.crt" "$NODE_DIR/pki/kubelet.key"
  kubeconfig "$NODE_DIR/kubeconfig-proxy" "$NODE_DIR/pki/kube-proxy.crt" "$NODE_DIR/pki/kube-proxy.key"
  kubeconfig "$NODE_DIR/kubeconfig-dns" "$NODE_DIR/pki/coredns.crt" "$NODE_DIR/pki/coredns.key"
  # kube-proxy's identity has the built-in role system:node-proxier; CoreDNS needs to read
  # Services, EndpointSlices, Namespaces and Pods.
  kubectl_ apply -f "$TEMPLATES/rbac.yaml" >/dev/null
}

# ------------------------------------------------------------------------------ processes

# start NAME netns|host CMD...: a daemon in the node's cgroup, its output in logs/NAME.log.
start() {
  local name=$1 where=$2
  shift 2
  local enter=()
  [ "$where" = netns ] && enter=(nsenter --mount="$RUN_DIR/mnt" --net="/var/run/netns/$NETNS" --)
  (
    echo "$BASHPID" > "/sys/fs/cgroup/pids/$CGROUP/daemons/cgroup.procs"
    exec env -i "${NODE_ENV[@]}" setsid "${enter[@]}" "$@"
  ) >> "$NODE_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$NODE_DIR/pids/$name.pid"
}

wait_until() {  # wait_until SECONDS WHAT CMD...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "$what not ready after the wait; logs: $NODE_DIR/logs"; return 1; fi
    sleep 0.5
  done
}

pause_image() {
  local dir="$GEMMA_CACHE/node/pause" src="$TEMPLATES/pause.c"
  local want
  want=$(cat "$src" "$TEMPLATES/pause_image.py" | sha256sum | cut -c1-16)
  if [ "$(cat "$dir/built" 2>/dev/null)" != "$want" ]; then
    mkdir -p "$dir"
    gcc -static -Os -s -o "$dir/pause" "$src"
    python3 "$TEMPLATES/pause_image.py" "$dir/pause" "$PAUSE_IMAGE" "$dir/pause.tar"
    echo "$want" > "$dir/built"
  fi
  image_current "$PAUSE_IMAGE" "$want" || import_image "$dir/pause.tar" "$PAUSE_IMAGE" "$want"
}

# The image ID that was last imported as NAME, kept beside containerd's (persistent) root.
stamp_file() { echo "$GEMMA_CACHE/node/imported/$(echo "$1" | tr '/:' '__')"; }

# image_current NAME ID: true when containerd has NAME and it was imported from image ID.
image_current() {
  [ "$(cat "$(stamp_file "$1")" 2>/dev/null)" = "$2" ] && ctr_ images ls -q "name==$1" 2>/dev/null | grep -qx "$1"
}

# import_image FILE NAME ID: import an image archive and remember which image it was.
import_image() {
  local file=$1 name=$2 id=$3 stamp
  stamp=$(stamp_file "$name")
  log "importing $name into the node's containerd"
  ctr_ images import "$file" >/dev/null
  ctr_ images ls -q "name==$name" | grep -qx "$name" || { log "the archive $file holds no image $name"; return 1; }
  mkdir -p "$(dirname "$stamp")"
  echo "$id" > "$stamp"
}

# Containers of an earlier node (the root outlives it) are removed before the kubelet starts.
remove_containers() {
  local ids
  ids=$(ctr_ tasks ls -q 2>/dev/null || true)
  # shellcheck disable=SC2086 # one id per word
  for id in $ids; do ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true; done
  for id in $ids; do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
  ids=$(ctr_ containers ls -q 2>/dev/null || true)
  # shellcheck disable=SC2086
  [ -z "$ids" ] || ctr_ containers rm $ids >/dev/null 2>&1 || true
}

node_ready() {
  [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

gpus_advertised() {
  [ "$(kubectl_ get node "$NODE_NAME" -o jsonpath='{.status.allocatable.nvidia\.com/gpu}' 2>/dev/null)" = "$GPUS" ]
}

advertise_gpus() {
  # An extended resource is advertised on the node's status; the kubelet copies it to allocatable.
  # (kubernetes.io/docs/tasks/administer-cluster/extended-resource-node/)
  kubectl_ patch node "$NODE_NAME" --subresource=status --type=merge \
    -p "{\"status\":{\"capacity\":{\"nvidia.com/gpu\":\"$GPUS\"}}}" >/dev/null
  wait_until 60 "nvidia.com/gpu on $NODE_NAME" gpus_advertised
}

cmd_up() {
  local t0=$SECONDS
  require
  [ -f "$KUBECONFIG_PATH" ] || { log "the control plane is not up (hack/cluster.sh up starts both)"; exit 1; }
  if all_alive && node_ready; then
    log "real node $NODE_NAME is already running; reusing it"
    gpus_advertised || advertise_gpus
    return 0
  fi
  if any_alive || [ -e "/var/run/netns/$NETNS" ]; then
    log "real node $NODE_NAME is partly running; starting it again"
    cmd_down
  fi
  # The node's addresses are fixed: one real node per machine.
  if ip link show "$HOST_IF" >/dev/null 2>&1; then
    log "another cluster's real node holds $HOST_IF ($HOST_IP); stop that cluster (hack/cluster.sh down in its checkout) or set GEMMA_REAL_NODE=0"
    exit 1
  fi
  log "starting the real node $NODE_NAME (containerd, kubelet, kube-proxy, CoreDNS in netns $NETNS)"
  make_cgroups
  make_netns
  make_mountns
  configure
  local port
  port=$(api_port)
  start apiserver-forward host socat "TCP-LISTEN:$port,bind=$HOST_IP,fork,reuseaddr" "TCP:127.0.0.1:$port"
  start volume-dirs host python3 "$TEMPLATES/volume_dirs.py" "$CURRENT/kubectl" "$KUBECONFIG_PATH" "$CLUSTER_DIR/volumes"
  start containerd netns containerd --config "$NODE_DIR/containerd.toml"
  wait_until "$UP_TIMEOUT" containerd ctr_ version
  remove_containers
  pause_image
  # A Node object of an earlier run still says Ready: register afresh (the controllers recreate its pods).
  kubectl_ delete node "$NODE_NAME" --ignore-not-found --wait=true >/dev/null
  start kubelet netns "$CURRENT/kubelet" --config "$NODE_DIR/kubelet.yaml" \
    --kubeconfig "$NODE_DIR/kubeconfig-kubelet" --root-dir "$NODE_DIR/kubelet" \
    --cert-dir "$NODE_DIR/kubelet/pki" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels "gemma.ai/node=real,kubernetes.io/os=linux,nvidia.com/gpu.present=true,nvidia.com/gpu.product=gemma-real-node-cpu"
  start kube-proxy netns "$CURRENT/kube-proxy" --config "$NODE_DIR/kube-proxy.yaml"
  start coredns netns "$CURRENT/coredns" -conf "$NODE_DIR/Corefile"
  wait_until "$UP_TIMEOUT" "node $NODE_NAME" node_ready
  advertise_gpus
  log "real node $NODE_NAME ready in $((SECONDS - t0))s (pods $POD_CIDR, DNS $NODE_IP)"
}

# ------------------------------------------------------------------------------ down

kill_all() {
  local i pids sig
  for i in $(seq 1 40); do
    pids="$(cgroup_pids) $(for d in "${DAEMONS[@]}"; do daemon_alive "$d" && cat "$NODE_DIR/pids/$d.pid"; done)"
    pids=$(echo "$pids" | tr ' ' '\n' | grep -E '^[0-9]+$' | sort -u || true)
    [ -n "$pids" ] || return 0
    sig=TERM
    [ "$i" -le 10 ] || sig=KILL
    # shellcheck disable=SC2086 # one pid per word
    kill -s "$sig" $pids 2>/dev/null || true
    sleep 0.5
  done
  log "processes of the node still running: $(cgroup_pids | tr '\n' ' ')"
  return 1
}

cmd_down() {
  if ! [ -e "/var/run/netns/$NETNS" ] && ! [ -d "$RUN_DIR" ] && ! [ -d "$NODE_DIR" ] \
      && ! [ -d "/sys/fs/cgroup/pids/$CGROUP" ]; then
    return 0  # no node here
  fi
  if [ -S "$RUN_DIR/containerd.sock" ] && daemon_alive containerd; then
    # The kubelet first, so it does not restart what is being removed.
    if daemon_alive kubelet; then kill "$(cat "$NODE_DIR/pids/kubelet.pid")" 2>/dev/null || true; fi
    remove_containers
  fi
  kill_all || true
  # Mounts: the node's private mount namespace goes with its last process and its pin.
  if mountpoint -q "$RUN_DIR/mnt" 2>/dev/null; then umount "$RUN_DIR/mnt" || umount -l "$RUN_DIR/mnt"; fi
  if mountpoint -q "$RUN_DIR" 2>/dev/null; then umount "$RUN_DIR" || umount -l "$RUN_DIR"; fi
  # Pod network namespaces were bind-mounted inside that namespace only; their empty
  # placeholders remain in /var/run/netns (a live namespace there is a mount point: kept).
  local f
  for f in /var/run/netns/cni-*; do
    [ -e "$f" ] && ! mountpoint -q "$f" && rm -f "$f"
  done
  if [ -e "/var/run/netns/$NETNS" ]; then ip netns del "$NETNS"; fi
  # `ip netns add` made /run/netns a mount point of its own; with no namespace left in it, undo that.
  if mountpoint -q /run/netns && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then umount /run/netns || true; fi
  remove_cgroups
  rm -rf "$RUN_DIR" "$NODE_DIR"
  # The CNI plugins cache results outside the node's directories.
  rm -rf /var/lib/cni/results/gemma-pods-* 2>/dev/null || true
}

cmd_status() {
  if all_alive && node_ready; then
    echo "real node $NODE_NAME is up (netns $NETNS)"
    return 0
  fi
  echo "real node $NODE_NAME is down"
  return 1
}

cmd_namespace_annotations() {
  # For `kubectl annotate namespace NS $(hack/node.sh namespace-annotations)`.
  printf '%s ' "scheduler.alpha.kubernetes.io/node-selector=gemma.ai/node=real"
  printf '%s\n' 'scheduler.alpha.kubernetes.io/defaultTolerations=[{"key":"gemma.ai/real-node","operator":"Exists","effect":"NoSchedule"}]'
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down; log "real node $NODE_NAME is down" ;;
  status) cmd_status ;;
  import) shift; import_image "$@" ;;
  image-current) shift; image_current "$@" ;;
  image-current-name) shift; ctr_ images ls -q "name==$1" 2>/dev/null | grep -qx "$1" ;;
  exec) shift; in_node "$@" ;;
  ctr) shift; ctr_ "$@" ;;
  namespace-annotations) cmd_namespace_annotations ;;
  *) echo "usage: $0 up|down|status|import FILE IMAGE ID|image-current IMAGE ID|exec CMD...|namespace-annotations" >&2; exit 2 ;;
esac
