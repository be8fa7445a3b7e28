"""Parse and validate settings in a short-lived child process.

A serving process (``proxy``, ``serve``) holds its settings as a ``ValidSettings`` and
never imports pydantic or the model (``validated`` says why).  The model still checks
everything, here, in ``python -P -m asgi_sidecar.validating``:

- at start-up (``at_startup``): the command line, the environment and the ``--config``
  file, with the same messages and exit codes as ever: the child prints them on the
  stderr it shares with the sidecar, and the sidecar exits with its code;
- on a config reload (``on_reload``, without blocking the event loop): the new file's
  text, with the same environment and flags on top.  A refusal, a crash or a child that
  takes longer than ``TIMEOUT`` is a ``ConfigError``: the running settings stay.

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

from asgi_sidecar.validated import ConfigError, ValidSettings

# -P: nothing from the working directory (an app's folder) shadows a module.
CHILD: Final = (sys.executable, "-P", "-m", "asgi_sidecar.validating")
TIMEOUT: Final = 60.0  # seconds; importing pydantic takes well under one
ENV_PREFIX: Final = "ASGI_SIDECAR_"


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
            CHILD, input=request, stdout=subprocess.PIPE, text=True, timeout=TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:  # the child is killed by run()
        print(f"asgi-sidecar: settings not validated within {TIMEOUT:.0f} s", file=sys.stderr)
        return 1
    if done.returncode != 0:
        return done.returncode
    reply = json.loads(done.stdout)
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
    child = await asyncio.create_subprocess_exec(
        *CHILD,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(child.communicate(request), TIMEOUT)
    except BaseException as exc:  # the timeout, or the watcher cancelled: no child left
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        if isinstance(exc, TimeoutError):
            raise ConfigError(f"{source}: not validated within {TIMEOUT:.0f} s") from None
        raise
    if child.returncode != 0:
        last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(
            f"{source}: the validating process failed (exit {child.returncode}): {last[0]}"
        )
    reply = json.loads(out)
    if "error" in reply:
        raise ConfigError(reply["error"])
    return ValidSettings(reply["settings"])


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
