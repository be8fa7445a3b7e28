"""Pushing the images to a registry with skopeo, and a registry of our own on loopback.

    python -m hack.registry push REGISTRY   # `make push REGISTRY=host[:port]/prefix`
    python -m hack.registry serve           # a registry on 127.0.0.1 until Ctrl-C

``push`` copies the OCI archives of ``make images`` (``hack/nodeimages.py``) to
``REGISTRY/<name>:<version>`` for asgi-sidecar, asgi-operator and asgi-demo, with
``skopeo copy --preserve-digests``: the registry names each image by the digest the
archive has.  TLS is verified for every registry but one on loopback, which a
``LocalRegistry`` serves over plain HTTP.  Credentials are skopeo's own
(``skopeo login HOST``).

``LocalRegistry`` is the distribution registry (``.cache/bin/registry``,
``hack/build-registry.sh``) with a configuration of its own: storage in its work
directory, HTTP on 127.0.0.1 at a free port, the access log in its log file, where
``requests`` reads which client fetched what.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from hack.cache import BIN
from hack.supervisor import StartError, Supervisor, free_port

TIMEOUT = 30.0
# The access log's lines (gorilla's combined format): request line, status, user agent.
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
                     r'\S+ "[^"]*" "(?P<agent>[^"]*)"')  # fmt: skip


class PushError(RuntimeError):
    """skopeo could not push an image; the message has its output."""


def split_registry(registry: str) -> tuple[str, str]:
    """``host[:port][/prefix]`` -> (host[:port], prefix); anything else is refused."""
    host, _, prefix = registry.strip().rstrip("/").partition("/")
    if not host or "://" in registry or any(c in registry for c in "@ ") or ":" in prefix:
        raise ValueError(f"REGISTRY is host[:port]/prefix, not a URL or a tag: {registry!r}")
    return host, prefix


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.x.x.x`` or ``[::1]``, with or without a port."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def destination(registry: str, name: str, version: str) -> str:
    host, prefix = split_registry(registry)
    return "/".join(p for p in (host, prefix, f"{name}:{version}") if p)


def copy_command(archive: Path, dest: str, digestfile: Path) -> list[str]:
    """The skopeo command pushing ``archive`` to ``dest`` (host/path:tag), writing the
    pushed manifest's digest to ``digestfile``."""
    plain = is_loopback(dest.split("/", 1)[0])
    return ["skopeo", "copy", "--quiet", "--preserve-digests", "--retry-times", "2",
            f"--dest-tls-verify={'false' if plain else 'true'}", "--digestfile", str(digestfile),
            f"oci-archive:{archive}", f"docker://{dest}"]  # fmt: skip


@dataclass(frozen=True)
class Pushed:
    name: str
    destination: str
    digest: str
    seconds: float


def push(archives: Mapping[str, Path], registry: str, version: str) -> list[Pushed]:
    """Push each ``name -> archive`` to ``registry/name:version``."""
    if shutil.which("skopeo") is None:
        raise PushError("skopeo is not installed (Debian: apt-get install skopeo)")
    done = []
    with tempfile.TemporaryDirectory(prefix="asgi-push-") as tmp:
        for name, archive in archives.items():
            dest = destination(registry, name, version)
            digestfile = Path(tmp) / name
            started = time.monotonic()
            command = copy_command(archive, dest, digestfile)
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise PushError(f"skopeo copy to {dest} failed:\n{result.stderr.strip()}")
            digest = digestfile.read_text().strip()
            done.append(Pushed(name, dest, digest, time.monotonic() - started))
    return done


# -- a registry of our own -----------------------------------------------------------------
def registry_config(storage: Path, port: int) -> dict[str, object]:
    """The distribution registry's configuration: filesystem storage, plain HTTP on
    127.0.0.1, the access log on, no debug server."""
    return {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    agent: str


class LocalRegistry:
    """The distribution registry on 127.0.0.1 for as long as the block runs; its storage
    and log in ``work_dir``."""

    def __init__(self, work_dir: Path, port: int | None = None) -> None:
        self.work_dir = Path(work_dir)
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = self.work_dir / "logs" / "registry.log"
        self._processes = Supervisor(self.log.parent, self.work_dir, _child_env(), StartError)

    def __enter__(self) -> LocalRegistry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        binary = BIN / "registry"
        if not binary.is_file():
            raise StartError(f"{binary} missing: run `make registry` (hack/build-registry.sh)")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "registry.json"  # JSON is YAML
        config.write_text(json.dumps(registry_config(self.work_dir / "storage", self.port)))
        self._processes.spawn("registry", binary, "serve", str(config))
        try:
            self._processes.wait(f"the registry on {self.address}", self._up, TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self._processes.stop()

    def _up(self) -> bool:
        url = f"http://{self.address}/v2/"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
        return False

    def requests(self) -> list[Request]:
        """Every request in the access log so far."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [Request(m["method"], m["path"], int(m["status"]), m["agent"])
                for m in _ACCESS.finditer(text)]  # fmt: skip


def _child_env() -> dict[str, str]:
    # REGISTRY_* variables would override the configuration file (and `make push
    # REGISTRY=...` puts REGISTRY in the environment).
    return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY")}


def main(argv: list[str] | None = None) -> int:
    from hack import nodeimages  # the images' recipes are needed only to push

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    to = sub.add_parser("push", help="push the OCI archives of `make images`")
    to.add_argument("registry", help="host[:port]/prefix, e.g. 127.0.0.1:5000/asgi-dev")
    serve = sub.add_parser("serve", help="a registry on 127.0.0.1 until Ctrl-C")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--dir", type=Path, help="its storage (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        work = args.dir or Path(tempfile.mkdtemp(prefix="asgi-registry-"))
        with LocalRegistry(work, args.port) as registry:
            print(f"registry on http://{registry.address} (storage {work}); Ctrl-C stops it")
            print(f"  make push REGISTRY={registry.address}/asgi-dev", flush=True)
            stopping = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stopping)  # the registry is started
            signal.sigwait(stopping)
        return 0
    try:
        split_registry(args.registry)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    archives = {name: nodeimages.oci_path(name) for name in nodeimages.PUSHED}
    missing = [str(path) for path in archives.values() if not path.is_file()]
    if missing:
        print("no archive: run `make images` first: " + ", ".join(missing), file=sys.stderr)
        return 1
    try:
        for pushed in push(archives, args.registry, nodeimages.VERSION):
            print(f"{pushed.destination}@{pushed.digest} ({pushed.seconds:.1f}s)")
    except PushError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
