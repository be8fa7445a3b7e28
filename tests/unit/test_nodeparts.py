"""The real node's pure parts and the images': the two archive formats (skopeo reads the
OCI one), the layers' keys and diffs, the kubelet, containerd and CNI configurations, and
the pause program (built and run here)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import tomllib

import pytest

from hack import cache, imagearchives, imagelayers, nodeconfig, nodeimages
from hack.cache import ROOT
from tests.support.dockerfiles import OPERATOR, SIDECAR, entrypoint, env, exposed, final


def one_file_layer(tmp_path, name="hello", text="hi\n"):
    files = tmp_path / f"files-{name}"
    files.mkdir()
    (files / name).write_text(text)
    layer_path = tmp_path / f"{name}.tar"
    with tarfile.open(layer_path, "w") as tar:
        tar.add(files / name, arcname=f"./{name}")
    return imagearchives.Layer(layer_path, imagearchives.sha256_file(layer_path))


def test_archive_stores_shared_layers_once_with_one_config_per_image(tmp_path):
    layer = one_file_layer(tmp_path)
    images = [
        imagearchives.Image("docker.io/x/a:1", [layer], entrypoint=["/a"], user="1:1",
                            ports=(80,)),
        imagearchives.Image("docker.io/x/b:1", [layer], cmd=["b"], env=["A=1"]),
    ]  # fmt: skip
    out = tmp_path / "images.tar"
    imagearchives.docker_archive(images, out)
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


@pytest.fixture
def oci(tmp_path):
    """A two-layer image as an OCI archive: the archive, its image, its blobs, its digest."""
    layers = [one_file_layer(tmp_path, "a"), one_file_layer(tmp_path, "b", "bee\n")]
    blobs = [imagearchives.gzip_layer(x, tmp_path / f"{i}.gz") for i, x in enumerate(layers)]
    image = imagearchives.Image(
        "docker.io/x/app:2.0", layers, entrypoint=["app"], cmd=["serve"], env=["A=1"],
        user="65532:65532", ports=(8080,), labels={"org.opencontainers.image.version": "2.0"},
    )  # fmt: skip
    out = tmp_path / "app.tar"
    digest = imagearchives.oci_archive(image, blobs, out)
    return out, image, blobs, digest


def test_oci_archive_is_an_image_layout_of_content_addressed_blobs(oci):
    """image-spec's image-layout.md: oci-layout, index.json, blobs/sha256/<hex of content>."""
    out, image, blobs, digest = oci
    with tarfile.open(out) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == imagearchives.OCI_INDEX
    [entry] = index["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"] == {"org.opencontainers.image.ref.name": "2.0"}
    blob_names = [n for n in files if n.startswith("blobs/")]
    assert set(files) == {"oci-layout", "index.json", *blob_names}
    for name in blob_names:  # every blob is named by its content's digest
        assert name == "blobs/sha256/" + hashlib.sha256(files[name]).hexdigest()
    manifest = json.loads(files[f"blobs/sha256/{digest.removeprefix('sha256:')}"])
    assert entry["size"] == len(files[f"blobs/sha256/{digest.removeprefix('sha256:')}"])
    assert manifest["mediaType"] == imagearchives.OCI_MANIFEST
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'][7:]}"])
    assert [x["digest"] for x in manifest["layers"]] == [b.digest for b in blobs]
    assert {x["mediaType"] for x in manifest["layers"]} == {imagearchives.OCI_LAYER_GZIP}
    # the config names the uncompressed layers, the manifest the gzipped ones
    assert config["rootfs"]["diff_ids"] == [x.diff_id for x in image.layers]
    for blob, layer in zip(blobs, image.layers, strict=True):
        unzipped = gzip.decompress(files[f"blobs/sha256/{blob.digest[7:]}"])
        assert "sha256:" + hashlib.sha256(unzipped).hexdigest() == layer.diff_id


