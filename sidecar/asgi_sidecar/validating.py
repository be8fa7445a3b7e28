"""Parse and validate settings in a short-lived child process.

A serving process (``proxy``, ``serve``) holds its settings as a ``ValidSettings`` and
never imports pydantic or the model (``validated`` says why).  The model still checks
everything, here, in ``python -P -m asgi_sidecar.validating``:

- at start-up (``at_startup``): the command line, the environment and the ``--config``
  file, with the same messages and exit codes as ever: the child prints them on the
  stderr it shares with the sidecar, and the sidecar exits with its code;
- on a config reload (``on_reload``, without blocking the event loop): the new file's
  text, with the same environment and flags on top.  A refusal is a ``ConfigError``; a
  child that cannot start, fails, answers nonsense or takes longer than ``TIMEOUT`` is a
  ``ValidationUnavailableError`` (the watcher tries the same text again later).  Either way
  the running settings stay.

The request goes to the child's stdin and the answer comes back on its stdout, as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from asgi_sidecar.validated import ENV_PREFIX, ConfigError, ValidSettings

# -P: nothing from the working directory (an app's folder) shadows a module; the package
# itself comes from where this process has it (``_child_env``).
CHILD: Final = (sys.executable, "-P", "-m", "asgi_sidecar.validating")
TIMEOUT: Final = 60.0  # seconds; importing pydantic takes well under one
PACKAGE_ROOT: Final = str(Path(__file__).resolve().parent.parent)


class ValidationUnavailableError(ConfigError):
    """The child gave no verdict on the settings (it could not start, failed or hung)."""


def _child_env() -> dict[str, str]:
    """This environment, with the folder this process imported the package from first on
    the child's path (a source tree run with ``python -m asgi_sidecar`` has no install)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (PACKAGE_ROOT, env.get("PYTHONPATH"))))
    return env


@dataclass(frozen=True, slots=True)
class Startup:
    """What the command line asked for, validated."""

    command: str  # "proxy" or "serve"
    app: str | None  # serve's module:attribute
    app_dir: str
    config: Path | None
    log_level: str
    log_format: str
    flags: dict[str, Any]  # the settings given as flags, for every reload
    settings: ValidSettings


def at_startup(argv: Sequence[str]) -> Startup | int:
    """Parse ``argv`` (``proxy|serve ...``) and validate the settings in a child; its exit
    code instead when it refused them (it has printed why on stderr)."""
    request = json.dumps({"argv": list(argv)})
    try:
        done = subprocess.run(
            CHILD,
            input=request,
            stdout=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT,
            check=False,
            env=_child_env(),
        )
    except subprocess.TimeoutExpired:  # the child is killed by run()
        return _failed(f"settings not validated within {TIMEOUT:.0f} s")
    except OSError as exc:
        return _failed(f"cannot start the validating process: {exc}")
    if done.returncode < 0:
        return _failed(f"the validating process was killed by signal {-done.returncode}")
    if done.returncode != 0:
        return done.returncode
    try:
        reply = json.loads(done.stdout)
    except ValueError:  # what argparse prints and exits 0 for: the help (--help, -h, --hel)
        sys.stdout.write(done.stdout)
        return 0
    config = reply["config"]
    return Startup(
        command=reply["command"],
        app=reply["app"],
        app_dir=reply["app_dir"],
        config=None if config is None else Path(config),
        log_level=reply["log_level"],
        log_format=reply["log_format"],
        flags=reply["flags"],
        settings=ValidSettings(reply["settings"]),
    )


def _failed(why: str) -> int:
    print(f"asgi-sidecar: {why}", file=sys.stderr)
    return 1


async def on_reload(
    text: str, source: str, environ: Mapping[str, str], flags: Mapping[str, Any]
) -> ValidSettings:
    """The settings a config file of ``text`` gives, with ``environ`` and ``flags`` on top."""
    request = json.dumps(
        {
            "text": text,
            "source": source,
            "environ": {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)},
            "flags": dict(flags),
        }
    ).encode()
    try:
        child = await asyncio.create_subprocess_exec(
            *CHILD,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_child_env(),
        )
    except OSError as exc:  # out of file descriptors or processes, say
        raise ValidationUnavailableError(
            f"{source}: cannot start the validating process: {exc}"
        ) from None
    try:
        out, err = await asyncio.wait_for(child.communicate(request), TIMEOUT)
    except BaseException as exc:  # the timeout, or the watcher cancelled: no child left
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        if isinstance(exc, TimeoutError):
            raise ValidationUnavailableError(
                f"{source}: not validated within {TIMEOUT:.0f} s"
            ) from None
        raise
    if child.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ValidationUnavailableError(
            f"{source}: the validating process failed (exit {child.returncode}): {last[0]}"
        )
    try:
        reply = json.loads(out)
        error = reply.get("error")
        settings = None if error is not None else ValidSettings(reply.get("settings"))
    except (ValueError, AttributeError, TypeError) as exc:  # not an answer this version reads
        raise ValidationUnavailableError(
            f"{source}: no answer from the validating process: {exc}"
        ) from None
    if settings is None:
        raise ConfigError(error)
    return settings


def child_main() -> int:
    """The child: one request on stdin, its answer on stdout."""
    from asgi_sidecar.configuring import build_settings, load_settings, parse_config_text

    request = json.load(sys.stdin)
    if "argv" in request:
        from asgi_sidecar.parsing import build_parser, settings_flags

        args = build_parser().parse_args(request["argv"])  # usage errors: stderr, exit 2
        flags = settings_flags(args)
        try:
            settings = load_settings(args.config, os.environ, flags)
        except ConfigError as exc:
            print(f"asgi-sidecar: invalid settings:\n{exc}", file=sys.stderr)
            return 2
        reply: dict[str, Any] = {
            "command": args.command,
            "app": getattr(args, "app", None),
            "app_dir": getattr(args, "app_dir", "."),
            "config": None if args.config is None else str(args.config),
            "log_level": args.log_level,
            "log_format": args.log_format,
            "flags": flags,
            "settings": settings.model_dump(),
        }
    else:
        try:
            values = parse_config_text(request["text"], request["source"])
            settings = build_settings(
                file_values=values,
                environ=request["environ"],
                flags=request["flags"],
                file_source=request["source"],
            )
            reply = {"settings": settings.model_dump()}
        except ConfigError as exc:
            reply = {"error": str(exc)}
    json.dump(reply, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
