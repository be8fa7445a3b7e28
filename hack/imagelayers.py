"""The layers of the Python images (``hack/nodeimages.py``), built without a container
engine, bottom up:

* ``base_layer``: Debian bookworm (``debootstrap --variant=minbase``) with Python 3.11 and a
  venv of asgi-sidecar's third-party dependencies (about a minute).
* ``deps_layer``: more dependencies (the demo's FastAPI, the operator's kopf, Kubernetes
  client and cryptography) added to the same venv, pinned to the versions the base has: a
  diff of the base's file tree holding only new files, so the base is shared by every
  image and never changed (some seconds).
* ``app_layer``: the project's wheels under ``APP_DIR`` (rebuilt every time, reproducibly).
* ``pause_layer``: the Pods' sandbox, one static binary from ``hack/pause/pause.c``.

The base and the deps layers are cached by a key of their recipe and requirements, in
``.cache/images`` and machine-wide (``hack.cache``).  Bytecode is compiled at build time
and checked by hash, not by the sources' times (every file in a layer has mtime 0): the
images run with a read-only root and recompile nothing at start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from hack import cache
from hack.cache import ROOT
from hack.imagearchives import Layer, sha256_file

CACHE = cache.LOCAL / "images"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("ASGI_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEBIAN_PACKAGES = ("python3", "python3-venv")
# Bump when a layer's recipe below changes: it is part of the cache keys.
BASE_RECIPE = "5"
DEPS_RECIPE = "1"
VENV = "/opt/venv"
# The images' user (the operator's SIDECAR_USER) by name, as distroless has it: kopf
# names its identity after getpass.getuser(), which fails for a uid /etc/passwd lacks.
USER_ENTRY = ("nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin", "nonroot:x:65532:")
APP_DIR = "/opt/asgi"  # the project, installed with --target; on PYTHONPATH
PYTHON_LIB = "/usr/lib/python3.11"
SLIM = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
        "usr/share/locale", "usr/share/info")  # fmt: skip
NOT_IN_LAYERS = ("dev", "proc", "sys", "tmp")  # a deps layer's diff leaves them out
# What the build's commands in the image's root see (not this process's environment).
CHROOT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1",
              "HOME": "/root", "LANG": "C.UTF-8"}  # fmt: skip


class ImageError(RuntimeError):
    """A build step failed; the message names the step and its output."""


def _run(step: str, cmd: Sequence[str | Path], **kwargs: object) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, check=False, **kwargs
    )  # type: ignore[call-overload]
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-30:]
        raise ImageError(f"{step} failed ({done.returncode}):\n" + "\n".join(output))
    return str(done.stdout)


def _chroot(step: str, rootfs: Path, *cmd: str) -> str:
    return _run(step, ["chroot", rootfs, *cmd], env=CHROOT_ENV)


def _tar(src: Path, out: Path, names: Sequence[str] | None = None) -> Layer:
    """A layer of a directory (or of ``names`` in it only): numeric owners, sorted names,
    fixed times."""
    tmp = out.with_suffix(".tmp")
    fixed: list[str | Path] = ["--numeric-owner", "--mtime=@0", "-C", src, "-cf", tmp]
    if names is None:
        skip = [f"--exclude=./{d}/*" for d in NOT_IN_LAYERS if d != "tmp"]
        _run(f"tar of {src}", ["tar", "--sort=name", *skip, *fixed, "."])
    else:
        listing = out.with_suffix(".list")
        listing.write_text("".join(f"./{n}\0" for n in sorted(names)))
        _run(f"tar of {src}", ["tar", "--no-recursion", "--null", *fixed, "-T", listing])
        listing.unlink()
    tmp.replace(out)
    return Layer(out, sha256_file(out))


def _cached(name: str) -> Layer | None:
    found = cache.fetch("images", name)
    return Layer(found, sha256_file(found)) if found is not None else None


def _keep(rootfs: Path, name: str, names: Sequence[str] | None = None) -> Layer:
    CACHE.mkdir(parents=True, exist_ok=True)
    layer = _tar(rootfs, CACHE / name, names)
    shutil.rmtree(rootfs)
    cache.keep("images", layer.path)
    return layer


# -- the pause image ------------------------------------------------------------------
def pause_layer(work: Path) -> Layer:
    source = ROOT / "hack" / "pause" / "pause.c"
    binary = work / "pause-root" / "pause"
    binary.parent.mkdir(parents=True, exist_ok=True)
    _run("gcc (pause)", ["gcc", "-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror",
                         "-o", binary, source])  # fmt: skip
    return _tar(binary.parent, work / "pause.tar")


# -- what the Python layers install -----------------------------------------------------
SIDECAR_PROJECT = ROOT / "sidecar"  # the asgi-sidecar distribution
OPERATOR_PROJECT = ROOT  # the asgi-operator distribution; depends on asgi-sidecar


def _project(folder: Path) -> dict[str, object]:
    data: dict[str, object] = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    return data


def requirements() -> list[str]:
    """asgi-sidecar's dependencies (sidecar/pyproject.toml): the base layer's venv."""
    deps: list[str] = _project(SIDECAR_PROJECT)["dependencies"]  # type: ignore[assignment]
    return sorted(deps)


def demo_requirements() -> list[str]:
    """asgi-sidecar's ``demo`` extra: the demo image's deps layer."""
    extras = _project(SIDECAR_PROJECT)["optional-dependencies"]
    return sorted(extras["demo"])  # type: ignore[index]


def operator_requirements() -> list[str]:
    """asgi-operator's own dependencies (its pin on asgi-sidecar is the app layer's wheel)."""
    deps: list[str] = _project(OPERATOR_PROJECT)["dependencies"]  # type: ignore[assignment]
    return sorted(d for d in deps if not d.startswith("asgi-sidecar"))


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def base_key() -> str:
    return _key(BASE_RECIPE, DEBIAN_SUITE, DEBIAN_PACKAGES, requirements())


def deps_key(name: str, reqs: Sequence[str]) -> str:
    return _key(DEPS_RECIPE, base_key(), name, list(reqs))


def _wheels(rootfs: Path, reqs: Sequence[str], constraints: str = "") -> None:
    """``reqs`` as wheels in ``rootfs/tmp/wheels``, downloaded by this machine's pip."""
    tmp = rootfs / "tmp"
    (tmp / "requirements.txt").write_text("\n".join(reqs) + "\n")
    (tmp / "constraints.txt").write_text(constraints)
    _run("pip wheel (dependencies)", [sys.executable, "-m", "pip", "wheel", "--quiet",
         "--wheel-dir", tmp / "wheels", "-r", tmp / "requirements.txt",
         "-c", tmp / "constraints.txt"])  # fmt: skip


