"""Command line: ``asgi-sidecar proxy|serve|sysctl|check-config``.

The flags are ``parsing``'s, generated from ``SidecarSettings``.  ``proxy`` and ``serve``
are parsed and validated in a child process (``validating``), so the process that goes
on to serve never imports the model or pydantic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

from asgi_sidecar import validating
from asgi_sidecar.validated import ConfigError

log = logging.getLogger("asgi_sidecar")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] not in (["proxy"], ["serve"]):
        return _run_command(argv)
    # The serving process imports neither pydantic nor the model: a child validates.
    startup = validating.at_startup(argv)
    if isinstance(startup, int):
        return startup
    setup_logging(startup.log_level, startup.log_format)
    _raise_open_file_limit()
    _install_uvloop()
    try:
        if startup.command == "proxy":
            from asgi_sidecar.serving import run_proxy

            return asyncio.run(
                run_proxy(
                    startup.settings,
                    config_path=startup.config,
                    environ=os.environ,
                    flags=startup.flags,
                )
            )
        from asgi_sidecar.embedding import run_embedded

        assert startup.app is not None  # serve's argument
        return asyncio.run(
            run_embedded(
                startup.app,
                startup.settings,
                app_dir=startup.app_dir,
                config_path=startup.config,
                environ=os.environ,
                flags=startup.flags,
            )
        )
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


def _run_command(argv: list[str]) -> int:
    """check-config, sysctl, --help and --version: they exit at once, so they may import
    the model.  (``proxy --help`` is printed by the validating child.)"""
    from asgi_sidecar.configuring import dump_settings, load_settings
    from asgi_sidecar.parsing import build_parser

    args = build_parser().parse_args(argv)
    if args.command == "check-config":
        try:
            settings = load_settings(args.file, {}, {})
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        sys.stdout.write(dump_settings(settings))
        return 0
    if args.command == "sysctl":
        from asgi_sidecar.sysctls import SysctlError, apply_sysctls

        try:
            for line in apply_sysctls(args.assignments):
                print(line)
        except SysctlError as exc:
            print(f"asgi-sidecar sysctl: {exc}", file=sys.stderr)
            return 1
        return 0
    # proxy and serve never come here (main gives them to the validating child).
    raise AssertionError(f"unexpected command {args.command!r}")  # pragma: no cover


def _raise_open_file_limit() -> None:
    """Every connection is a file descriptor: use the hard limit, not the soft 1024."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # pragma: no cover - refused by the system
            log.warning("could not raise the open file limit from %d", soft)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
