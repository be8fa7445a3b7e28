"""The build caches: the project's ``.cache/`` and the machine-wide one every clone shares.

One rule, also followed by ``hack/cache.sh`` for the shell build scripts: an artifact is
named by a key of its sources (a version, a hash), kept in ``.cache/<kind>/`` and copied
to ``$ASGI_SHARED_CACHE/<kind>/`` (default ``~/.cache/asgi-operator``), so a fresh clone on
the same machine copies it instead of building it again.  Unchanged sources, same key:
reused; changed sources, new key: built.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / ".cache"
BIN = LOCAL / "bin"


def shared_dir(kind: str) -> Path:
    """``$ASGI_SHARED_CACHE/<kind>``, by default ``~/.cache/asgi-operator/<kind>``."""
    base = os.environ.get("ASGI_SHARED_CACHE") or str(Path.home() / ".cache" / "asgi-operator")
    return Path(base) / kind


def _copy(src: Path, dest: Path) -> None:
    """Copy so that ``dest`` is never seen half-written (another clone may be reading)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)


def fetch(kind: str, name: str) -> Path | None:
    """``.cache/<kind>/<name>`` if there, else copied from the machine-wide cache; None if
    neither has it (build it, then ``keep`` it)."""
    local = LOCAL / kind / name
    if local.is_file():
        return local
    shared = shared_dir(kind) / name
    if shared.is_file():
        _copy(shared, local)
        return local
    return None


def keep(kind: str, path: Path) -> None:
    """Copy a freshly built ``path`` machine-wide (best effort: the build has succeeded)."""
    try:
        _copy(path, shared_dir(kind) / path.name)
    except OSError as exc:
        print(f"note: not cached machine-wide: {exc}", file=sys.stderr)
