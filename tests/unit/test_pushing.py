"""`make push REGISTRY=host/prefix` as pure functions: where each image goes, when TLS is
verified, the local registry's configuration, and the chart pointed at the pushed names
(rendered by helm, `make helm`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hack import nodeimages, registry
from tests.support.helm import CHART, KUBE_VERSION, helm

VERSION = nodeimages.VERSION


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:5000/asgi-dev", f"127.0.0.1:5000/asgi-dev/asgi-sidecar:{VERSION}"),
        ("r.example.com/team/asgi/", f"r.example.com/team/asgi/asgi-sidecar:{VERSION}"),
        ("localhost:5000", f"localhost:5000/asgi-sidecar:{VERSION}"),
    ],
)  # fmt: skip
def test_each_image_goes_to_registry_slash_name_colon_version(given: str, expected: str) -> None:
    assert registry.destination(given, "asgi-sidecar", VERSION) == expected


@pytest.mark.parametrize(
    "bad", ["", "https://r.example/x", "r.example/x:1.0", "user@r.example/x", "r.example/a b"]
)
def test_a_registry_is_host_and_prefix_not_a_url_or_a_tag(bad: str) -> None:
    with pytest.raises(ValueError, match="host"):
        registry.split_registry(bad)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:5000", True),
        ("127.3.2.1", True),
        ("localhost:5000", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("10.0.0.1:5000", False),
        ("registry.example.com", False),
        ("localhost.example.com:5000", False),
    ],
)
def test_only_a_loopback_registry_is_spoken_to_without_tls(host: str, loopback: bool) -> None:
    assert registry.is_loopback(host) is loopback
    command = registry.copy_command(Path("/a.tar"), f"{host}/x/asgi-sidecar:1", Path("/d"))
    assert f"--dest-tls-verify={'false' if loopback else 'true'}" in command
    assert command[-2:] == ["oci-archive:/a.tar", f"docker://{host}/x/asgi-sidecar:1"]
    assert "--preserve-digests" in command  # the registry keeps the archive's digest


def test_the_local_registry_serves_plain_http_on_loopback_from_its_own_storage() -> None:
    config: dict[str, Any] = registry.registry_config(Path("/w/storage"), 5123)
    assert config["http"] == {"addr": "127.0.0.1:5123"}
    assert config["storage"]["filesystem"] == {"rootdirectory": "/w/storage"}
    assert config["log"]["accesslog"] == {"disabled": False}  # LocalRegistry.requests reads it


def test_access_log_lines_are_parsed() -> None:
    line = (
        '127.0.0.1 - - [02/Dec/2026:06:54:06 +0000] "GET /v2/asgi-dev/asgi-demo/manifests/0.1.0'
        ' HTTP/1.1" 200 1033 "" "containerd/1.6.20~ds1"\n'
    )
    [match] = registry._ACCESS.finditer(line)
    assert match["method"] == "GET"
    assert match["path"] == "/v2/asgi-dev/asgi-demo/manifests/0.1.0"
    assert match["status"] == "200"
    assert match["agent"] == "containerd/1.6.20~ds1"


def operator_workload(*sets: str) -> dict[str, Any]:
    args = ["template", "asgi", str(CHART), "-n", "asgi-system", "--kube-version", KUBE_VERSION]
    for item in sets:
        args += ["--set", item]
    docs = [d for d in yaml.safe_load_all(helm(*args)) if d]
    [workload] = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    return workload


def test_the_chart_points_at_the_pushed_images() -> None:
    """The README's values for a registry pushed to: the operator's image and the sidecar
    image it gives the AsgiServers' Pods are the names `make push` wrote."""
    pushed = "registry.example.com:5000/team"
    workload = operator_workload(
        f"image.repository={pushed}/asgi-operator",
        f"sidecarImage={pushed}/asgi-sidecar:{VERSION}",
    )
    [container] = workload["spec"]["template"]["spec"]["containers"]
    assert container["image"] == registry.destination(pushed, "asgi-operator", VERSION)
    sidecar = registry.destination(pushed, "asgi-sidecar", VERSION)
    assert f"--sidecar-image={sidecar}" in container["args"]


def test_the_chart_defaults_are_the_images_names_without_a_registry() -> None:
    [container] = operator_workload()["spec"]["template"]["spec"]["containers"]
    assert f"docker.io/{container['image']}" == nodeimages.OPERATOR_IMAGE
    assert (
        f"--sidecar-image={nodeimages.SIDECAR_IMAGE.removeprefix('docker.io/')}"
        in (container["args"])
    )
