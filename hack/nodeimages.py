"""Container images for the local node, built without a container engine.

Three images go into one Docker-format archive (``docker save`` layout) that
``ctr -n k8s.io images import`` reads:

* ``PAUSE_IMAGE``: the Pods' sandbox, one static binary built from ``hack/pause/pause.c``.
* ``SIDECAR_IMAGE``: Debian bookworm (``debootstrap --variant=minbase``) with Python 3.11,
  a venv of the project's third-party dependencies, and the project from its wheel.
  Its entrypoint is ``asgi-sidecar``, as in ``images/sidecar.Dockerfile``.
* ``DEMO_IMAGE``: the same layers, running the demo FastAPI app
  (``asgi_sidecar.demo:app``) on uvicorn at port 8000.

The base layer (Debian plus the dependencies) takes about a minute and is cached by a
key of its recipe and the dependency list, in ``.cache/images`` and machine-wide in
``$ASGI_SHARED_CACHE/images`` (``hack.cache``; default ``~/.cache/asgi-operator/images``);
the project layer is rebuilt every time (seconds).

    python -m hack.nodeimages build      # prints the archive's path
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hack import cache
from hack.cache import ROOT

CACHE = cache.LOCAL / "images"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

PAUSE_IMAGE = "localhost/asgi-pause:1.0"
SIDECAR_IMAGE = f"docker.io/asgi-dev/asgi-sidecar:{VERSION}"  # the operator's default
DEMO_IMAGE = f"docker.io/asgi-dev/asgi-demo:{VERSION}"
DEMO_PORT = 8000
IMAGE_USER = "65532:65532"  # the operator's SIDECAR_USER

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("ASGI_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_PACKAGES = ("python3", "python3-venv")
# Bump when the base layer's recipe below changes: it is part of the cache key.
BASE_RECIPE = "3"
VENV = "/opt/venv"
APP_DIR = "/opt/asgi"  # the project, installed with --target; on PYTHONPATH
SLIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/locale", "usr/share/info")  # fmt: skip

ENV = [
    f"PATH={APP_DIR}/bin:{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"PYTHONPATH={APP_DIR}",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
]


class ImageError(RuntimeError):
    """A build step failed; the message names the step and its output."""


@dataclass(frozen=True)
class Layer:
    """An uncompressed layer tar; ``diff_id`` is its sha256."""

    path: Path
    diff_id: str


@dataclass(frozen=True)
class Image:
    tag: str
    layers: Sequence[Layer]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)
    user: str = ""
    ports: Sequence[int] = ()

    def config(self) -> dict[str, object]:
        """The image configuration (OCI image spec, as Docker writes it)."""
        container: dict[str, object] = {"Env": self.env, "WorkingDir": "/"}
        if self.entrypoint is not None:
            container["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            container["Cmd"] = self.cmd
        if self.user:
            container["User"] = self.user
        if self.ports:
            container["ExposedPorts"] = {f"{p}/tcp": {} for p in self.ports}
        return {
            "architecture": "amd64",
            "os": "linux",
            "config": container,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
            "history": [{"created_by": f"hack/nodeimages.py layer {i}"} for i, _ in
                        enumerate(self.layers)],
        }  # fmt: skip


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def write_archive(images: Sequence[Image], out: Path) -> None:
    """A ``docker save`` archive: manifest.json, one config per image, layers shared.

    Layers are stored uncompressed and only once, however many images use them.
    """
    tmp = out.with_suffix(".tmp")
    manifest: list[dict[str, object]] = []
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        stored: set[str] = set()
        for image in images:
            for layer in image.layers:
                name = f"{layer.diff_id.removeprefix('sha256:')}/layer.tar"
                if name not in stored:
                    tar.add(layer.path, arcname=name)
                    stored.add(name)
            config = json.dumps(image.config(), sort_keys=True).encode()
            config_name = hashlib.sha256(config).hexdigest() + ".json"
            _add_bytes(tar, config_name, config)
            manifest.append(
                {
                    "Config": config_name,
                    "RepoTags": [image.tag],
                    "Layers": [f"{x.diff_id.removeprefix('sha256:')}/layer.tar" for x in
                               image.layers],
                }
            )  # fmt: skip
        _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=1).encode())
    tmp.replace(out)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _run(step: str, cmd: Sequence[str | Path], **kwargs: object) -> None:
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, check=False, **kwargs
    )  # type: ignore[call-overload]
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-30:]
        raise ImageError(f"{step} failed ({done.returncode}):\n" + "\n".join(output))


def _tar_dir(src: Path, out: Path) -> Layer:
    """A layer from a directory: numeric owners, sorted names, fixed times."""
    tmp = out.with_suffix(".tmp")
    _run(
        f"tar of {src}",
        ["tar", "--numeric-owner", "--sort=name", "--mtime=@0", "--exclude=./dev/*",
         "--exclude=./proc/*", "--exclude=./sys/*", "-C", src, "-cf", tmp, "."],
    )  # fmt: skip
    tmp.replace(out)
    return Layer(out, sha256_file(out))


# -- the pause image ------------------------------------------------------------------
def pause_layer(work: Path) -> Layer:
    source = ROOT / "hack" / "pause" / "pause.c"
    binary = work / "pause-root" / "pause"
    binary.parent.mkdir(parents=True, exist_ok=True)
    _run("gcc (pause)", ["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror",
                         "-o", binary, source])  # fmt: skip
    return _tar_dir(binary.parent, work / "pause.tar")


# -- the Python images ------------------------------------------------------------------
SIDECAR_PROJECT = ROOT / "sidecar"  # the asgi-sidecar distribution: what the images run


def requirements() -> list[str]:
    """asgi-sidecar's dependencies and its ``demo`` extra, from sidecar/pyproject.toml."""
    project = tomllib.loads((SIDECAR_PROJECT / "pyproject.toml").read_text())["project"]
    return sorted({*project["dependencies"], *project["optional-dependencies"]["demo"]})