def _install_wheels(rootfs: Path) -> None:
    """Install the wheels of ``_wheels`` into the venv (uncompiled), then clean up."""
    _chroot("pip install (dependencies)", rootfs, f"{VENV}/bin/pip", "install", "--quiet",
            "--no-cache-dir", "--no-compile", "--no-index", "--find-links", "/tmp/wheels",
            "-r", "/tmp/requirements.txt", "-c", "/tmp/constraints.txt")  # fmt: skip
    for name in ("wheels", "requirements.txt", "constraints.txt"):
        path = rootfs / "tmp" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _compile(rootfs: Path, *args: str) -> None:
    """Byte-code checked by hash, never by the source's time (the layers' are all 0)."""
    _chroot("compileall", rootfs, f"{VENV}/bin/python", "-m", "compileall", "-q",
            "--invalidation-mode", "unchecked-hash", *args)  # fmt: skip


# -- the base and the deps layers -------------------------------------------------------
def base_layer(work: Path) -> Layer:
    """Debian minbase with Python and a venv of asgi-sidecar's dependencies (cached)."""
    name = f"base-{base_key()}.tar"
    if (cached := _cached(name)) is not None:
        return cached
    rootfs = work / "base-root"
    shutil.rmtree(rootfs, ignore_errors=True)
    print(f"building the base layer (debootstrap {DEBIAN_SUITE}, pip) into {rootfs}")
    _run(
        "debootstrap",
        ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
         DEBIAN_SUITE, rootfs, DEBIAN_MIRROR],
    )  # fmt: skip
    _wheels(rootfs, requirements())
    _chroot("python3 -m venv", rootfs, "python3", "-m", "venv", VENV)
    _install_wheels(rootfs)
    _compile(rootfs, "-f", VENV, PYTHON_LIB)
    for sub in SLIM:
        shutil.rmtree(rootfs / sub, ignore_errors=True)
        (rootfs / sub).mkdir(parents=True, exist_ok=True)
    for file, entry in zip(("etc/passwd", "etc/group"), USER_ENTRY, strict=True):
        with (rootfs / file).open("a") as f:
            f.write(entry + "\n")
    return _keep(rootfs, name)


