"""The command line's parser: every settings flag generated from ``SidecarSettings``.

Flags (name, help text), environment variables (``ASGI_SIDECAR_<FIELD>``) and the config
file can never drift apart.  This module imports the model, so a serving process never
imports it: ``cli`` parses ``proxy`` and ``serve`` in the validating child
(``validating``), and only the commands that exit at once here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from asgi_sidecar import __version__, builds
from asgi_sidecar.settings import SidecarSettings, is_nullable


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


def settings_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on the command line, by field name (null words as None)."""
    values = {}
    for name in SidecarSettings.model_fields:
        if name in vars(args):
            raw = getattr(args, name)
            nullable = is_nullable(name)
            values[name] = None if nullable and raw.lower() in ("none", "null") else raw
    return values
