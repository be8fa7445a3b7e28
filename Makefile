# Two commands set everything up on a fresh machine: `make test` and `make run`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := wrk nginx-light iproute2 util-linux prometheus

.PHONY: compiled test run run-node node-images images push registry lint typecheck unit integration node bench bench-% system-deps vegeta venv clean help crds podschema cluster demo dashcheck helm validators chart-files

help:
	@echo "make test   - install everything, lint, type-check, run all tests"
	@echo "make run    - local control plane + CRD + sample AsgiServer + the operator"
	@echo "make run-node - the same on a real node (kubelet, containerd): real Pods"
	@echo "make demo   - a FastAPI app behind the sidecar on localhost"
	@echo "make bench  - benchmarks against nginx and plain uvicorn (prints tables)"
	@echo "make bench-overload - open-loop overload scenarios (vegeta), plots in docs/overload/"
	@echo "make images - OCI image archives of the sidecar, the operator and the demo app"
	@echo "make push REGISTRY=host[:port]/prefix - push them there with skopeo"

# The two distributions, editable: asgi-sidecar (sidecar/) and asgi-operator (the root),
# whose pin on asgi-sidecar the local one satisfies.  Installed pure (ASGI_SIDECAR_PURE):
# the compiled modules are built in place below, from the venv's mypyc.
$(STAMP): pyproject.toml sidecar/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools>=77'
	ASGI_SIDECAR_PURE=1 $(PY) -m pip install --quiet -e ./sidecar -e '.[dev,demo]'
	# A venv from before the split had asgi-sidecar's script in asgi-operator's record, and
	# replacing that removed the script: install asgi-sidecar once more, alone (a second).
	ASGI_SIDECAR_PURE=1 $(PY) -m pip install --quiet --no-deps --force-reinstall -e ./sidecar
	touch $(STAMP)

venv: $(STAMP)

