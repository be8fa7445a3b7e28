"""The compiled build of asgi-sidecar: mypyc compiles the hot path (``asgi_sidecar.builds``
names the modules) into C extensions, beside the ``.py`` files that stay the pure build.

Everything else is in pyproject.toml.  The build falls back to pure Python, and says so,
when ``ASGI_SIDECAR_PURE`` is set, when mypyc cannot be imported, when no C compiler is
found, or when compiling fails; the package then runs the same code uncompiled.
"""

from __future__ import annotations

import os
import runpy
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
BUILDS = runpy.run_path(str(HERE / "asgi_sidecar" / "builds.py"))


def say(message: str) -> None:
    print(f"asgi-sidecar build: {message}", file=sys.stderr, flush=True)


def compiler_missing() -> str | None:
    """Why no C compiler can be run, or None if one can."""
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    program = shlex.split(command)[0] if command.strip() else ""
    if not program or shutil.which(program) is None:
        return f"no C compiler ({command!r} not found)"
    return None


class OptionalBuildExt(build_ext):
    """build_ext that leaves the pure build in place of a compile that fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # a compiler error, a missing header: any is a fallback
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []
            say(f"compiling failed ({exc}); installing the pure-Python build")


def compiled_modules() -> list[Any]:
    if BUILDS["pure_requested"]():
        say(f"{BUILDS['PURE_ENV']} is set; installing the pure-Python build")
        return []
    reason = compiler_missing()
    if reason is None:
        try:
            from mypyc.build import mypycify
        except ImportError as exc:
            reason = f"mypyc cannot be imported ({exc})"
    if reason is not None:
        say(f"{reason}; installing the pure-Python build")
        return []
    paths = [f"asgi_sidecar/{name}.py" for name in BUILDS["COMPILED"]]
    say(f"compiling {len(paths)} modules with mypyc")
    try:
        modules = list(mypycify(paths, opt_level="3", group_name="asgi_sidecar.native"))
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error it finds
        say(f"mypyc failed ({exc!r}); installing the pure-Python build")
        return []
    # The same sources give the same extensions wherever they are built: the project's and
    # mypyc's (an isolated build's temporary) folders are mapped out of the debug info.
    import mypyc

    runtime = Path(mypyc.__file__).parent
    mapped = [f"-ffile-prefix-map={HERE}=.", f"-ffile-prefix-map={runtime}=mypyc"]
    for module in modules:
        module.extra_compile_args = [*module.extra_compile_args, *mapped]
    return modules


os.chdir(HERE)  # mypycify takes paths relative to the project
setup(ext_modules=compiled_modules(), cmdclass={"build_ext": OptionalBuildExt})
