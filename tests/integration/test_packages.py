"""The two distributions as a user gets them: built with ``python -m build``, checked with
``twine check``, and asgi-sidecar installed alone into a bare virtualenv, where
``asgi-sidecar serve`` runs an app and kopf and the Kubernetes client are nowhere.

The builds are isolated (setuptools and mypy from PyPI, as on any machine), and the bare
virtualenv takes asgi-sidecar's dependencies from PyPI too.  asgi-sidecar's wheel is the
compiled build (mypyc, sidecar/setup.py); built where no C compiler is found, it is the
pure-Python one, and the build says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_sidecar import builds
from hack.cache import ROOT
from hack.supervisor import free_port, stop, wait_port

# The compiled wheel's tag: this interpreter and platform.
PYTAG = f"cp{sys.version_info.major}{sys.version_info.minor}"
PLATFORM = sysconfig.get_platform().replace("-", "_").replace(".", "_")
SIDECAR_WHEEL = f"asgi_sidecar-0.1.0-{PYTAG}-{PYTAG}-{PLATFORM}.whl"

pytestmark = pytest.mark.timeout(600)

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello from a bare venv"})
"""


def environ(env: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without the pure switch (the builds here say their own), plus ``env``."""
    return {k: v for k, v in os.environ.items() if k != builds.PURE_ENV} | (env or {})


def run(*cmd: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False,
        timeout=300, env=environ(env),
    )  # fmt: skip
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The wheels are built from the sdists (build's default), as pip does from PyPI: what
    # the sdist leaves out cannot reach the wheel, and no stale build/ folder can either.
    run(sys.executable, "-m", "build", "--outdir", out / "sidecar", "sidecar")
    run(sys.executable, "-m", "build", "--outdir", out / "operator", ".")
    return out


def test_both_distributions_build_and_pass_twine_check(dist: Path) -> None:
    files = sorted(p.name for p in dist.glob("*/*"))
    assert files == [
        "asgi_operator-0.1.0-py3-none-any.whl",
        "asgi_operator-0.1.0.tar.gz",
        SIDECAR_WHEEL,
        "asgi_sidecar-0.1.0.tar.gz",
    ]
    output = run(sys.executable, "-m", "twine", "check", "--strict", *dist.glob("*/*"))
    assert output.count("PASSED") == 4, output


def test_each_wheel_holds_only_its_own_package(dist: Path) -> None:
    (sidecar,) = dist.glob("sidecar/*.whl")
    (operator,) = dist.glob("operator/*.whl")
    sidecar_files = zipfile.ZipFile(sidecar).namelist()
    operator_files = zipfile.ZipFile(operator).namelist()
    assert "asgi_sidecar/py.typed" in sidecar_files
    assert not any(name.startswith("asgi_operator/") for name in sidecar_files)
    assert "asgi_operator/podtemplate.json" in operator_files
    assert not any(name.startswith("asgi_sidecar/") for name in operator_files)
    metadata = zipfile.ZipFile(operator).read("asgi_operator-0.1.0.dist-info/METADATA").decode()
    assert "Requires-Dist: asgi-sidecar==0.1.0" in metadata
    sidecar_metadata = zipfile.ZipFile(sidecar).read("asgi_sidecar-0.1.0.dist-info/METADATA")
    requires = [line for line in sidecar_metadata.decode().splitlines()
                if line.startswith("Requires-Dist:")]  # fmt: skip
    assert any("uvicorn" in line for line in requires)
    assert not any("kopf" in line or "kubernetes" in line for line in requires)


def test_the_sidecar_wheel_holds_each_compiled_module_and_its_source(dist: Path) -> None:
    (wheel,) = dist.glob("sidecar/*.whl")
    files = set(zipfile.ZipFile(wheel).namelist())
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for name in builds.COMPILED:
        assert f"asgi_sidecar/{name}{suffix}" in files, name
        assert f"asgi_sidecar/{name}.py" in files, name  # the pure build, ASGI_SIDECAR_PURE
    assert f"asgi_sidecar/native__mypyc{suffix}" in files  # the modules' shared library
    assert "asgi_sidecar/builds.py" in files
    assert not any(f"builds{suffix}" in name for name in files)


def test_without_a_c_compiler_the_sdist_builds_the_pure_wheel_and_says_so(
    dist: Path, tmp_path: Path
) -> None:
    (sdist,) = dist.glob("sidecar/*.tar.gz")
    log = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
              "-v", "--wheel-dir", tmp_path, sdist, env={"CC": "/nonexistent/cc"})  # fmt: skip
    assert "asgi-sidecar build: no C compiler ('/nonexistent/cc' not found); installing the " \
        "pure-Python build" in log  # fmt: skip
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name == "asgi_sidecar-0.1.0-py3-none-any.whl"
    files = zipfile.ZipFile(wheel).namelist()
    assert not [name for name in files if name.endswith(".so")]
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = f"import sys; sys.path.insert(0, {str(unpacked)!r}); from asgi_sidecar import builds;"
    probe += " print(builds.__file__); print(builds.describe())"
    where, says = run(sys.executable, "-c", probe).splitlines()[:2]
    assert where.startswith(str(unpacked))
    assert says == "pure Python: no compiled modules installed"


@pytest.fixture(scope="module")
def bare(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with nothing but asgi-sidecar's wheel and what it pulls in."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    run(sys.executable, "-m", "venv", venv)
    (wheel,) = dist.glob("sidecar/*.whl")
    run(venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", wheel)
    return venv


def test_a_sidecar_only_install_brings_no_operator_stack(bare: Path) -> None:
    installed = run(bare / "bin" / "pip", "list", "--format=freeze").lower()
    names = {line.split("==")[0] for line in installed.splitlines()}
    assert "asgi-sidecar" in names
    assert not names & {"kopf", "kubernetes", "asgi-operator", "aiohttp", "cryptography"}
    probe = "import importlib.util as u; print(u.find_spec('kopf'), u.find_spec('asgi_operator'))"
    assert run(bare / "bin" / "python", "-c", probe).split() == ["None", "None"]


@pytest.fixture
def served(bare: Path, tmp_path: Path) -> Iterator[int]:
    (tmp_path / "hello.py").write_text(APP)
    port, metrics = free_port(), free_port()
    proc = subprocess.Popen(
        [bare / "bin" / "asgi-sidecar", "serve", "hello:app", "--app-dir", tmp_path,
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=(tmp_path / "serve.log").open("wb"),
        env=environ(),
    )  # fmt: skip
    try:
        wait_port(port)
        yield port
    finally:
        stop(proc)


def test_asgi_sidecar_serve_runs_an_app_from_the_bare_install(served: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{served}/", timeout=5) as response:
        assert response.status == 200
        assert response.read() == b"hello from a bare venv"


def test_the_bare_install_runs_the_compiled_build_without_mypy(bare: Path) -> None:
    assert run(bare / "bin" / "asgi-sidecar", "--version").strip() == (
        "asgi-sidecar 0.1.0 (compiled with mypyc)"
    )
    installed = run(bare / "bin" / "pip", "list", "--format=freeze").lower()
    names = {line.split("==")[0] for line in installed.splitlines()}
    assert "mypy_extensions" in names  # trait, at run time (exchanges.py)
    assert not names & {"mypy", "librt"}  # the build's requirements, not the wheel's


@pytest.fixture
def proxied(bare: Path, served: int, tmp_path: Path) -> Iterator[tuple[int, int]]:
    """The compiled proxy of the bare install in front of the served app: (port, metrics)."""
    port, metrics = free_port(), free_port()
    proc = subprocess.Popen(
        [bare / "bin" / "asgi-sidecar", "proxy", "--upstream", f"http://127.0.0.1:{served}",
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=(tmp_path / "proxy.log").open("wb"),
        env=environ(),
    )  # fmt: skip
    try:
        wait_port(port)
        yield port, metrics
    finally:
        stop(proc)


def test_the_compiled_proxy_of_the_bare_install_proxies_and_says_its_build(
    proxied: tuple[int, int],
) -> None:
    port, metrics = proxied
    for _ in range(3):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.status == 200
            assert response.read() == b"hello from a bare venv"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
        exposition = response.read().decode()
    (info,) = [line for line in exposition.splitlines() if line.startswith("asgi_sidecar_info{")]
    assert 'build="compiled"' in info
    assert 'asgi_requests_total{code="200"} 3.0' in exposition
