"""Container images built without a container engine: for the local node, and to push.

* ``PAUSE_IMAGE``: the Pods' sandbox.
* ``SIDECAR_IMAGE``: Debian with Python 3.11 and asgi-sidecar; entrypoint ``asgi-sidecar``,
  as in ``images/sidecar.Dockerfile``.  Neither FastAPI nor kopf in it.
* ``DEMO_IMAGE``: the sidecar's layers with the demo extra (FastAPI) between them, running
  the demo app (``asgi_sidecar.demo:app``) on uvicorn at port 8000.
* ``OPERATOR_IMAGE``: the sidecar's base, the operator's dependencies (kopf, the
  Kubernetes client, cryptography) and both wheels; entrypoint ``asgi-operator``, as in
  ``images/operator.Dockerfile``.

Their layers come from ``hack/imagelayers.py`` (the base, cached, is shared by all three);
the archive formats from ``hack/imagearchives.py``.  Two outputs:

    python -m hack.nodeimages build   # the node's archive (pause, sidecar, demo) for
                                      # ``ctr images import``; prints its path
    python -m hack.nodeimages oci     # one OCI image layout archive per image to push
                                      # (sidecar, operator, demo) in .cache/images/oci
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

from hack import cache
from hack.cache import ROOT
from hack.imagearchives import (
    Blob,
    Image,
    Layer,
    docker_archive,
    gzip_layer,
    oci_archive,
    sha256_file,
)
from hack.imagelayers import (
    APP_DIR,
    CACHE,
    OPERATOR_PROJECT,
    SIDECAR_PROJECT,
    VENV,
    ImageError,
    app_layer,
    base_layer,
    demo_requirements,
    deps_layer,
    operator_requirements,
    pause_layer,
)

OCI_DIR = CACHE / "oci"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

PAUSE_IMAGE = "localhost/asgi-pause:1.0"
PREFIX = "docker.io/asgi-dev"  # the node's names; `make push` names them REGISTRY/<name>
SIDECAR_IMAGE = f"{PREFIX}/asgi-sidecar:{VERSION}"  # the operator's default
DEMO_IMAGE = f"{PREFIX}/asgi-demo:{VERSION}"
OPERATOR_IMAGE = f"{PREFIX}/asgi-operator:{VERSION}"  # the chart's default
DEMO_PORT = 8000
IMAGE_USER = "65532:65532"  # the operator's SIDECAR_USER
PUSHED = ("asgi-sidecar", "asgi-operator", "asgi-demo")  # `make images`, `make push`

# The Dockerfiles' PATH and PYTHON* variables, and the wheels' folder on PYTHONPATH.
ENV = [
    f"PATH={APP_DIR}/bin:{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"PYTHONPATH={APP_DIR}",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
]
# The OCI annotations of every image (in its config's labels and its manifest).
LABELS = {"org.opencontainers.image.version": VERSION,
          "org.opencontainers.image.source": "https://github.com/asgi-dev/asgi-operator",
          "org.opencontainers.image.licenses": "Apache-2.0"}  # fmt: skip


def python_images(work: Path, names: Sequence[str] = PUSHED) -> dict[str, Image]:
    """The images ``names`` (of ``PUSHED``), their layers built or cached."""
    base = base_layer(work)
    sidecar_app = functools.cache(lambda: app_layer(work, "sidecar", [SIDECAR_PROJECT]))
    recipes: dict[str, Callable[[], Image]] = {
        "asgi-sidecar": lambda: Image(
            SIDECAR_IMAGE, [base, sidecar_app()], entrypoint=["asgi-sidecar"], cmd=["proxy"],
            ports=(8080, 9090), env=ENV, user=IMAGE_USER, labels=_labels("asgi-sidecar"),
        ),
        "asgi-operator": lambda: Image(
            OPERATOR_IMAGE,
            [base, deps_layer(work, "operator", operator_requirements(), base),
             app_layer(work, "operator", [SIDECAR_PROJECT, OPERATOR_PROJECT])],
            entrypoint=["asgi-operator"], cmd=["run"], ports=(8081, 8082), env=ENV,
            user=IMAGE_USER, labels=_labels("asgi-operator"),
        ),
        "asgi-demo": lambda: Image(
            DEMO_IMAGE, [base, deps_layer(work, "demo", demo_requirements(), base), sidecar_app()],
            cmd=["uvicorn", "asgi_sidecar.demo:app", "--host", "0.0.0.0", "--port",
                 str(DEMO_PORT)],
            ports=(DEMO_PORT,), env=ENV, user=IMAGE_USER, labels=_labels("asgi-demo"),
        ),
    }  # fmt: skip
    return {name: recipes[name]() for name in names}


def _labels(title: str) -> dict[str, str]:
    return {**LABELS, "org.opencontainers.image.title": title}


def _root_required() -> None:
    if os.geteuid() != 0:
        raise ImageError("building the images needs root (debootstrap and chroot)")


def build(out: Path | None = None) -> Path:
    """The node's images (pause, sidecar, demo) in one ``docker save`` archive: its path."""
    _root_required()
    CACHE.mkdir(parents=True, exist_ok=True)
    out = out or CACHE / "node-images.tar"
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="build-") as tmp:
        work = Path(tmp)
        found = python_images(work, ("asgi-sidecar", "asgi-demo"))
        pause = Image(PAUSE_IMAGE, [pause_layer(work)], entrypoint=["/pause"], user="65535:65535")
        docker_archive([pause, found["asgi-sidecar"], found["asgi-demo"]], out)
    return out


def oci_path(name: str, out_dir: Path = OCI_DIR) -> Path:
    return out_dir / f"{name}-{VERSION}.tar"


def _blob(layer: Layer, work: Path) -> Blob:
    """The layer gzipped; a cached layer's gzip is cached beside it."""
    if layer.path.parent != CACHE:
        return gzip_layer(layer, work / f"{layer.path.name}.gz")
    name = f"{layer.path.name}.gz"
    found = cache.fetch("images", name)
    if found is None:
        found = gzip_layer(layer, CACHE / name).path
        cache.keep("images", found)
    return Blob(found, sha256_file(found), found.stat().st_size)


def build_oci(out_dir: Path = OCI_DIR) -> dict[str, Path]:
    """One OCI image layout archive per image (sidecar, operator, demo): name -> path."""
    _root_required()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="build-") as tmp:
        work = Path(tmp)
        blobs: dict[Path, Blob] = {}
        for name, image in python_images(work).items():
            for layer in image.layers:
                if layer.path not in blobs:
                    blobs[layer.path] = _blob(layer, work)
            written[name] = oci_path(name, out_dir)
            oci_archive(image, [blobs[x.path] for x in image.layers], written[name])
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the images without a container engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="the node's archive for ctr images import; print its path")
    oci = sub.add_parser("oci", help="an OCI archive per image to push; print their paths")
    oci.add_argument("--out-dir", type=Path, default=OCI_DIR)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build())
        else:
            for path in build_oci(args.out_dir).values():
                print(f"{path} ({path.stat().st_size / 1e6:.0f} MB)")
    except ImageError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
