"""Command line of the operator; the reconciler lands with the operator issue."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("asgi-operator: not implemented yet; see README.md", file=sys.stderr)
    return 2
