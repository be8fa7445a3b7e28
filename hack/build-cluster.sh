#!/usr/bin/env bash
# Build a local Kubernetes control plane from the Go module proxy into .cache/bin/.
# kube-apiserver, kube-controller-manager, kube-scheduler (and kubelet, kube-proxy, kubectl) of
# Kubernetes $K8S_VERSION, etcd $ETCD_VERSION and kwok $KWOK_VERSION.  Reused when present.
#
# `go install k8s.io/kubernetes/cmd/...@v1.33.x` is refused because that module's go.mod
# has replace directives, so a small consumer module requires k8s.io/kubernetes and
# replaces each k8s.io/<staging> module (required there as v0.0.0) by its published
# v0.33.x.  etcd likewise through a consumer module.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.33.13}"
ETCD_VERSION="${ETCD_VERSION:-v3.5.35}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
STAGING_VERSION="v0.${K8S_VERSION#v1.}"
MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="$ROOT/.cache"
# Built binaries are also kept in the machine-wide cache (hack/cache.sh), so a fresh clone
# of the repository (CI) copies them instead of building again.
source "$ROOT/hack/cache.sh"
BIN="$ASGI_BIN"
mkdir -p "$CACHE/build"
export GOFLAGS="-mod=mod"
# Go's own module and build caches (under $HOME) are shared by every clone on this
# machine, so a fresh clone relinks in a minute or two instead of compiling for half an hour.

K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

build_kubernetes() {
  local missing=()
  for cmd in "${K8S_COMMANDS[@]}"; do cache_reuse "$cmd" "$K8S_VERSION" || missing+=("$cmd"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local work="$CACHE/build/kubernetes-$K8S_VERSION"
  mkdir -p "$work"
  cd "$work"
  if [ ! -f go.mod ]; then
    cat > go.mod <<GOMOD
module local.asgi.dev/cluster

go 1.24.0

require k8s.io/kubernetes $K8S_VERSION
GOMOD
    local upstream_mod
    upstream_mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
    grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0\s*$' "$upstream_mod" | awk '{print $1}' | sort -u |
      while read -r module; do
        echo "replace $module => $module $STAGING_VERSION" >> go.mod
      done
    printf 'package main\n\nfunc main() {}\n' > main.go
  fi
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$MINOR"
    ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for cmd in "${missing[@]}"; do
    echo "building $cmd $K8S_VERSION" >&2
    go build -tags selinux,notest -trimpath -ldflags "$ldflags" -o "$BIN/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    cache_keep "$cmd" "$K8S_VERSION"
  done
}

build_etcd() {
  cache_reuse etcd "$ETCD_VERSION" && return 0
  local work="$CACHE/build/etcd-$ETCD_VERSION"
  mkdir -p "$work"
  cd "$work"
  if [ ! -f go.mod ]; then
    cat > go.mod <<GOMOD
module local.asgi.dev/etcd

go 1.23

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
GOMOD
    printf 'package main\n\nfunc main() {}\n' > main.go
  fi
  echo "building etcd $ETCD_VERSION" >&2
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
  cache_keep etcd "$ETCD_VERSION"
}

build_kwok() {
  cache_reuse kwok "$KWOK_VERSION" && return 0
  echo "building kwok $KWOK_VERSION" >&2
  GOBIN="$BIN" GOFLAGS= go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  cache_keep kwok "$KWOK_VERSION"
}

build_etcd
build_kwok
build_kubernetes
echo "control plane binaries in $BIN" >&2
