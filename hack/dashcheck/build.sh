#!/usr/bin/env bash
# Build hack/dashcheck (Grafana dashboard checker) into .cache/bin/dashcheck.
# The binary is keyed by a hash of its sources and kept in the machine-wide cache
# (hack/cache.sh, as hack/build-cluster.sh does), so other clones copy it.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
source "$HERE/../cache.sh"
BIN="$ASGI_BIN"

KEY="$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE"/*.go | sha256sum | cut -c1-16)"

cache_reuse dashcheck "$KEY" && exit 0
echo "building dashcheck ($KEY)" >&2
(cd "$HERE" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$BIN/dashcheck.tmp" .)
mv "$BIN/dashcheck.tmp" "$BIN/dashcheck"
cache_keep dashcheck "$KEY"
