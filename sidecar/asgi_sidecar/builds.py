"""Which build of asgi-sidecar runs: compiled (mypyc) or pure Python, and the switch between.

The compiled build is the modules below compiled by mypyc into C extensions
(``sidecar/setup.py``); their ``.py`` files ship beside them and are the pure
build.  Python imports an extension before a source file of the same name, so
``ASGI_SIDECAR_PURE=1`` (read when the package is imported) makes the package load
those sources instead: the pure build of any installation, with no reinstall.
This module imports nothing of the package, so ``setup.py`` can read it too.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

# The request path and what it calls, compiled together (one shared library).  Not here:
# settings (pydantic), metrics and its exposition (read at scrape time), the CLI and
# process modules, and embedding, which subclasses uvicorn's classes.
COMPILED: Final = (
    "adapting",
    "admitting",
    "answering",
    "exchanges",
    "framing",
    "guarding",
    "http1",
    "kernel",
    "limiting",
    "listening",
    "livesettings",
    "memo",
    "pooling",
    "proxying",
    "reading",
    "refusing",
    "responding",
    "scoping",
    "serving",
    "stats",
    "tracking",
    "upstream",
)
PURE_ENV: Final = "ASGI_SIDECAR_PURE"  # set (not "" or "0"): load the pure build
PACKAGE: Final = "asgi_sidecar"
COMPILED_BUILD: Final = "compiled"
PURE_BUILD: Final = "pure"


def pure_requested(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    return environ.get(PURE_ENV, "") not in ("", "0")


def running_build() -> str:
    """``compiled`` if the hot path runs as C extensions, else ``pure``."""
    module = importlib.import_module(f"{PACKAGE}.http1")
    origin = getattr(module, "__file__", "") or ""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return COMPILED_BUILD if origin.endswith(suffixes) else PURE_BUILD


def describe() -> str:
    """The build, as ``--version`` and the startup log line say it."""
    if running_build() == COMPILED_BUILD:
        return "compiled with mypyc"
    if pure_requested():
        return f"pure Python: {PURE_ENV} is set"
    return "pure Python: no compiled modules installed"


class _SourcesFirst:
    """A meta path finder that loads the compiled modules from their ``.py`` files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in COMPILED:
            return None
        source = self.folder / f"{name}.py"
        if not source.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def prefer_sources(folder: Path) -> None:
    """Load the pure build of the compiled modules from now on (before any is imported)."""
    if not any(isinstance(finder, _SourcesFirst) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourcesFirst(folder))
