"""The import rules of CONVENTIONS.md, checked so they stay true.

Imports are read from the syntax tree, wherever they stand: at the top, inside a
function, or under ``if TYPE_CHECKING:`` (a type-only import still ties two
modules together, and a cycle of them still means two ideas tangled).
"""

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / "sidecar" / "asgi_sidecar"
OPERATOR = ROOT / "operator" / "asgi_operator"
TESTS = ROOT / "tests"
PURE_MODULES = [
    "settings",
    "configuring",
    "limiting",
    "stats",
    "tracking",
    "http1",
    "responding",
    "memo",
    "refusing",
    "framing",
    "metrics",
    "adapting",
    "admitting",
    "exchanges",
]
IO_MODULES = {"asyncio", "socket", "uvloop", "uvicorn", "kopf", "kubernetes", "subprocess"}
# The operator's pure cores: manifests, status, scrape parsing, the tuning decision.
OPERATOR_PURE_MODULES = [
    "building",
    "statusing",
    "observing",
    "observations",
    "tuning",
    "kneefinding",
    "certificates",
]
OPERATOR_FORBIDDEN = {
    "kopf",
    "kubernetes",
    "asyncio",
    "socket",
    "subprocess",
    "urllib",
    "requests",
    "aiohttp",
    "httpx",
}
MAX_LINES = 400  # past this a module usually holds two ideas (CONVENTIONS.md)


def imports_of(path: Path, package: str | None = None) -> Iterator[str]:
    """Every module ``path`` imports, with ``from a import b`` also giving ``a.b``.

    ``package`` is the dotted package of ``path``, to resolve relative imports.
    """
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = (package or "").split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            if module:
                yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def imported_modules(path: Path) -> set[str]:
    return set(imports_of(path))


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_do_no_io(module):
    imports = {name.split(".")[0] for name in imported_modules(SIDECAR / f"{module}.py")}
    assert not imports & IO_MODULES


def test_the_sidecar_never_imports_the_operator():
    for path in SIDECAR.glob("*.py"):
        assert not any(n.startswith("asgi_operator") for n in imported_modules(path)), path


def test_only_configuring_cli_and_the_validating_child_read_the_environment():
    # builds: ASGI_SIDECAR_PURE picks the build when the package is imported, before any CLI.
    for path in SIDECAR.glob("*.py"):
        if path.stem in ("configuring", "cli", "validating", "demo", "builds"):
            continue
        assert "os.environ" not in path.read_text(), path


def sidecar_import_graph() -> dict[str, set[str]]:
    modules = {path.stem for path in SIDECAR.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in SIDECAR.glob("*.py"):
        targets = set()
        for name in imports_of(path, "asgi_sidecar"):
            parts = name.split(".")
            if parts[0] == "asgi_sidecar" and len(parts) > 1 and parts[1] in modules:
                targets.add(parts[1])
        graph[path.stem] = targets - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for target in sorted(graph.get(node, ())):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_among_sidecar_modules_type_only_imports_included():
    graph = sidecar_import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_embedded_mode_does_not_import_the_proxy():
    proxy = {"serving", "proxying", "reading", "upstream", "pooling", "exchanges"}
    graph = sidecar_import_graph()
    reached: set[str] = set()
    todo = ["embedding"]
    while todo:
        module = todo.pop()
        for target in graph[module] - reached:
            reached.add(target)
            todo.append(target)
    assert not reached & proxy


@pytest.mark.parametrize(
    "path",
    python_files(SIDECAR) + python_files(OPERATOR),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


@pytest.mark.parametrize("module", OPERATOR_PURE_MODULES)
def test_operator_pure_modules_do_no_io_and_use_no_client(module):
    imports = {name.split(".")[0] for name in imported_modules(OPERATOR / f"{module}.py")}
    assert not imports & OPERATOR_FORBIDDEN, sorted(imports & OPERATOR_FORBIDDEN)


def test_no_test_module_imports_another():
    offenders = []
    for path in python_files(TESTS):
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        for name in imports_of(path, package):
            parts = name.split(".")
            if parts[0] == "tests" and any(part.startswith("test_") for part in parts):
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "\n".join(sorted(set(offenders)))


def test_a_serving_process_imports_neither_the_model_nor_pydantic_nor_prometheus_client():
    # Everything `asgi-sidecar proxy` and `serve` import to serve, reload and answer /metrics
    # (the app's own imports aside); the build is the one the suite runs on.
    code = (
        "import sys, asgi_sidecar.cli, asgi_sidecar.serving, asgi_sidecar.embedding;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('pydantic', 'pydantic_core', 'prometheus_client', 'yaml')"
        " or m in ('asgi_sidecar.settings', 'asgi_sidecar.configuring')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
