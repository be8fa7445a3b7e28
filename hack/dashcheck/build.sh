#!/usr/bin/env bash
# Build hack/dashcheck (Grafana dashboard checker) into .cache/bin/dashcheck.
# The binary is keyed by a hash of its sources and kept in the machine-wide cache
# (~/.cache/asgi-operator/bin, as hack/build-cluster.sh does), so other clones copy it.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BIN="$ROOT/.cache/bin"
SHARED="${ASGI_SHARED_CACHE:-$HOME/.cache/asgi-operator/bin}"
mkdir -p "$BIN" "$SHARED"

KEY="$(cat "$HERE/go.mod" "$HERE/go.sum" "$HERE"/*.go | sha256sum | cut -c1-16)"

if [ -x "$BIN/dashcheck" ] && [ -f "$BIN/.dashcheck.$KEY" ]; then
  exit 0
fi
if [ -x "$SHARED/dashcheck-$KEY" ]; then
  cp "$SHARED/dashcheck-$KEY" "$BIN/dashcheck.tmp" && mv "$BIN/dashcheck.tmp" "$BIN/dashcheck"
else
  echo "building dashcheck ($KEY)" >&2
  (cd "$HERE" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$BIN/dashcheck.tmp" .)
  mv "$BIN/dashcheck.tmp" "$BIN/dashcheck"
  cp "$BIN/dashcheck" "$SHARED/dashcheck-$KEY.tmp" && mv "$SHARED/dashcheck-$KEY.tmp" "$SHARED/dashcheck-$KEY"
fi
rm -f "$BIN"/.dashcheck.*
touch "$BIN/.dashcheck.$KEY"
