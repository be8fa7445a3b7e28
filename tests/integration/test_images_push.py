"""`make images` and `make push` against a real registry: the OCI archives (built without a
container engine, root for debootstrap and chroot) pushed by `python -m hack.registry
push` (what `make push` runs) to the distribution registry on loopback, then read back
from the registry with skopeo.  Pulling them onto a node is tests/node/test_registry.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hack import nodeimages
from hack.cache import ROOT
from hack.registry import LocalRegistry

pytestmark = pytest.mark.timeout(600)

VERSION = nodeimages.VERSION


def skopeo(*args: str) -> Any:
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def archives() -> dict[str, Path]:
    if os.geteuid() != 0:
        pytest.fail("building the images needs root (debootstrap, chroot)")
    return nodeimages.build_oci()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as running:
        yield running


def make_push(registry: str) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "hack.registry", "push", registry], cwd=ROOT,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def uploads(registry: LocalRegistry) -> int:
    return sum(r.method == "POST" and "/blobs/uploads/" in r.path for r in registry.requests())


def test_push_sends_each_archive_under_its_name_and_version_with_its_digest(archives, registry):
    repository = f"{registry.address}/asgi-dev"
    lines = make_push(repository)
    assert len(lines) == len(nodeimages.PUSHED)
    for name, line in zip(nodeimages.PUSHED, lines, strict=True):
        local = skopeo("inspect", f"oci-archive:{archives[name]}")
        remote = skopeo("inspect", "--tls-verify=false", f"docker://{repository}/{name}:{VERSION}")
        assert line.startswith(f"{repository}/{name}:{VERSION}@{local['Digest']} ")
        assert remote["Digest"] == local["Digest"]  # --preserve-digests: what was built
        assert remote["Layers"] == local["Layers"]
        assert remote["Labels"]["org.opencontainers.image.version"] == VERSION
        assert remote["Labels"]["org.opencontainers.image.title"] == name
    # the base layer is the first of each: one blob for the three images
    assert len({skopeo("inspect", f"oci-archive:{archives[n]}")["Layers"][0]
                for n in nodeimages.PUSHED}) == 1  # fmt: skip


def test_the_registry_serves_the_images_configuration(archives, registry):
    repository = f"{registry.address}/asgi-dev"
    make_push(repository)
    image = f"docker://{repository}/asgi-operator:{VERSION}"
    config = skopeo("inspect", "--tls-verify=false", "--config", image)["config"]
    assert config["Entrypoint"] == ["asgi-operator"]
    assert config["Cmd"] == ["run"]
    assert config["User"] == nodeimages.IMAGE_USER
    assert set(config["ExposedPorts"]) == {"8081/tcp", "8082/tcp"}


def test_an_unchanged_image_pushed_again_uploads_no_blob(archives, registry):
    """Layers and manifests are reproducible: a rebuild of the same sources has the same
    digests, and a second push only checks that the registry has them."""
    repository = f"{registry.address}/asgi-again"
    make_push(repository)
    before = uploads(registry)
    rebuilt = nodeimages.build_oci()
    digests = {n: skopeo("inspect", f"oci-archive:{p}")["Digest"] for n, p in rebuilt.items()}
    again = make_push(repository)
    assert uploads(registry) == before
    for name, line in zip(nodeimages.PUSHED, again, strict=True):
        assert f"@{digests[name]} " in line


def test_push_refuses_a_url():
    done = subprocess.run([sys.executable, "-m", "hack.registry", "push", "https://r.example/x"],
                          cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 1
    assert "not a URL" in done.stderr