def test_skopeo_reads_the_oci_archive(oci):
    out, _, blobs, digest = oci
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo not installed (Debian package; `make system-deps`)")
    inspect = subprocess.run(["skopeo", "inspect", f"oci-archive:{out}"],
                             capture_output=True, text=True, check=True)  # fmt: skip
    found = json.loads(inspect.stdout)
    assert found["Digest"] == digest
    assert found["Layers"] == [b.digest for b in blobs]
    assert found["Labels"] == {"org.opencontainers.image.version": "2.0"}
    config = subprocess.run(["skopeo", "inspect", "--config", f"oci-archive:{out}"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    container = json.loads(config.stdout)["config"]
    assert container["Entrypoint"] == ["app"]
    assert container["Cmd"] == ["serve"]
    assert container["User"] == "65532:65532"
    assert container["ExposedPorts"] == {"8080/tcp": {}}


def test_gzipped_layers_are_reproducible(tmp_path):
    """No name or time in the gzip header: the same layer gives the same digest, so a
    second push of an unchanged image uploads nothing."""
    layer = one_file_layer(tmp_path)
    first = imagearchives.gzip_layer(layer, tmp_path / "1.gz")
    second = imagearchives.gzip_layer(layer, tmp_path / "2.gz")
    assert first.digest == second.digest
    assert first.size == (tmp_path / "1.gz").stat().st_size


def test_the_layers_keys_follow_their_requirements():
    key = imagelayers.base_key()
    assert key == imagelayers.base_key()
    assert len(key) == 16
    demo = imagelayers.deps_key("demo", imagelayers.demo_requirements())
    operator = imagelayers.deps_key("operator", imagelayers.operator_requirements())
    assert len({key, demo, operator}) == 3
    assert imagelayers.deps_key("demo", ["fastapi>=1"]) != demo


def test_the_sidecar_image_carries_neither_fastapi_nor_the_operators_stack():
    base = " ".join(imagelayers.requirements())
    assert "uvloop" in base
    assert not any(name in base for name in ("fastapi", "kopf", "kubernetes", "cryptography"))
    assert "fastapi" in " ".join(imagelayers.demo_requirements())
    operator = " ".join(imagelayers.operator_requirements())
    assert all(name in operator for name in ("kopf", "kubernetes", "cryptography"))
    assert "asgi-sidecar" not in operator  # its wheel is in the operator's app layer


def test_a_deps_layer_holds_the_new_paths_only_and_never_changes_the_base(tmp_path):
    root = tmp_path / "root"
    (root / "opt" / "venv" / "lib").mkdir(parents=True)
    (root / "opt" / "venv" / "lib" / "old.py").write_text("old")
    (root / "tmp").mkdir()
    before = imagelayers.tree(root)
    (root / "opt" / "venv" / "lib" / "new").mkdir()
    (root / "opt" / "venv" / "lib" / "new" / "mod.py").write_text("new")
    (root / "tmp" / "scratch").write_text("not in a layer")
    assert imagelayers.added_paths(before, imagelayers.tree(root)) == [
        "opt/venv/lib/new", "opt/venv/lib/new/mod.py",
    ]  # fmt: skip
    (root / "opt" / "venv" / "lib" / "old.py").write_text("changed")
    with pytest.raises(imagelayers.ImageError, match=r"old\.py"):
        imagelayers.added_paths(before, imagelayers.tree(root))
    (root / "opt" / "venv" / "lib" / "old.py").unlink()
    with pytest.raises(imagelayers.ImageError, match=r"old\.py"):
        imagelayers.added_paths(before, imagelayers.tree(root))


def test_the_pushed_images_keep_the_dockerfiles_entrypoints_users_ports_and_env(tmp_path):
    """The engine-built images against images/*.Dockerfile (tests/unit/test_images.py holds
    those to the manifests' defaults). Layers are stand-ins: only the configs are read."""
    stub = one_file_layer(tmp_path)
    layers = {"base_layer": lambda work: stub, "deps_layer": lambda *a: stub,
              "app_layer": lambda *a: stub}  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        for name, fake in layers.items():
            patch.setattr(nodeimages, name, fake)
        images = nodeimages.python_images(tmp_path)
    assert set(images) == set(nodeimages.PUSHED)
    for name, dockerfile in (("asgi-sidecar", SIDECAR), ("asgi-operator", OPERATOR)):
        image, stage = images[name], final(dockerfile)
        assert image.entrypoint == entrypoint(stage)
        assert image.cmd == json.loads(stage.last("CMD"))
        assert image.user == stage.last("USER")
        assert set(image.ports) == exposed(stage)
        variables = dict(item.split("=", 1) for item in image.env)
        for variable, value in env(stage).items():
            if variable == "PATH":  # the venv first, as in the Dockerfile's /opt/venv/bin:$PATH
                assert f"{imagelayers.VENV}/bin" in variables["PATH"].split(":")[:2]
            else:
                assert variables[variable] == value
    assert len(images["asgi-operator"].layers) == 3  # base, its dependencies, the wheels
    assert images["asgi-demo"].cmd[:2] == ["uvicorn", "asgi_sidecar.demo:app"]


def test_images_run_as_the_operators_sidecar_user_and_match_its_default():
    from asgi_operator.config import DEFAULT_SIDECAR_IMAGE
    from asgi_operator.pods import SIDECAR_USER

    assert f"{SIDECAR_USER}:{SIDECAR_USER}" == nodeimages.IMAGE_USER
    assert f"docker.io/{DEFAULT_SIDECAR_IMAGE}" == nodeimages.SIDECAR_IMAGE
    # the base's /etc/passwd names that uid (kopf's identity comes from getpass.getuser())
    passwd, group = (entry.split(":") for entry in imagelayers.USER_ENTRY)
    assert passwd[2:4] == [str(SIDECAR_USER), str(SIDECAR_USER)]
    assert group[2] == str(SIDECAR_USER)


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
        "localhost/asgi-pause:1.0", registry_hosts=tmp_path / "hosts",
    )  # fmt: skip
    config = tomllib.loads(text)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert config["version"] == 2  # containerd 1.6's format (Debian's)
    assert cri["sandbox_image"] == "localhost/asgi-pause:1.0"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["restrict_oom_score_adj"] is True
    assert config["grpc"]["address"] == str(tmp_path / "s.sock")
    assert cri["registry"] == {"config_path": str(tmp_path / "hosts")}


def test_registry_hosts_toml_pulls_from_the_registry_over_plain_http_on_loopback():
    hosts = tomllib.loads(nodeconfig.registry_hosts_toml("127.0.0.1:5000", plain_http=True))
    assert hosts["server"] == "http://127.0.0.1:5000"
    assert hosts["host"] == {"http://127.0.0.1:5000": {"capabilities": ["pull", "resolve"]}}
    tls = tomllib.loads(nodeconfig.registry_hosts_toml("r.example:443", plain_http=False))
    assert tls["server"] == "https://r.example:443"


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
