import subprocess
import sys

import pytest

from asgi_sidecar.configuring import (
    ConfigError,
    build_settings,
    dump_settings,
    load_settings,
    parse_config_text,
    values_from_environment,
)


def test_precedence_is_defaults_file_environment_flags():
    settings = build_settings(
        file_values={"limit_concurrency": 1, "backlog": 10, "queue_depth": 3},
        environ={"ASGI_SIDECAR_LIMIT_CONCURRENCY": "2", "ASGI_SIDECAR_BACKLOG": "20"},
        flags={"limit_concurrency": "3"},
    )
    assert settings.limit_concurrency == 3
    assert settings.backlog == 20
    assert settings.queue_depth == 3
    assert settings.timeout_keep_alive == 75


def test_yaml_and_json_files_with_camel_case(tmp_path):
    yaml_file = tmp_path / "a.yaml"
    yaml_file.write_text("timeoutKeepAlive: 90\nmaxConnections: 500\n")
    json_file = tmp_path / "a.json"
    json_file.write_text('{"timeoutKeepAlive": 90, "max_connections": 500}')
    assert load_settings(yaml_file, {}, {}) == load_settings(json_file, {}, {})


def test_a_json_document_follows_json_and_never_loads_yaml():
    # What the operator writes is JSON: read by JSON's rules (1e3 is a number; YAML 1.1
    # reads a string), and without importing PyYAML, which a sidecar then never holds.
    probe = (
        "import sys; from asgi_sidecar.configuring import parse_config_text as parse;"
        "print(parse(sys.argv[1], 'x'), 'yaml' in sys.modules)"
    )
    document = '{"timeoutKeepAlive": 1e3}'
    out = subprocess.run(
        [sys.executable, "-c", probe, document],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["{'timeout_keep_alive':", "1000.0}", "False"]
    assert parse_config_text("timeoutKeepAlive: 1e3", "x") == {"timeout_keep_alive": "1e3"}
    with_bom = parse_config_text('\ufeff{"timeoutKeepAlive": 1e3}', "x")
    assert with_bom == {"timeout_keep_alive": 1000.0}


def test_unknown_key_is_named_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown setting 'limitConcurency'.*limit_concurrency"):
        parse_config_text("limitConcurency: 3", "config file x")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [", "not valid YAML or JSON"),
        ("- 1\n- 2", "expected a mapping"),
        ("[1, 2]", "expected a mapping"),
        ('{"timeoutKeepAlive": 9', "not valid YAML or JSON"),
        ("[" * 100_000, "nested too deeply"),
        ("a: " + "1" * 5000, "not valid YAML or JSON"),  # past Python's int digit limit
    ],
)
def test_broken_files_get_clear_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config_text(text, "config file x")


def test_invalid_value_names_source_and_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("timeoutKeepAlive: -5\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, {}, {})
    assert str(info.value).startswith(f"config file {path}: timeout_keep_alive:")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml", {}, {})


def test_empty_file_means_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_settings(path, {}, {}).backlog == 2048


def test_environment_null_words_clear_nullable_settings():
    values = values_from_environment(
        {"ASGI_SIDECAR_LIMIT_CONCURRENCY": "none", "ASGI_SIDECAR_PORT": " 81 ", "OTHER": "x"}
    )
    assert values == {"limit_concurrency": None, "port": "81"}
    assert (
        build_settings(environ={"ASGI_SIDECAR_LIMIT_CONCURRENCY": "null"}).limit_concurrency is None
    )


def test_dump_round_trips():
    settings = build_settings(flags={"limit_concurrency": "9", "max_connections": "100"})
    assert build_settings(file_values=parse_config_text(dump_settings(settings), "x")) == settings
