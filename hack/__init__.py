"""Development tooling: the local control plane and real node, their images, the build
caches and process supervision, used by ``make run``, the tests and the benchmarks.

Run from the repository root as modules (``python -m hack.run``), so that ``hack``,
``tests`` and ``bench`` import each other without ``sys.path`` edits.
"""
