#!/usr/bin/env bash
# Builds the local cluster's tools from upstream Go modules (no release downloads):
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, kwokctl,
# helm, the real node's kubelet, kube-proxy and CoreDNS, and the chart tests' linters
# kubeconform and kube-score (`build-tools.sh lint-tools`).
# Each binary is built once per version into $GEMMA_CACHE/bin and
# symlinked as $GEMMA_CACHE/bin/current/<name>.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mkdir -p "$TOOLS_BIN/current" "$GEMMA_CACHE/modules"

# One build at a time: two runs (say the chart tests and hack/test.sh) would share each tool's .tmp
# directory. The recursive call of lint-tools inherits the lock.
if [ -z "${GEMMA_TOOLS_LOCKED:-}" ]; then
  exec 8>"$TOOLS_BIN/.build.lock"
  flock 8
  export GEMMA_TOOLS_LOCKED=1
fi

# link <name> <versioned path>: make the current symlink point at a built binary.
link() { ln -sfn "$2" "$TOOLS_BIN/current/$1"; }

have() { [ -x "$TOOLS_BIN/$1-$2/$1" ]; }

build_kubernetes() {
  local v=$KUBERNETES_VERSION staging="v0${KUBERNETES_VERSION#v1}" out="$TOOLS_BIN/kubernetes-$KUBERNETES_VERSION"
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy) missing=0 c
  for c in "${cmds[@]}"; do [ -x "$out/$c" ] || missing=1; done
  if [ $missing = 1 ]; then
    log "building Kubernetes $v (${cmds[*]}); a cold build takes about ten minutes"
    local mod="$GEMMA_CACHE/modules/kubernetes-$v"
    mkdir -p "$mod"
    # k8s.io/kubernetes replaces its staging modules with local paths; map each one to
    # the published module of the same release instead, read from its own go.mod.
    local gomod
    gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    {
      echo "module local/kubernetes-build"
      echo "go 1.25"
      echo "require k8s.io/kubernetes $v"
      grep -oE '^\s*k8s.io/[a-z0-9-]+ => \./staging/src/k8s.io/[a-z0-9-]+' "$gomod" \
        | awk -v sv="$staging" '{print "replace " $1 " => " $1 " " sv}'
    } > "$mod/go.mod"
    local ld="-s -w"
    local pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2)"
      ld+=" -X $pkg.gitCommit=0000000000000000000000000000000000000000 -X $pkg.gitTreeState=clean"
      ld+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    mkdir -p "$out.tmp"
    (cd "$mod" && GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "$ld" -o "$out.tmp/" \
      $(printf 'k8s.io/kubernetes/cmd/%s ' "${cmds[@]}"))
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  for c in "${cmds[@]}"; do link "$c" "$out/$c"; done
}

build_etcd() {
  local v=$ETCD_VERSION out="$TOOLS_BIN/etcd-$ETCD_VERSION"
  if ! have etcd "$v"; then
    log "building etcd $v"
    local mod="$GEMMA_CACHE/modules/etcd-$v"
    mkdir -p "$mod"
    printf 'module local/etcd-build\ngo 1.25\nrequire go.etcd.io/etcd/server/v3 %s\n' "$v" > "$mod/go.mod"
    mkdir -p "$out.tmp"
    (cd "$mod" && GOFLAGS="$GOFLAGS -mod=mod" go build -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3)
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  link etcd "$out/etcd"
}

# go_install <name> <version> <package@version> [ldflags]
go_install() {
  local name=$1 v=$2 pkg=$3 ld=${4:-} out="$TOOLS_BIN/$1-$2"
  if ! have "$name" "$v"; then
    log "building $name $v"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    GOBIN="$out.tmp" go install -ldflags "-s -w $ld" "$pkg"
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  link "$name" "$out/$name"
}

want=${*:-all}
for tool in $want; do
  case $tool in
    all)
      build_etcd
      go_install kwok "$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
      go_install kwokctl "$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
      build_kubernetes
      go_install helm "$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
      # The real node's cluster DNS (hack/node.sh); same client-go minor as the control plane.
      go_install coredns "$COREDNS_VERSION" "github.com/coredns/coredns@$COREDNS_VERSION"
      ;;
    kubeconform)
      go_install kubeconform "$KUBECONFORM_VERSION" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" ;;
    kube-score)
      # The manifest linter of tests/chart. kube-linter would be the first choice, but its module
      # (golang.stackrox.io/kube-linter, also under github.com/stackrox/kube-linter) is not served by the
      # Go module proxy this project can reach; kube-score covers its workload checks (see tests/chart/lint-exceptions.yaml).
      go_install kube-score "$KUBE_SCORE_VERSION" "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION" \
        "-X main.version=$KUBE_SCORE_VERSION" ;;
    lint-tools)
      bash "$0" kubeconform kube-score ;;
    *) echo "unknown tool $tool" >&2; exit 2 ;;
  esac
done
log "tools ready in $TOOLS_BIN/current"
