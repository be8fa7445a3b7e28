"""Settings validated in the real child process, at start-up and on a reload."""

import asyncio
import json

import pytest

from asgi_sidecar import validating
from asgi_sidecar.reloading import ConfigWatcher
from asgi_sidecar.validated import ConfigError


def test_startup_gives_the_validated_settings_flags_and_options(tmp_path, monkeypatch):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"limitConcurrency": 7, "timeoutKeepAlive": 61}))
    monkeypatch.setenv("ASGI_SIDECAR_QUEUE_DEPTH", "3")
    argv = ["serve", "app:x", "--config", str(config), "--timeout-keep-alive", "80"]
    startup = validating.at_startup([*argv, "--log-format", "json"])
    assert not isinstance(startup, int)
    assert (startup.command, startup.app, startup.config) == ("serve", "app:x", config)
    assert startup.log_format == "json"
    assert startup.flags == {"timeout_keep_alive": "80"}
    settings = startup.settings
    assert (settings.limit_concurrency, settings.queue_depth) == (7, 3)
    assert settings.timeout_keep_alive == 80.0  # the flag over the file


def test_startup_refusals_are_printed_by_the_child_with_its_exit_code(tmp_path, capfd):
    config = tmp_path / "c.yaml"
    config.write_text("backlog: lots\n")
    assert validating.at_startup(["proxy", "--config", str(config)]) == 2
    assert f"config file {config}: backlog:" in capfd.readouterr().err


def reload(text: str, **flags: str):
    return asyncio.run(validating.on_reload(text, "config file c", {}, flags))


def test_a_reload_validates_the_text_under_the_same_flags():
    settings = reload("limitConcurrency: 9\nretryAfter: 4\n", retry_after="2")
    assert (settings.limit_concurrency, settings.retry_after) == (9, 2)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("limitConcurrency: 0\n", "config file c: limit_concurrency: Input should be greater"),
        ("[1, 2]", "config file c: expected a mapping of settings, got list"),
        ("timeoutKeepalive: 5\n", "config file c: unknown setting 'timeoutKeepalive'"),
    ],
)
def test_a_reload_refuses_what_the_model_refuses(text, message):
    with pytest.raises(ConfigError, match=message):
        reload(text)


def test_a_child_that_fails_is_a_refusal_not_a_crash(monkeypatch):
    monkeypatch.setattr(validating, "CHILD", ("/bin/sh", "-c", "echo broken >&2; exit 3"))
    with pytest.raises(ConfigError, match=r"failed \(exit 3\): broken"):
        reload("limitConcurrency: 9\n")


def test_a_child_that_hangs_is_killed_and_refused(monkeypatch):
    monkeypatch.setattr(validating, "CHILD", ("/bin/sleep", "30"))
    monkeypatch.setattr(validating, "TIMEOUT", 0.5)
    with pytest.raises(ConfigError, match="not validated within"):
        reload("limitConcurrency: 9\n")


def test_the_watcher_applies_a_valid_file_and_keeps_the_settings_on_a_bad_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("limitConcurrency: 5\n")
    applied, counted = [], []
    watcher = ConfigWatcher(path, {}, {}, applied.append, counted.append)

    async def steps() -> list[object]:
        results = [await watcher.check()]  # unchanged since the watcher was made
        path.write_text("limitConcurrency: 6\n")
        results.append(await watcher.check())
        path.write_bytes(b"limitConcurrency: \xff\n")
        results.append(await watcher.check())
        path.write_text("limitConcurrency: -1\n")
        results.append(await watcher.check())
        return results

    results = asyncio.run(steps())
    assert results[0] is None
    assert results[2:] == [None, None]
    assert [s.limit_concurrency for s in applied] == [6]
    assert counted == ["applied", "invalid", "invalid"]


def test_a_startup_child_that_hangs_is_killed_and_the_sidecar_exits(monkeypatch, capfd):
    monkeypatch.setattr(validating, "CHILD", ("/bin/sleep", "30"))
    monkeypatch.setattr(validating, "TIMEOUT", 0.5)
    assert validating.at_startup(["proxy"]) == 1
    assert "not validated within" in capfd.readouterr().err
