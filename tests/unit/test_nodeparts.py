"""The real node's pure parts: the image archive format, the kubelet, containerd and CNI
configurations, and the pause program (built and run here)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time

import pytest

from hack import cache, nodeconfig, nodeimages
from hack.cache import ROOT


def test_archive_stores_shared_layers_once_with_one_config_per_image(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    (files / "hello").write_text("hi\n")
    layer_path = tmp_path / "layer.tar"
    with tarfile.open(layer_path, "w") as tar:
        tar.add(files / "hello", arcname="./hello")
    layer = nodeimages.Layer(layer_path, nodeimages.sha256_file(layer_path))
    images = [
        nodeimages.Image("docker.io/x/a:1", [layer], entrypoint=["/a"], user="1:1", ports=(80,)),
        nodeimages.Image("docker.io/x/b:1", [layer], cmd=["b"], env=["A=1"]),
    ]
    out = tmp_path / "images.tar"
    nodeimages.write_archive(images, out)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        configs = [json.load(tar.extractfile(m["Config"])) for m in manifest]
    digest = layer.diff_id.removeprefix("sha256:")
    assert names.count(f"{digest}/layer.tar") == 1
    assert [m["RepoTags"] for m in manifest] == [["docker.io/x/a:1"], ["docker.io/x/b:1"]]
    assert all(m["Layers"] == [f"{digest}/layer.tar"] for m in manifest)
    assert configs[0]["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id]}
    assert configs[0]["config"]["Entrypoint"] == ["/a"]
    assert configs[0]["config"]["User"] == "1:1"
    assert configs[0]["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert "Entrypoint" not in configs[1]["config"]
    assert configs[1]["config"]["Cmd"] == ["b"]
    assert configs[1]["config"]["Env"] == ["A=1"]


def test_base_key_follows_the_dependencies():
    key = nodeimages.base_key()
    assert key == nodeimages.base_key()
    assert len(key) == 16
    assert "fastapi" in " ".join(nodeimages.requirements())  # the demo app's extra


def test_images_run_as_the_operators_sidecar_user_and_match_its_default():
    from asgi_operator.config import DEFAULT_SIDECAR_IMAGE
    from asgi_operator.pods import SIDECAR_USER

    assert f"{SIDECAR_USER}:{SIDECAR_USER}" == nodeimages.IMAGE_USER
    assert f"docker.io/{DEFAULT_SIDECAR_IMAGE}" == nodeimages.SIDECAR_IMAGE


def test_kubelet_config_allows_only_the_given_sysctls(tmp_path):
    config = nodeconfig.kubelet_config(
        node_ip="10.89.5.1", port=10250, healthz_port=10248,
        runtime_socket=tmp_path / "c.sock", client_ca=tmp_path / "ca.crt",
        cgroup_root="/asgi-x", pod_logs=tmp_path / "logs",
        allowed_unsafe_sysctls=("net.core.somaxconn",),
    )  # fmt: skip
    assert config["allowedUnsafeSysctls"] == ["net.core.somaxconn"]
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failCgroupV1"] is False
    assert config["failSwapOn"] is False
    assert config["containerRuntimeEndpoint"] == f"unix://{tmp_path / 'c.sock'}"
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["readOnlyPort"] == 0
    assert "syncFrequency" not in config  # ConfigMap propagation as in production


def test_cni_config_is_a_bridge_whose_gateway_is_the_host():
    conf = nodeconfig.cni_config("n", "asgi5", "10.89.5.0/24", nodeconfig.Path("/tmp/ipam"))
    bridge = conf["plugins"][0]
    assert bridge["bridge"] == "asgi5"
    assert bridge["isGateway"] is True
    assert bridge["ipMasq"] is False  # Pods never leave the machine
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.89.5.0/24", "gateway": "10.89.5.1"}]]


def test_containerd_config_uses_cgroupfs_and_the_local_pause_image(tmp_path):
    text = nodeconfig.containerd_config(
        tmp_path / "root", tmp_path / "state", tmp_path / "s.sock", tmp_path / "net.d",
        "localhost/asgi-pause:1.0",
    )  # fmt: skip
    assert 'sandbox_image = "localhost/asgi-pause:1.0"' in text
    assert "SystemdCgroup = false" in text
    assert "restrict_oom_score_adj = true" in text
    assert f'address = "{tmp_path / "s.sock"}"' in text


@pytest.fixture(scope="module")
def pause(tmp_path_factory):
    out = tmp_path_factory.mktemp("pause") / "pause"
    source = ROOT / "hack" / "pause" / "pause.c"
    subprocess.run(["gcc", "-Os", "-Wall", "-Wextra", "-Werror", "-o", out, source], check=True)
    return out


def test_pause_prints_its_version_and_refuses_arguments(pause):
    version = subprocess.run([pause, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout == "asgi-pause 1.0\n"
    wrong = subprocess.run([pause, "--nope"], capture_output=True, text=True, check=False)
    assert wrong.returncode == 2
    assert "usage" in wrong.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_pause_waits_until_sigterm_or_sigint_then_exits_zero(pause, sig):
    proc = subprocess.Popen([pause], stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.2)
        assert proc.poll() is None  # it waits
        proc.send_signal(signal.SIGCHLD)  # reaped, not fatal
        time.sleep(0.1)
        assert proc.poll() is None
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0
        assert f"signal {int(sig)}" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_image_cache_follows_the_shared_cache_rule(tmp_path, monkeypatch):
    """``hack.cache`` (the images) keys by name, like ``hack/cache.sh`` (the binaries):
    built once, kept in ``$ASGI_SHARED_CACHE/<kind>``, copied by a fresh clone."""
    monkeypatch.setenv("ASGI_SHARED_CACHE", str(tmp_path / "shared"))
    monkeypatch.setattr(cache, "LOCAL", tmp_path / "clone-1")
    assert cache.shared_dir("images") == tmp_path / "shared" / "images"
    assert cache.fetch("images", "base-k1.tar") is None  # nothing built yet: build it
    built = tmp_path / "clone-1" / "images" / "base-k1.tar"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"layer")
    cache.keep("images", built)
    assert cache.fetch("images", "base-k1.tar") == built
    monkeypatch.setattr(cache, "LOCAL", tmp_path / "clone-2")  # a fresh clone
    copied = cache.fetch("images", "base-k1.tar")
    assert copied == tmp_path / "clone-2" / "images" / "base-k1.tar"
    assert copied.read_bytes() == b"layer"
    assert cache.fetch("images", "base-k2.tar") is None  # changed sources: a new key


def test_the_shell_cache_reuses_by_key_and_honours_asgi_shared_cache(tmp_path):
    """hack/cache.sh: a build is reused while its key holds, copied by a fresh clone, and
    replaced when the key changes (and changes back)."""
    script = """
