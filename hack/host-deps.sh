#!/usr/bin/env bash
# Installs the Debian packages the local cluster's real node and the image builds need, when
# they are missing (idempotent; a machine that has them all makes no apt call):
#   hack/host-deps.sh node     containerd, runc, CNI plugins, iptables, conntrack, socat
#   hack/host-deps.sh images   buildah, debootstrap (base images made from Debian packages)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

packages=()
for want in "$@"; do
  case $want in
    node) packages+=(containerd runc containernetworking-plugins iptables conntrack socat iproute2 util-linux openssl gcc libc6-dev) ;;
    images) packages+=(buildah debootstrap) ;;
    *) echo "usage: $0 node|images ..." >&2; exit 2 ;;
  esac
done
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  log "missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})"
  exit 1
fi
log "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
