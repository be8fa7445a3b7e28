#!/usr/bin/env bash
# Build vegeta (github.com/tsenart/vegeta/v12) $VEGETA_VERSION from the Go module proxy into
# .cache/bin/vegeta: the open-loop load generator of `make bench-overload` (bench/openloop.py),
# which keeps a constant arrival rate whatever the server does.  Reused when present; kept
# machine-wide (hack/cache.sh: $ASGI_SHARED_CACHE/bin/vegeta-<version>).
set -euo pipefail

VEGETA_VERSION="${VEGETA_VERSION:-v12.13.0}"

source "$(dirname "$0")/cache.sh"
BIN="$ASGI_BIN"

cache_reuse vegeta "$VEGETA_VERSION" && exit 0

echo "building vegeta $VEGETA_VERSION" >&2
GOBIN="$BIN" GOFLAGS= CGO_ENABLED=0 go install -trimpath -ldflags "-s -w -X main.Version=$VEGETA_VERSION" \
  "github.com/tsenart/vegeta/v12@$VEGETA_VERSION"
cache_keep vegeta "$VEGETA_VERSION"
echo "vegeta in $BIN/vegeta" >&2
