"""``asgi-operator run``'s webhook flags: settings built from them, bad combinations refused."""

from __future__ import annotations

import pytest

from asgi_operator import cli
from asgi_operator.config import WebhookSettings


def webhook(*flags: str) -> WebhookSettings | None:
    return cli._webhook(cli.build_parser().parse_args(["run", *flags]))


def test_no_port_no_webhook() -> None:
    assert webhook() is None


CHART = ["--webhook-port", "9443", "--webhook-service", "ops/asgi-webhook"]
URL = ["--webhook-url", "https://127.0.0.1:9443/mutate-pods"]


def test_the_charts_flags_give_the_settings() -> None:
    settings = webhook(
        *CHART, "--webhook-secret", "ops/asgi-webhook-tls", "--webhook-cert-days", "90"
    )
    assert settings is not None
    assert settings.service == ("ops", "asgi-webhook")
    assert settings.secret == ("ops", "asgi-webhook-tls")
    assert settings.cert_days == 90
    assert settings.own_namespace() == "ops"
    assert not settings.manage_configuration


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--webhook-port", "9443", *URL], "--webhook-secret"),
        (["--webhook-port", "9443", "--webhook-secret", "ops/tls"], "--webhook-service"),
        ([*CHART, "--webhook-secret", "ops/tls", "--namespace", "ops"], "serve no namespace"),
    ],
)
def test_incomplete_webhook_flags_are_refused_with_what_is_missing(flags, message) -> None:
    with pytest.raises(SystemExit, match=message):
        webhook(*flags)


def test_a_namespace_flag_that_is_not_namespace_slash_name_is_refused(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--webhook-secret", "tls"])
    assert "expected NAMESPACE/NAME, got 'tls'" in capsys.readouterr().err
