"""``asgi-operator run``: the operator process, built on kopf."""

from __future__ import annotations

import argparse
import sys

from asgi_operator import __version__
from asgi_operator.config import NativeSidecars, OperatorSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asgi-operator", description=__doc__)
    parser.add_argument("--version", action="version", version=f"asgi-operator {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="reconcile AsgiServers until stopped")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="repeatable")
    scope.add_argument("--all-namespaces", "-A", action="store_true")
    run.add_argument("--sidecar-image", default=OperatorSettings().sidecar_image)
    run.add_argument("--native-sidecars", choices=[m.value for m in NativeSidecars], default="auto")
    run.add_argument("--peering", help="KopfPeering name for a highly available pair")
    run.add_argument("--priority", type=int, default=0)
    run.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="'' to disable")
    run.add_argument("--log-format", choices=["plain", "json"], default="plain")
    run.add_argument("--resync-seconds", type=float, default=10.0)
    run.add_argument(
        "--metrics-port", type=int, default=8082, help="operator metrics; 0 to disable"
    )
    run.add_argument(
        "--scrape-address-map",
        help="test-only: JSON file mapping a Pod's podIP:port to host:port for scraping",
    )
    run.add_argument("--verbose", action="store_true")
    commands.add_parser("crd", help="print the AsgiServer CRD")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "crd":
        from asgi_operator.crdgen import render

        sys.stdout.write(render())
        return 0
    settings = OperatorSettings(
        namespaces=args.namespace,
        all_namespaces=args.all_namespaces or not args.namespace,
        sidecar_image=args.sidecar_image,
        native_sidecars=NativeSidecars(args.native_sidecars),
        peering=args.peering,
        priority=args.priority,
        liveness=args.liveness or None,
        log_format=args.log_format,
        resync_seconds=args.resync_seconds,
        metrics_port=args.metrics_port or None,
        scrape_address_map=args.scrape_address_map,
    )
    from asgi_operator.running import run

    # kopf.configure (in run) sets up logging; a basicConfig here would print every line twice.
    return run(settings, verbose=args.verbose)