def base_key() -> str:
    text = json.dumps([BASE_RECIPE, DEBIAN_SUITE, DEBIAN_PACKAGES, requirements()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def base_layer(work: Path) -> Layer:
    """Debian minbase with Python and a venv of the dependencies (cached)."""
    name = f"base-{base_key()}.tar"
    cached = cache.fetch("images", name)
    if cached is not None:
        return Layer(cached, sha256_file(cached))
    rootfs = work / "base-root"
    shutil.rmtree(rootfs, ignore_errors=True)
    print(f"building the base layer (debootstrap {DEBIAN_SUITE}, pip) into {rootfs}")
    _run(
        "debootstrap",
        ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
         DEBIAN_SUITE, rootfs, DEBIAN_MIRROR],
    )  # fmt: skip
    wheels = rootfs / "tmp" / "wheels"
    (rootfs / "tmp" / "requirements.txt").write_text("\n".join(requirements()) + "\n")
    _run(
        "pip wheel (dependencies)",
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", wheels,
         "-r", rootfs / "tmp" / "requirements.txt"],
    )  # fmt: skip
    _run("python3 -m venv", ["chroot", rootfs, "python3", "-m", "venv", VENV])
    _run(
        "pip install (dependencies)",
        ["chroot", rootfs, f"{VENV}/bin/pip", "install", "--quiet", "--no-cache-dir",
         "--no-index", "--find-links", "/tmp/wheels", "-r", "/tmp/requirements.txt"],
    )  # fmt: skip
    shutil.rmtree(wheels)
    (rootfs / "tmp" / "requirements.txt").unlink()
    for sub in SLIM:
        shutil.rmtree(rootfs / sub, ignore_errors=True)
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    layer = _tar_dir(rootfs, CACHE / name)
    shutil.rmtree(rootfs)
    cache.keep("images", layer.path)
    return layer


def app_layer(work: Path) -> Layer:
    """asgi-sidecar from its wheel, under ``APP_DIR`` (rebuilt every time)."""
    wheels = work / "wheel"
    shutil.rmtree(wheels, ignore_errors=True)
    _run("pip wheel (asgi-sidecar)", [sys.executable, "-m", "pip", "wheel", "--quiet",
         "--no-deps", "--wheel-dir", wheels, SIDECAR_PROJECT])  # fmt: skip
    (wheel,) = wheels.glob("asgi_sidecar-*.whl")
    root = work / "app-root"
    shutil.rmtree(root, ignore_errors=True)
    target = root / APP_DIR.lstrip("/")
    _run("pip install --target (project)", [sys.executable, "-m", "pip", "install", "--quiet",
         "--no-deps", "--no-compile", "--target", target, wheel])  # fmt: skip
    # pip wrote the host's interpreter into the console scripts: point them at the image's.
    for script in (target / "bin").iterdir():
        lines = script.read_text().split("\n", 1)
        if lines[0].startswith("#!"):
            script.write_text(f"#!{VENV}/bin/python3\n" + lines[1])
    _run("compileall", [sys.executable, "-m", "compileall", "-q", "-d", APP_DIR,
                        "--invalidation-mode", "unchecked-hash", target])  # fmt: skip
    return _tar_dir(root, work / "app.tar")


def images(work: Path) -> list[Image]:
    pause = pause_layer(work)
    base, app = base_layer(work), app_layer(work)
    return [
        Image(PAUSE_IMAGE, [pause], entrypoint=["/pause"], user="65535:65535"),
        Image(SIDECAR_IMAGE, [base, app], entrypoint=["asgi-sidecar"], cmd=["proxy"], env=ENV,
              user=IMAGE_USER, ports=(8080, 9090)),
        Image(DEMO_IMAGE, [base, app], cmd=["uvicorn", "asgi_sidecar.demo:app", "--host",
              "0.0.0.0", "--port", str(DEMO_PORT)], env=ENV, user=IMAGE_USER,
              ports=(DEMO_PORT,)),
    ]  # fmt: skip


def build(out: Path | None = None) -> Path:
    """Build every image into one archive and return its path."""
    if os.geteuid() != 0:
        raise ImageError("building the images needs root (debootstrap and chroot)")
    CACHE.mkdir(parents=True, exist_ok=True)
    out = out or CACHE / "node-images.tar"
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="build-") as tmp:
        write_archive(images(Path(tmp)), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the local node's images.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build the archive; print its path")
    args = parser.parse_args(argv)
    assert args.command == "build"
    try:
        print(build())
    except ImageError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
