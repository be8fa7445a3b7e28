"""Benchmarks of asgi-sidecar against its peers; run from the repository root as
``python -m bench.run`` (``make bench``), so they import ``hack`` and ``tests.support``."""