def tree(rootfs: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``rootfs`` (but ``NOT_IN_LAYERS``): (mode, size, mtime) of files
    and links; directories as (mode, 0, 0), since new entries change their times."""
    found: dict[str, tuple[int, int, int]] = {}
    for top, dirs, files in os.walk(rootfs):
        rel = os.path.relpath(top, rootfs)
        if rel == ".":
            dirs[:] = [d for d in dirs if d not in NOT_IN_LAYERS]
        for name in dirs:
            path = os.path.normpath(os.path.join(rel, name))
            found[path] = (os.lstat(os.path.join(top, name)).st_mode, 0, 0)
        for name in files:
            path = os.path.normpath(os.path.join(rel, name))
            st = os.lstat(os.path.join(top, name))
            found[path] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def added_paths(before: dict[str, tuple[int, int, int]],
                after: dict[str, tuple[int, int, int]]) -> list[str]:  # fmt: skip
    """What a layer on top of ``before`` must hold to give ``after``: the new paths.

    A path removed or changed would need a whiteout or a copy of a base file in the
    layer: refused, since a deps layer adds to the base and never changes it."""
    changed = sorted(p for p in before if after.get(p) != before[p])
    if changed:
        raise ImageError("the layer would change the base: " + ", ".join(changed[:10]))
    return sorted(p for p in after if p not in before)


def deps_layer(work: Path, name: str, reqs: Sequence[str], base: Layer) -> Layer:
    """``reqs`` added to the base's venv, pinned to what the base has (cached)."""
    file = f"deps-{name}-{deps_key(name, reqs)}.tar"
    if (cached := _cached(file)) is not None:
        return cached
    rootfs = work / f"{name}-root"
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir(parents=True)
    print(f"building the {name} dependencies layer ({', '.join(reqs)})")
    _run("tar -x (base)", ["tar", "--numeric-owner", "-C", rootfs, "-xf", base.path])
    before = tree(rootfs)
    pinned = _chroot("pip freeze", rootfs, f"{VENV}/bin/pip", "freeze", "--all")
    _wheels(rootfs, reqs, pinned)
    _install_wheels(rootfs)
    # only the new sources: compiling the base's again would change its files
    sources = [p for p in added_paths(before, tree(rootfs)) if p.endswith(".py")]
    (rootfs / "tmp" / "sources.txt").write_text("".join(f"/{p}\n" for p in sources))
    _compile(rootfs, "-i", "/tmp/sources.txt")
    (rootfs / "tmp" / "sources.txt").unlink()
    return _keep(rootfs, file, added_paths(before, tree(rootfs)))


# -- the project's wheels ------------------------------------------------------------------
def app_layer(work: Path, name: str, projects: Sequence[Path]) -> Layer:
    """The wheels of ``projects`` under ``APP_DIR`` (rebuilt every time, reproducibly)."""
    wheels, root = work / f"{name}-wheels", work / f"{name}-app-root"
    for path in (wheels, root):
        shutil.rmtree(path, ignore_errors=True)
    # PYTHONHASHSEED: mypyc writes the same C for the same sources (sidecar/setup.py maps
    # the build's paths out of the debug info), so a rebuilt layer keeps its digest.
    _run(f"pip wheel ({name})", [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
         "--wheel-dir", wheels, *projects], env={**os.environ, "PYTHONHASHSEED": "0"})  # fmt: skip
    target = root / APP_DIR.lstrip("/")
    _run(f"pip install --target ({name})", [sys.executable, "-m", "pip", "install", "--quiet",
         "--no-deps", "--no-compile", "--target", target, *wheels.glob("*.whl")])  # fmt: skip
    # pip wrote the host's interpreter into the console scripts: point them at the image's.
    for script in (target / "bin").iterdir():
        lines = script.read_text().split("\n", 1)
        if lines[0].startswith("#!"):
            script.write_text(f"#!{VENV}/bin/python3\n" + lines[1])
    # direct_url.json names the wheel's path on this machine: a new digest every build
    for found in target.glob("*.dist-info/direct_url.json"):
        found.unlink()
        record = found.parent / "RECORD"
        kept = [x for x in record.read_text().splitlines() if "/direct_url.json," not in x]
        record.write_text("\n".join(kept) + "\n")
    _run("compileall", [sys.executable, "-m", "compileall", "-q", "-d", APP_DIR,
                        "--invalidation-mode", "unchecked-hash", target])  # fmt: skip
    return _tar(root, work / f"{name}-app.tar")
