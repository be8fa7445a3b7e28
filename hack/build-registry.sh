#!/usr/bin/env bash
# Build the distribution registry (github.com/distribution/distribution/v3, cmd/registry)
# $REGISTRY_VERSION from the Go module proxy into .cache/bin/registry, for `make push`'s
# tests (hack/registry.py runs it on loopback). Reused when present; kept machine-wide
# (hack/cache.sh: $ASGI_SHARED_CACHE/bin/registry-<version>), so a fresh clone copies it.
#
# v3.1.2 is the newest the proxy serves (`go list -m -versions`); it needs Go 1.26.
set -euo pipefail

REGISTRY_VERSION="${REGISTRY_VERSION:-v3.1.2}"
PKG=github.com/distribution/distribution/v3

source "$(dirname "$0")/cache.sh"
BIN="$ASGI_BIN"

cache_reuse registry "$REGISTRY_VERSION" && exit 0

# The version the registry reports (`registry --version`), as its Makefile sets it.
ldflags="-s -w -X $PKG/version.version=$REGISTRY_VERSION -X $PKG/version.mainpkg=$PKG"
echo "building the distribution registry $REGISTRY_VERSION" >&2
GOBIN="$BIN" GOFLAGS= CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" \
  "$PKG/cmd/registry@$REGISTRY_VERSION"
cache_keep registry "$REGISTRY_VERSION"
echo "registry in $BIN/registry" >&2
