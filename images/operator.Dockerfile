# The asgi-operator image: the kopf operator (the asgi-operator distribution: kopf, the
# Kubernetes client, and the asgi-sidecar distribution it depends on).
# Build from the repository root:
#   docker build -f images/operator.Dockerfile -t asgi-dev/asgi-operator:0.1.0 .
# Runs as uid 65532 with a read-only root filesystem: the bytecode is compiled at build
# time and nothing is written at run time.
# The build stage is the full Python image, which has gcc for asgi-sidecar's compiled
# modules (sidecar/setup.py); the final stage is the slim one.
ARG BUILD_IMAGE=python:3.11
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
COPY operator ./operator
# Both distributions as wheels, installed into a venv that the final stage copies (the
# local asgi-sidecar wheel satisfies asgi-operator's pin); pip byte-compiles the venv.
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ./sidecar . \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --find-links /wheels \
         /wheels/asgi_operator-*.whl \
    && /opt/venv/bin/python -c "import kopf, kubernetes, asgi_operator.cli"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
USER 65532:65532
# 8081: liveness (--liveness http://0.0.0.0:8081/healthz); 8082: /metrics (--metrics-port).
EXPOSE 8081 8082
ENTRYPOINT ["asgi-operator"]
CMD ["run"]
