"""The two archive formats the images are written in, built by hand from layer tars.

* ``docker_archive``: the ``docker save`` layout (``manifest.json``, one config per image,
  uncompressed layers stored once), which ``ctr images import`` reads: the real node's.
* ``oci_archive``: one image as a tar of an OCI image layout (image-spec v1.1,
  ``image-layout.md``): ``oci-layout``, ``index.json`` and every blob, config and manifest
  included, under ``blobs/sha256/<hex>``.  ``skopeo copy oci-archive:<file> docker://...``
  pushes it.  Its layers are gzipped (``Blob``): what a registry stores and a node pulls.

No I/O but the files named; the layers come from ``hack/nodeimages.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"  # the tag of a manifest in index.json
# gzip's default level, 6: on the base layer (183 MB) 64 MB in 5.4 s of CPU; level 9 gave
# 63 MB in 22.7 s, level 1 70 MB in 1.9 s. Cached layers are compressed once.
GZIP_LEVEL = 6


@dataclass(frozen=True)
class Layer:
    """An uncompressed layer tar; ``diff_id`` is its sha256."""

    path: Path
    diff_id: str


@dataclass(frozen=True)
class Blob:
    """A file stored by its digest: a gzipped layer, say."""

    path: Path
    digest: str
    size: int


@dataclass(frozen=True)
class Image:
    tag: str
    layers: Sequence[Layer]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=list)
    user: str = ""
    ports: Sequence[int] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def repository(self) -> str:
        return self.tag.rsplit(":", 1)[0]

    @property
    def version(self) -> str:
        return self.tag.rsplit(":", 1)[1]

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
        if self.labels:
            container["Labels"] = dict(self.labels)
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


def gzip_layer(layer: Layer, out: Path) -> Blob:
    """``layer`` gzipped into ``out``, reproducibly: no name, no time in the header."""
    tmp = out.with_name(out.name + ".tmp")
    with (
        layer.path.open("rb") as src,
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as gz,
    ):
        shutil.copyfileobj(src, gz, 1 << 20)
    tmp.replace(out)
    return Blob(out, sha256_file(out), out.stat().st_size)


def docker_archive(images: Sequence[Image], out: Path) -> None:
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


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def oci_manifest(image: Image, blobs: Sequence[Blob]) -> tuple[bytes, bytes]:
    """The config and the manifest of ``image`` whose layers are ``blobs`` (gzipped, in
    order), as the bytes their digests are taken of."""
    assert len(blobs) == len(image.layers), "one blob per layer"
    config = json.dumps(image.config(), sort_keys=True).encode()
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(OCI_CONFIG, config),
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": b.digest, "size": b.size} for b in blobs
        ],
    }
    if image.labels:
        manifest["annotations"] = dict(image.labels)
    return config, json.dumps(manifest, sort_keys=True).encode()


def oci_archive(image: Image, blobs: Sequence[Blob], out: Path) -> str:
    """``image`` as an OCI image layout archive, its manifest tagged with the image's
    version; returns the manifest's digest (what a registry names it by)."""
    config, manifest = oci_manifest(image, blobs)
    entry = _descriptor(OCI_MANIFEST, manifest)
    entry["annotations"] = {REF_NAME: image.version}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        _add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        for name in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        stored: set[str] = set()
        for data in (config, manifest):
            hexdigest = hashlib.sha256(data).hexdigest()
            _add_bytes(tar, f"blobs/sha256/{hexdigest}", data)
            stored.add(hexdigest)
        for blob in blobs:
            hexdigest = blob.digest.removeprefix("sha256:")
            if hexdigest not in stored:
                tar.add(blob.path, arcname=f"blobs/sha256/{hexdigest}")
                stored.add(hexdigest)
    tmp.replace(out)
    return str(entry["digest"])


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