set -euo pipefail
source "$1/hack/cache.sh"
cache_reuse tool "$2" && { echo reused; exit 0; }
echo built
printf '#!/bin/sh\\necho %s\\n' "$2" > "$ASGI_BIN/tool" && chmod +x "$ASGI_BIN/tool"
cache_keep tool "$2"
"""
    shared = tmp_path / "shared"

    def build(clone: str, key: str) -> str:
        (tmp_path / clone / "hack").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "hack" / "cache.sh", tmp_path / clone / "hack" / "cache.sh")
        done = subprocess.run(
            ["bash", "-c", script, "build", str(tmp_path / clone), key],
            env={**os.environ, "ASGI_SHARED_CACHE": str(shared)},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        tool = tmp_path / clone / ".cache" / "bin" / "tool"
        ran = subprocess.run([tool], capture_output=True, text=True, check=True)
        assert ran.stdout.strip() == key
        return done.stdout.strip()

    assert build("clone-1", "k1") == "built"
    assert build("clone-1", "k1") == "reused"
    assert build("clone-2", "k1") == "reused"  # a fresh clone copies it
    assert build("clone-1", "k2") == "built"
    assert build("clone-1", "k1") == "reused"  # the machine-wide k1, not the local k2
    assert sorted(p.name for p in (shared / "bin").iterdir()) == ["tool-k1", "tool-k2"]