# The compiled build of the sidecar's hot path (sidecar/setup.py, mypyc), as C extensions
# beside the sources in sidecar/asgi_sidecar; rebuilt when a compiled module changes.
# `make test SIDECAR_BUILD=pure` runs everything on the pure build instead (ASGI_SIDECAR_PURE
# makes the package load the sources); the compiled modules are built either way, so the
# recipe clears that variable, which SIDECAR_BUILD=pure exports to every command.
SIDECAR_BUILD ?= compiled
COMPILED_STAMP := sidecar/build/.compiled
COMPILED_SOURCES := sidecar/setup.py $(wildcard sidecar/asgi_sidecar/*.py)
$(COMPILED_STAMP): $(STAMP) $(COMPILED_SOURCES)
	rm -f sidecar/asgi_sidecar/*.so
	cd sidecar && ASGI_SIDECAR_PURE= ../$(PY) setup.py --quiet build_ext --inplace
	ASGI_SIDECAR_PURE= $(PY) -c 'from asgi_sidecar import builds; b = builds.running_build(); assert b == "compiled", b'
	touch $(COMPILED_STAMP)

compiled: $(COMPILED_STAMP)
ifeq ($(SIDECAR_BUILD),pure)
export ASGI_SIDECAR_PURE := 1
else ifneq ($(SIDECAR_BUILD),compiled)
$(error SIDECAR_BUILD is "compiled" (the default) or "pure", not "$(SIDECAR_BUILD)")
endif

# Debian packages the tests and benchmarks use, installed only when missing: containerd,
# runc, the CNI plugins and iptables are the real node's (hack/node.py, hack/kubeproxy.py),
# debootstrap builds its images' base layer (hack/nodeimages.py), slowhttptest makes the
# slow-client attacks, cargo fetches the HTTP desync corpus (hack/desynccorpus.py), and
# skopeo pushes the images (hack/registry.py), and valgrind counts the instructions per
# request (make bench-instructions).
system-deps:
	@missing=""; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v ip >/dev/null || [ -x /usr/sbin/ip ] || missing="$$missing iproute2"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v containerd >/dev/null || missing="$$missing containerd"; \
	command -v runc >/dev/null || [ -x /usr/sbin/runc ] || missing="$$missing runc"; \
	[ -x /usr/lib/cni/bridge ] || missing="$$missing containernetworking-plugins"; \
	command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || missing="$$missing iptables"; \
	command -v slowhttptest >/dev/null || missing="$$missing slowhttptest"; \
	command -v cargo >/dev/null || missing="$$missing cargo"; \
	command -v skopeo >/dev/null || missing="$$missing skopeo"; \
	command -v valgrind >/dev/null || missing="$$missing valgrind"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "need root to install:$$missing" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check sidecar operator tests bench hack
	$(BIN)/ruff format --check sidecar operator tests bench hack

typecheck: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy --strict hack

unit: $(STAMP) $(COMPILED_STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP) $(COMPILED_STAMP) system-deps dashcheck validators registry vegeta
	$(BIN)/pytest -q tests/integration

# End to end on a real node (tests/node; root, containerd, runc, cgroups).
node: $(STAMP) $(COMPILED_STAMP) system-deps cluster registry
	$(BIN)/pytest -q tests/node

# Everything on the build SIDECAR_BUILD names; then, on the compiled build's default, the
# unit tests and the proxy's own integration tests once more on the pure build.
PURE_TESTS := tests/unit tests/integration/test_proxying.py tests/integration/test_limits.py \
	tests/integration/test_rfc9112_requests.py tests/integration/test_rfc9112_responses.py
test: $(STAMP) $(COMPILED_STAMP) system-deps cluster helm dashcheck validators registry vegeta lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider tests
ifeq ($(SIDECAR_BUILD),compiled)
	ASGI_SIDECAR_PURE=1 $(BIN)/pytest -q -p no:cacheprovider $(PURE_TESTS)
endif

crds: $(STAMP)
	$(PY) -m asgi_operator.crdgen > crds/asgiservers.asgi.dev.yaml
	$(MAKE) chart-files

# spec.podTemplate's schema and merge keys, from the OpenAPI the local control plane serves
# (hack/podschema.py); then the CRD. tests/integration/test_pod_template.py checks it
# against the running API server.
podschema: $(STAMP) cluster
	$(PY) -m hack.podschema
	$(MAKE) crds

# The Helm chart's generated copies (tests/unit/test_chart.py fails on drift): the CRDs, and
# the Grafana dashboard (a placeholder until dashboards/asgi-server.json exists), the alerts.
CHART := charts/asgi-operator
DASHBOARD_PLACEHOLDER := {"title": "ASGI server (placeholder: dashboards/asgi-server.json does not exist yet)", "uid": "asgi-server", "schemaVersion": 39, "panels": []}
chart-files:
	cp crds/*.yaml $(CHART)/crds/
	if [ -f dashboards/asgi-server.json ]; then cp dashboards/asgi-server.json $(CHART)/files/asgi-server.json; \
	else echo '$(DASHBOARD_PLACEHOLDER)' > $(CHART)/files/asgi-server.json; fi
	if [ -f alerts/asgi-server.rules.yaml ]; then cp alerts/asgi-server.rules.yaml $(CHART)/files/alerts.yaml; \
	else rm -f $(CHART)/files/alerts.yaml; fi

# The build steps below reuse what a clone on this machine built before from the same
# sources: hack/cache.sh (and hack/cache.py for the node's images) keep every artifact in
# .cache/ and in $ASGI_SHARED_CACHE (default ~/.cache/asgi-operator), keyed by its sources.

# helm (v3, built from the Go module proxy) into .cache/bin, for the chart's tests.
helm:
	hack/build-helm.sh

# Kubernetes control plane binaries (kube-apiserver, controller-manager, scheduler,
# kubectl, kubelet, etcd, kwok) built from the Go module proxy into .cache/bin.
cluster:
	hack/build-cluster.sh

# Grafana dashboard checker (hack/dashcheck, Grafana Foundation SDK) into .cache/bin;
# reused from the machine-wide cache when its sources are unchanged.
dashcheck:
	hack/dashcheck/build.sh

# The manifest validators of tests/integration/test_validation.py: kubectl-validate and
# kube-score (Go module proxy) into .cache/bin, checkov and kubernetes-validate (PyPI) in a
# virtualenv of their own, Kubernetes' OpenAPI for kubectl-validate (hack/validators/).
validators:
	hack/validators/build.sh

# The distribution registry (github.com/distribution/distribution/v3, Go module proxy) into
# .cache/bin, for the push tests; `$(PY) -m hack.registry serve` runs one on 127.0.0.1:5000.
registry:
	hack/build-registry.sh

# vegeta (github.com/tsenart/vegeta/v12, Go module proxy) into .cache/bin: the open-loop
# load of make bench-overload and of its harness's tests (bench/openloop.py).
vegeta:
	hack/build-vegeta.sh

# hack/ and bench/ are packages run from the repository root, so they import each other and
# tests.support without sys.path edits.
run: $(STAMP) $(COMPILED_STAMP) cluster
	$(PY) -m hack.run

# The images of the real node, built without a container engine (hack/nodeimages.py).
node-images: $(STAMP) system-deps
	$(PY) -m hack.nodeimages build

# One OCI image layout archive per image to push (asgi-sidecar, asgi-operator, asgi-demo)
# in .cache/images/oci, also built without an engine, from the same cached layers.
images: $(STAMP) system-deps
	$(PY) -m hack.nodeimages oci

# make push REGISTRY=host[:port]/prefix: REGISTRY/<name>:<version> for each image, with
# skopeo (its own credentials: `skopeo login host`); TLS but for a registry on loopback.
push: $(STAMP) system-deps
	@if [ -z "$(REGISTRY)" ]; then echo "usage: make push REGISTRY=host[:port]/prefix" >&2; exit 2; fi
	$(PY) -m hack.nodeimages oci
	$(PY) -m hack.registry push '$(REGISTRY)'

run-node: $(STAMP) $(COMPILED_STAMP) system-deps cluster
	$(PY) -m hack.run --node

demo: $(STAMP) $(COMPILED_STAMP)
	$(PY) -m asgi_sidecar.demo

bench: $(STAMP) $(COMPILED_STAMP) system-deps vegeta
	$(PY) -m bench.run all

bench-%: $(STAMP) $(COMPILED_STAMP) system-deps vegeta
	$(PY) -m bench.run $*

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache sidecar/build sidecar/asgi_sidecar/*.so
