"""Command line: ``asgi-sidecar proxy|serve|sysctl|check-config``.

Every settings flag is generated from ``SidecarSettings`` (name, help text), so
flags, environment variables (``ASGI_SIDECAR_<FIELD>``) and the config file can
never drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from asgi_sidecar import __version__, builds
from asgi_sidecar.configuring import ConfigError, dump_settings, load_settings
from asgi_sidecar.settings import SidecarSettings, is_nullable

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


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "settings", "each also ASGI_SIDECAR_<NAME> in the environment or <camelName> in --config"
    )
    for name, field in SidecarSettings.model_fields.items():
        default = field.default
        switch = isinstance(default, bool)  # --adaptive alone means true
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=argparse.SUPPRESS,
            metavar=name.upper() if not switch else "true|false",
            nargs="?" if switch else None,
            const="true" if switch else None,
            help=f"{field.description} (default: {default})",
        )
    parser.add_argument("--config", type=Path, help="YAML or JSON settings file, reloaded live")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="plain", choices=["plain", "json"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asgi-sidecar",
        description="HTTP/1.1 front server for ASGI apps: keep-alive, limits, backlog, metrics.",
    )
    parser.add_argument(
        "--version", action="version", version=f"asgi-sidecar {__version__} ({builds.describe()})"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    proxy = commands.add_parser("proxy", help="proxy to an app listening on --upstream")
    _add_settings_flags(proxy)
    serve = commands.add_parser("serve", help="run an ASGI app in-process (uvicorn) with limits")
    serve.add_argument("app", help="the application as module:attribute")
    serve.add_argument("--app-dir", default=".", help="directory added to sys.path for the app")
    _add_settings_flags(serve)
    check = commands.add_parser("check-config", help="validate a settings file and print it")
    check.add_argument("file", type=Path)
    sysctl = commands.add_parser(
        "sysctl", help="write sysctls in this network namespace (for a privileged init container)"
    )
    sysctl.add_argument("assignments", nargs="+", metavar="NAME=VALUE")
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    values = {}
    for name in SidecarSettings.model_fields:
        if name in vars(args):
            raw = getattr(args, name)
            nullable = is_nullable(name)
            values[name] = None if nullable and raw.lower() in ("none", "null") else raw
    return values


def main(argv: list[str] | None = None) -> int:
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
    setup_logging(args.log_level, args.log_format)
    flags = _flags(args)
    try:
        settings = load_settings(args.config, os.environ, flags)
    except ConfigError as exc:
        print(f"asgi-sidecar: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    _raise_open_file_limit()
    _install_uvloop()
    try:
        if args.command == "proxy":
            from asgi_sidecar.serving import run_proxy

            return asyncio.run(
                run_proxy(settings, config_path=args.config, environ=os.environ, flags=flags)
            )
        from asgi_sidecar.embedding import run_embedded

        return asyncio.run(
            run_embedded(
                args.app,
                settings,
                app_dir=args.app_dir,
                config_path=args.config,
                environ=os.environ,
                flags=flags,
            )
        )
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1


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
