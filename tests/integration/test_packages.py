"""The two distributions as a user gets them: built with ``python -m build``, checked with
``twine check``, and asgi-sidecar installed alone into a bare virtualenv, where
``asgi-sidecar serve`` runs an app and kopf and the Kubernetes client are nowhere.

The builds are isolated (setuptools from PyPI, as on any machine), and the bare
virtualenv takes asgi-sidecar's dependencies from PyPI too.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.cache import ROOT
from hack.supervisor import free_port, stop, wait_port

pytestmark = pytest.mark.timeout(600)

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello from a bare venv"})
"""


def run(*cmd: str | Path, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


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
        "asgi_sidecar-0.1.0-py3-none-any.whl",
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
