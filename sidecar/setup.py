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

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
# mypy's settings for the compile, the same wherever it runs: no configuration file (a
# checkout's own pyproject.toml, found above this folder, names a plugin the build
# does not have), and untyped imports (uvloop, httptools) as Any.
MYPY_FLAGS = ["--config-file=", "--ignore-missing-imports"]
# The commands that build extensions (a wheel, an install, an editable install).
BUILDING = {"bdist_wheel", "build", "build_ext", "install", "develop", "editable_wheel"}
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
    """build_ext that runs mypyc only when extensions are built (not for the sdist or the
    metadata, which run this file too), and leaves the pure build in place of a compile
    that fails."""

    def finalize_options(self) -> None:
        if PLACEHOLDER and self.distribution.ext_modules == PLACEHOLDER:
            # sdist and the metadata steps finalize this command too: compile for builds only
            building = set(self.distribution.commands) & BUILDING
            self.distribution.ext_modules = compiled_modules() if building else []
        super().finalize_options()

    def run(self) -> None:
        if not self.extensions:
            return
        try:
            super().run()
        except Exception as exc:  # a compiler error, a missing header: any is a fallback
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            self.extensions = []
            say(f"compiling failed ({exc}); installing the pure-Python build")


def pure_reason() -> str | None:
    """Why this build is pure Python, or None if it compiles."""
    if BUILDS["pure_requested"]():
        return f"{BUILDS['PURE_ENV']} is set"
    reason = compiler_missing()
    if reason is None:
        try:
            import mypyc.build  # noqa: F401
        except ImportError as exc:
            reason = f"mypyc cannot be imported ({exc})"
    return reason


def compiled_modules() -> list[Any]:
    from mypyc.build import mypycify

    paths = [f"asgi_sidecar/{name}.py" for name in BUILDS["COMPILED"]]
    say(f"compiling {len(paths)} modules with mypyc")
    try:
        modules = list(
            mypycify(
                [*MYPY_FLAGS, *paths],
                only_compile_paths=paths,
                opt_level="3",
                group_name="asgi_sidecar.native",
            )
        )
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
WHY_PURE = pure_reason()
if WHY_PURE is not None:
    say(f"{WHY_PURE}; installing the pure-Python build")
# A stand-in until build_ext runs mypyc: it makes the wheel a platform one with extensions.
PLACEHOLDER = [] if WHY_PURE is not None else [Extension("asgi_sidecar.native__mypyc", [])]
setup(ext_modules=PLACEHOLDER, cmdclass={"build_ext": OptionalBuildExt})
