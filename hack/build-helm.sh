#!/usr/bin/env bash
# Build helm $HELM_VERSION from the Go module proxy into .cache/bin/helm.
# Reused when present; also kept in the machine-wide cache next to the control plane
# binaries (hack/cache.sh: $ASGI_SHARED_CACHE/bin/helm-<key>), so a fresh clone copies it.
#
# A plain `go install` leaves helm's built-in Kubernetes version at 1.20, which is what
# `helm template` and `helm lint` then assume for .Capabilities.KubeVersion and for
# deprecation checks; the ldflags set it to $K8S_VERSION, the local control plane's.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.19.5}"
K8S_VERSION="${K8S_VERSION:-v1.33.13}"
MAJOR="$(echo "${K8S_VERSION#v}" | cut -d. -f1)"
MINOR="$(echo "$K8S_VERSION" | cut -d. -f2)"

source "$(dirname "$0")/cache.sh"
BIN="$ASGI_BIN"
KEY="$HELM_VERSION-k8s$MAJOR.$MINOR"  # the built-in Kubernetes version is part of the build

cache_reuse helm "$KEY" && exit 0

ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
ldflags="$ldflags -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  ldflags="$ldflags -X $pkg.k8sVersionMajor=$MAJOR -X $pkg.k8sVersionMinor=$MINOR"
done
echo "building helm $HELM_VERSION (Kubernetes $MAJOR.$MINOR by default)" >&2
GOBIN="$BIN" GOFLAGS= CGO_ENABLED=0 go install -trimpath -ldflags "$ldflags" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
cache_keep helm "$KEY"
echo "helm in $BIN/helm" >&2
