"""``asgi-operator run``: the operator process, built on kopf."""

from __future__ import annotations

import argparse
import sys

from asgi_operator import __version__
from asgi_operator.config import NativeSidecars, OperatorSettings, WebhookSettings


def _namespaced(value: str) -> tuple[str, str]:
    namespace, slash, name = value.partition("/")
    if not slash or not namespace or not name:
        raise argparse.ArgumentTypeError(f"expected NAMESPACE/NAME, got {value!r}")
    return namespace, name


def _webhook(args: argparse.Namespace) -> WebhookSettings | None:
    if not args.webhook_port:
        return None
    if not (args.webhook_cert_dir or args.webhook_secret):
        raise SystemExit(
            "asgi-operator: --webhook-port needs --webhook-secret or --webhook-cert-dir"
        )
    if not (args.webhook_service or args.webhook_url):
        raise SystemExit("asgi-operator: --webhook-port needs --webhook-service or --webhook-url")
    own = (args.webhook_secret or args.webhook_service)[0]
    if args.namespace and set(args.namespace) <= {own}:
        raise SystemExit(
            f"asgi-operator: the webhook would serve no namespace: only {own}, its own, is"
            " watched (its Pods never go to the webhook)"
        )
    return WebhookSettings(
        port=args.webhook_port,
        host=args.webhook_host,
        configuration=args.webhook_configuration,
        service=args.webhook_service,
        url=args.webhook_url,
        manage_configuration=args.webhook_manage_configuration,
        cert_dir=args.webhook_cert_dir,
        secret=args.webhook_secret,
        cert_days=args.webhook_cert_days,
        cert_check_seconds=args.webhook_cert_check_seconds,
        timeout_seconds=args.webhook_timeout_seconds,
    )


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
    hook = run.add_argument_group("admission webhook (injects the proxy for spec.targetRef)")
    hook.add_argument("--webhook-port", type=int, default=0, help="HTTPS port; 0: no webhook")
    hook.add_argument("--webhook-host", default="0.0.0.0")
    hook.add_argument(
        "--webhook-configuration",
        default="asgi-operator",
        help="the MutatingWebhookConfiguration whose caBundle the operator keeps",
    )
    hook.add_argument("--webhook-service", type=_namespaced, help="NAMESPACE/NAME of its Service")
    hook.add_argument("--webhook-url", help="URL the API server calls (operator outside a cluster)")
    hook.add_argument(
        "--webhook-manage-configuration",
        action="store_true",
        help="apply the whole configuration (without the Helm chart)",
    )
    hook.add_argument("--webhook-cert-dir", help="tls.crt and tls.key from here (cert-manager)")
    hook.add_argument(
        "--webhook-secret", type=_namespaced, help="NAMESPACE/NAME of the self-managed certificates"
    )
    hook.add_argument("--webhook-cert-days", type=int, default=365)
    hook.add_argument("--webhook-cert-check-seconds", type=float, default=3600.0)
    hook.add_argument("--webhook-timeout-seconds", type=int, default=5)
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
        webhook=_webhook(args),
    )
    from asgi_operator.running import run

    # kopf.configure (in run) sets up logging; a basicConfig here would print every line twice.
    return run(settings, verbose=args.verbose)
