"""Which build runs: the compiled modules by default, their sources with ASGI_SIDECAR_PURE.

``make test`` builds the compiled modules in place, runs the whole suite on them,
then these unit tests (and the proxy's integration tests) again with
ASGI_SIDECAR_PURE=1, so each run checks the build it is on.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asgi_sidecar import builds

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"
EXPECTED = builds.PURE_BUILD if builds.pure_requested() else builds.COMPILED_BUILD


def python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != builds.PURE_ENV} | env
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    return done.stdout.strip()


ORIGINS = "import importlib\n" + "\n".join(
    f"print(importlib.import_module('asgi_sidecar.{name}').__file__)" for name in builds.COMPILED
)


def test_this_run_is_on_the_build_it_asked_for():
    assert builds.running_build() == EXPECTED
    for name in builds.COMPILED:
        origin = importlib.import_module(f"asgi_sidecar.{name}").__file__ or ""
        assert origin.endswith(".py") == (EXPECTED == builds.PURE_BUILD), origin


def test_every_compiled_module_has_its_extension_and_its_source():
    for name in builds.COMPILED:
        assert (SIDECAR / "asgi_sidecar" / f"{name}.py").is_file()
        assert list((SIDECAR / "asgi_sidecar").glob(f"{name}.cpython-*.so")), name


def test_the_switch_loads_every_compiled_module_from_its_source():
    compiled = python(ORIGINS).splitlines()
    pure = python(ORIGINS, ASGI_SIDECAR_PURE="1").splitlines()
    assert len(compiled) == len(pure) == len(builds.COMPILED)
    assert all(origin.endswith(".so") for origin in compiled), compiled
    assert all(origin.endswith(".py") for origin in pure), pure
    # "0" and "" mean off, as for the other boolean settings read from the environment
    assert python(ORIGINS, ASGI_SIDECAR_PURE="0").splitlines() == compiled


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({}, "asgi-sidecar 0.1.0 (compiled with mypyc)"),
        ({"ASGI_SIDECAR_PURE": "1"}, "asgi-sidecar 0.1.0 (pure Python: ASGI_SIDECAR_PURE is set)"),
    ],
)
def test_version_says_which_build_runs(env, says):
    code = "import sys; from asgi_sidecar.cli import main; sys.argv = ['x', '--version']; main()"
    assert python(code, **env) == says


def test_a_compiled_class_is_a_native_one_and_the_pure_one_is_not():
    code = "from asgi_sidecar.http1 import RequestHead; print(hasattr(RequestHead(), '__dict__'))"
    assert python(code) == "False"  # mypyc's native classes keep attributes in slots
    assert python(code, ASGI_SIDECAR_PURE="1") == "True"


def class_defaults(path: Path, name: str) -> list[str]:
    """The attributes ``name``'s body gives a default (``x = 1`` or ``x: int = 1``)."""
    tree = ast.parse(path.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    names = []
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
            names.append(ast.unparse(stmt.target))
        elif isinstance(stmt, ast.Assign):
            names += [ast.unparse(t) for t in stmt.targets]
    return names


def test_every_class_default_of_an_exchange_is_there_on_a_new_one():
    # mypyc keeps class-level defaults in slots and leaves some unset (a None of a
    # Protocol type was): read each one on a fresh instance, compiled or pure.
    from asgi_sidecar.exchanges import Exchange
    from asgi_sidecar.proxying import FrontConnection
    from asgi_sidecar.serving import ProxyCore
    from asgi_sidecar.settings import SidecarSettings

    package = SIDECAR / "asgi_sidecar"
    names = class_defaults(package / "http1.py", "RequestHead")
    names += class_defaults(package / "exchanges.py", "Exchange")
    loop = asyncio.new_event_loop()  # never run: the core only keeps it
    try:
        exchange = Exchange(FrontConnection(ProxyCore(SidecarSettings().validated(), loop)))
    finally:
        loop.close()
    assert len(names) > 25
    for name in [*names, "upstream", "client", "body_parts", "head", "conn_tokens"]:
        getattr(exchange, name)
