#!/usr/bin/env bash
# The manifest validators of tests/integration/test_validation.py, into .cache/:
#   .cache/bin/kubectl-validate  sigs.k8s.io/kubectl-validate, from the Go module proxy
#   .cache/bin/kube-score        github.com/zegl/kube-score, from the Go module proxy
#   .cache/validators/venv       checkov and kubernetes-validate (PyPI), requirements.txt
#   .cache/validators/openapi-<k8s version>  Kubernetes' OpenAPI v3, laid out for
#                                kubectl-validate --local-schemas
# Each is kept machine-wide (hack/cache.sh), keyed by its version, so a fresh clone on the
# same machine reuses it.
#
# kubectl-validate v0.0.4, the only version the proxy serves, embeds schemas for Kubernetes
# 1.23-1.30 only, and fetches others from GitHub at run time. The project targets the
# version of hack/build-cluster.sh, whose module k8s.io/kubernetes carries the same
# documents (api/openapi-spec/v3, where kubectl-validate's embedded ones come from).
set -euo pipefail

KUBECTL_VALIDATE_VERSION="${KUBECTL_VALIDATE_VERSION:-v0.0.4}"
KUBE_SCORE_VERSION="${KUBE_SCORE_VERSION:-v1.20.0}"
HERE="$(cd "$(dirname "$0")" && pwd)"
K8S_VERSION="${K8S_VERSION:-$(sed -n 's/^K8S_VERSION="${K8S_VERSION:-\(v[0-9.]*\)}"$/\1/p' \
  "$HERE/../build-cluster.sh")}"
PYTHON="${PYTHON:-python3}"

source "$HERE/../cache.sh"
BIN="$ASGI_BIN"
LOCAL="$ASGI_ROOT/.cache/validators"
SHARED="${ASGI_SHARED_CACHE:-$HOME/.cache/asgi-operator}/venvs"
mkdir -p "$LOCAL" "$SHARED"

go_tool() {  # go_tool NAME VERSION PACKAGE [LDFLAGS]
  cache_reuse "$1" "$2" && return 0
  echo "building $1 $2" >&2
  GOBIN="$BIN" GOFLAGS= CGO_ENABLED=0 go install -trimpath -ldflags "-s -w ${4:-}" "$3@$2"
  cache_keep "$1" "$2"
}

go_tool kubectl-validate "$KUBECTL_VALIDATE_VERSION" sigs.k8s.io/kubectl-validate
go_tool kube-score "$KUBE_SCORE_VERSION" github.com/zegl/kube-score/cmd/kube-score \
  "-X main.version=$KUBE_SCORE_VERSION"

# Kubernetes' OpenAPI v3 documents, api__v1_openapi.json -> api/v1.json and
# apis__apps__v1_openapi.json -> apis/apps/v1.json (the group-only documents are left out).
openapi="$LOCAL/openapi-$K8S_VERSION"
if [ ! -f "$openapi/.complete" ]; then
  spec="$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/api/openapi-spec/v3"
  rm -rf "$openapi" && mkdir -p "$openapi/api"
  cp "$spec/api__v1_openapi.json" "$openapi/api/v1.json"
  for doc in "$spec"/apis__*__*_openapi.json; do
    name="$(basename "$doc" _openapi.json)"  # apis__<group>__<version>
    group="${name#apis__}" && group="${group%__*}"
    mkdir -p "$openapi/apis/$group"
    cp "$doc" "$openapi/apis/$group/${name##*__}.json"
  done
  touch "$openapi/.complete"
fi

# The virtualenv is built in place in the machine-wide cache (its scripts name their own
# path), under a lock so that two clones never build it at once; .cache links to it.
key="$( (cat "$HERE/requirements.txt"; "$PYTHON" -c 'import sys; print(sys.version)') |
  sha256sum | cut -c1-16)"
venv="$SHARED/validators-$key"
if [ ! -f "$venv/.complete" ]; then
  (
    flock 9
    if [ ! -f "$venv/.complete" ]; then
      echo "installing checkov and kubernetes-validate into $venv" >&2
      rm -rf "$venv"
      "$PYTHON" -m venv "$venv"
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r "$HERE/requirements.txt"
      "$venv/bin/python" -m pip check >&2
      touch "$venv/.complete"
    fi
  ) 9>"$venv.lock"
fi
ln -sfn "$venv" "$LOCAL/venv"
echo "validators in $BIN and $LOCAL" >&2
