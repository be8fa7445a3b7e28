"""Settings validated in the real child process, at start-up and on a reload."""

import asyncio
import json
import os
from pathlib import Path

import pytest

import asgi_sidecar
from asgi_sidecar import reloading, validating
from asgi_sidecar.reloading import ConfigWatcher
from asgi_sidecar.validated import ConfigError
from asgi_sidecar.validating import ValidationUnavailableError


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


@pytest.mark.parametrize(
    ("child", "message"),
    [
        (("/bin/sh", "-c", "echo broken >&2; exit 3"), r"failed \(exit 3\): broken"),
        (("/bin/sh", "-c", "echo not json"), "no answer from the validating process"),
        (("/bin/sh", "-c", 'echo \'{"settings": {"port": 1}}\''), "no answer"),
        (("/nonexistent/python",), "cannot start the validating process"),
    ],
)
def test_a_child_that_gives_no_verdict_is_told_apart_from_a_refusal(monkeypatch, child, message):
    monkeypatch.setattr(validating, "CHILD", child)
    with pytest.raises(ValidationUnavailableError, match=message):
        reload("limitConcurrency: 9\n")


def test_a_child_that_hangs_is_killed_and_gives_no_verdict(monkeypatch):
    monkeypatch.setattr(validating, "CHILD", ("/bin/sleep", "30"))
    monkeypatch.setattr(validating, "TIMEOUT", 0.5)
    with pytest.raises(ValidationUnavailableError, match="not validated within"):
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


def test_a_text_the_child_gave_no_verdict_on_is_tried_again_later(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("limitConcurrency: 5\n")
    applied, counted = [], []
    watcher = ConfigWatcher(path, {}, {}, applied.append, counted.append)
    path.write_text("limitConcurrency: 6\n")
    real_child = validating.CHILD

    async def steps() -> None:
        monkeypatch.setattr(validating, "CHILD", ("/bin/sh", "-c", "exit 1"))
        assert await watcher.check() is None  # no verdict: counted, not forgotten
        monkeypatch.setattr(validating, "CHILD", real_child)
        for _ in range(reloading.RETRY_POLLS):
            assert await watcher.check() is None  # waiting before the retry
        settings = await watcher.check()
        assert settings is not None
        assert settings.limit_concurrency == 6

    asyncio.run(steps())
    assert counted == ["invalid", "applied"]
    assert len(applied) == 1


def test_help_asked_for_by_a_prefix_of_help_is_printed(capfd):
    assert validating.at_startup(["proxy", "--hel"]) == 0
    assert "--timeout-keep-alive" in capfd.readouterr().out


def test_a_startup_child_killed_by_a_signal_ends_the_sidecar_with_a_message(monkeypatch, capfd):
    monkeypatch.setattr(validating, "CHILD", ("/bin/sh", "-c", "kill -9 $$"))
    assert validating.at_startup(["proxy"]) == 1
    assert "killed by signal 9" in capfd.readouterr().err


def test_the_child_is_pointed_at_the_package_this_process_imported(tmp_path, monkeypatch):
    # -P keeps the working directory off the child's path; a source tree run as
    # ``python -m asgi_sidecar`` is found through PYTHONPATH instead, before what was there.
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    paths = validating._child_env()["PYTHONPATH"].split(os.pathsep)
    assert paths == [str(Path(asgi_sidecar.__file__).resolve().parent.parent), "/elsewhere"]
    monkeypatch.chdir(tmp_path)
    startup = validating.at_startup(["proxy", "--port", "8081"])
    assert not isinstance(startup, int)
    assert startup.settings.port == 8081


def test_a_startup_child_that_hangs_is_killed_and_the_sidecar_exits(monkeypatch, capfd):
    monkeypatch.setattr(validating, "CHILD", ("/bin/sleep", "30"))
    monkeypatch.setattr(validating, "TIMEOUT", 0.5)
    assert validating.at_startup(["proxy"]) == 1
    assert "not validated within" in capfd.readouterr().err
