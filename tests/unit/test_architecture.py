"""The import rules of CONVENTIONS.md, checked so they stay true."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / "sidecar" / "asgi_sidecar"
PURE_MODULES = ["settings", "configuring", "limiting", "stats", "tracking", "http1", "metrics"]
IO_MODULES = {"asyncio", "socket", "uvloop", "uvicorn", "kopf", "kubernetes", "subprocess"}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_do_no_io(module):
    imports = {name.split(".")[0] for name in imported_modules(SIDECAR / f"{module}.py")}
    assert not imports & IO_MODULES


def test_the_sidecar_never_imports_the_operator():
    for path in SIDECAR.glob("*.py"):
        assert not any(n.startswith("asgi_operator") for n in imported_modules(path)), path


def test_only_configuring_and_cli_read_the_environment():
    for path in SIDECAR.glob("*.py"):
        if path.stem in ("configuring", "cli", "demo"):
            continue
        assert "os.environ" not in path.read_text(), path


def test_modules_stay_small():
    for path in SIDECAR.glob("*.py"):
        assert len(path.read_text().splitlines()) < 650, path
