import json

import pytest

from asgi_sidecar.cli import main
from asgi_sidecar.parsing import build_parser
from asgi_sidecar.settings import SidecarSettings
from asgi_sidecar.sysctls import SysctlError, apply_sysctls, parse_assignment


def test_every_setting_has_a_flag_with_its_description():
    help_text = build_parser()._subparsers._group_actions[0].choices["proxy"].format_help()  # type: ignore[union-attr]
    for name in SidecarSettings.model_fields:
        assert "--" + name.replace("_", "-") in help_text


def test_check_config_prints_normalised_settings(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("limitConcurrency: 5\n")
    assert main(["check-config", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["limitConcurrency"] == 5


def test_check_config_reports_bad_files(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("limitConcurrency: -5\n")
    assert main(["check-config", str(path)]) == 2
    assert "limit_concurrency" in capsys.readouterr().err


def test_proxy_refuses_invalid_flags_before_binding(capfd):
    # The validating child prints on the stderr it shares with this process.
    assert main(["proxy", "--timeout-keep-alive", "-1"]) == 2
    assert "command line: timeout_keep_alive" in capfd.readouterr().err


def test_proxy_refuses_unknown_flags_with_the_usage(capfd):
    assert main(["proxy", "--timeout-keepalive", "5"]) == 2
    err = capfd.readouterr().err
    assert "usage: asgi-sidecar" in err
    assert "unrecognized arguments: --timeout-keepalive" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("net.core.somaxconn", "NAME=VALUE"),
        ("kernel.panic=1", "not allowed"),
        ("net.core.somaxconn=abc", "integer"),
        ("net.core.somaxconn=0", "out of range"),
    ],
)
def test_sysctl_assignments_are_checked(text, message):
    with pytest.raises(SysctlError, match=message):
        parse_assignment(text)


def test_sysctl_writes_and_verifies(tmp_path):
    target = tmp_path / "net" / "core" / "somaxconn"
    target.parent.mkdir(parents=True)
    target.write_text("4096\n")
    assert apply_sysctls(["net.core.somaxconn=8192"], root=tmp_path) == [
        "net.core.somaxconn = 8192"
    ]
    assert target.read_text() == "8192\n"


def test_proxy_help_is_printed_with_every_setting(capfd):
    assert main(["proxy", "--help"]) == 0
    out = capfd.readouterr().out
    assert "usage: asgi-sidecar proxy" in out
    for name in SidecarSettings.model_fields:
        assert "--" + name.replace("_", "-") in out
