# The asgi-sidecar image: the proxy (uvloop + httptools), `asgi-sidecar sysctl` for the
# operator's init container, and `serve` for embedded mode.  Build from the repository root:
#   docker build -f images/sidecar.Dockerfile -t asgi-dev/asgi-sidecar:0.1.0 .
# Runs as uid 65532 (the operator's SIDECAR_USER) with a read-only root filesystem: the
# bytecode is compiled at build time and nothing is written at run time.
# The build stage is the full Python image, which has gcc: mypyc compiles the hot path
# (sidecar/setup.py) into C extensions that need nothing but libc to run on the slim one.
ARG BUILD_IMAGE=python:3.11
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY sidecar ./sidecar
# The asgi-sidecar distribution (sidecar/pyproject.toml) as a compiled wheel, installed into a venv
# that the final stage copies; pip byte-compiles the venv. No operator code, no kopf.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ./sidecar \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/asgi_sidecar-*.whl \
    && /opt/venv/bin/python -c "import uvloop, httptools, asgi_sidecar.cli" \
    && /opt/venv/bin/python -c "from asgi_sidecar import builds; assert builds.running_build() == 'compiled'"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
USER 65532:65532
# 8080: public traffic (AsgiServer spec.port); 9090: /metrics, /healthz, /readyz (spec.metricsPort).
EXPOSE 8080 9090
ENTRYPOINT ["asgi-sidecar"]
CMD ["proxy"]
