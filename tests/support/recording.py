"""The test app (``tests.support.apps``) behind a recorder of every request it reads.

Run on uvicorn like the plain app (``upstream_app(app="tests.support.recording:app")``),
it notes each HTTP request as the upstream read it: method, raw target, version and
header fields as soon as the app is called, then the body as it arrives, and at the
end whether the body arrived whole (``complete``) or the sidecar went away first
(``aborted``).  Only then does the app answer, so a client that has its response
knows the note is written.

``GET /__recorded``, sent to the upstream directly, returns the notes as JSON and
forgets them; that request is not noted itself.  ``?until=started`` waits for a first
note and keeps the notes; ``?until=ended`` waits until there is a note and every note
has ended.  Waits are events in the app, bounded by ``WAIT_LIMIT``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.request
from typing import Any

from tests.support import apps

RECORDED_PATH = "/__recorded"
WAIT_LIMIT = 10.0  # seconds a waiting /__recorded holds before it answers anyway
BODY_KEPT = 4096  # body bytes kept as text in a note; longer bodies by size and digest
_NOTES: list[dict[str, Any]] = []
_CHANGED: list[asyncio.Event] = []  # the event that fires at the next change of a note


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def _changed() -> None:
    for event in _CHANGED:
        event.set()
    _CHANGED.clear()


def _ended(note: dict[str, Any]) -> bool:
    return bool(note["complete"] or note["aborted"])


async def _wait(until: str) -> None:
    def ready() -> bool:
        if until == "started":
            return bool(_NOTES)
        if until == "ended":
            return bool(_NOTES) and all(_ended(note) for note in _NOTES)
        return True

    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while not ready() and loop.time() < deadline:
        event = asyncio.Event()
        _CHANGED.append(event)
        try:
            await asyncio.wait_for(event.wait(), deadline - loop.time())
        except TimeoutError:
            return


async def _answer_recorded(scope: Any, send: Any) -> None:
    query = _text(scope["query_string"])
    until = query.partition("until=")[2].split("&")[0]
    await _wait(until)
    body = json.dumps(_NOTES).encode()
    if until != "started":
        _NOTES.clear()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await apps.app(scope, receive, send)
        return
    if scope["path"] == RECORDED_PATH:
        await _answer_recorded(scope, send)
        return
    query = scope["query_string"]
    note: dict[str, Any] = {
        "method": scope["method"],
        "target": _text(scope["raw_path"]) + ("?" + _text(query) if query else ""),
        "version": scope["http_version"],
        "headers": [[_text(name), _text(value)] for name, value in scope["headers"]],
        "body": "",
        "body_size": 0,
        "body_sha256": "",
        "complete": False,
        "aborted": False,
    }
    _NOTES.append(note)
    _changed()
    # Read the whole body first, so the note is complete before the app answers.
    messages = []
    body = b""
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            note["aborted"] = True  # the client (the sidecar) went away mid-request
            break
        body += message.get("body", b"")
        if not message.get("more_body"):
            note["complete"] = True
            break
    note["body"] = _text(body[:BODY_KEPT])
    note["body_size"] = len(body)
    note["body_sha256"] = hashlib.sha256(body).hexdigest()
    _changed()
    if note["aborted"]:
        return
    replay = iter(messages)

    async def replayed() -> Any:
        return next(replay, None) or await receive()

    await apps.app(scope, replayed, send)


def recorded(port: int, until: str = "") -> list[dict[str, Any]]:
    """What the upstream on ``port`` read since the last call (asked directly, not proxied);
    ``until``: "started" or "ended", to wait for that first (see the module docstring)."""
    url = f"http://127.0.0.1:{port}{RECORDED_PATH}" + (f"?until={until}" if until else "")
    with urllib.request.urlopen(url, timeout=WAIT_LIMIT + 5) as response:
        notes: list[dict[str, Any]] = json.loads(response.read())
    return notes
