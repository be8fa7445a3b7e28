"""The operator's name for kopf where kopf's guess fails: a uid without a passwd entry."""

from __future__ import annotations

import getpass

from asgi_operator import running


def test_kopfs_own_name_is_kept_when_it_can_find_one(monkeypatch) -> None:
    monkeypatch.delenv("POD_ID", raising=False)
    monkeypatch.setattr(getpass, "getuser", lambda: "someone")
    assert running.identity() is None
    monkeypatch.setenv("POD_ID", "asgi-operator-0")
    assert running.identity() is None


def test_a_uid_without_a_name_still_gets_an_identity(monkeypatch) -> None:
    def nobody() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.delenv("POD_ID", raising=False)
    monkeypatch.setattr(getpass, "getuser", nobody)
    name = running.identity()
    assert name is not None
    assert name.startswith("uid-")
