"""AWS's HTTP desync corpus (``hack.desynccorpus``), replayed against the sidecar.

Every case of the ``http_desync_guardian`` crate is fetched with cargo at test time
and sent, on a raw socket, to a real sidecar in front of a real uvicorn running the
recording test app (``tests.support.recording``).  Each case ends one of two ways:

* **refused**: the sidecar answers 4xx or 5xx itself, closes the connection, and the
  upstream noted nothing (checked after a fence, as in ``test_rfc9112_requests``);
* **forwarded**, and then read the same way by the upstream: the upstream noted the
  case with the method, the origin-form target (an absolute-form target's path, its
  authority as Host), the version and exactly the header fields the client sent,
  (values without surrounding whitespace, which is no part of a value), less
  hop-by-hop ones and plus the forwarding ones (``X-Forwarded-For`` and
  ``-Proto``, ``Transfer-Encoding: chunked``, the Host an HTTP/1.0 request gets), and
  the body the client framed, whole.  After the case the client sends a canary
  request on the same connection; the upstream must note it as a request of its own,
  after the case, so the two ends agree where the case ended.

The client frames a body as a strict reader would: with a field named exactly
Transfer-Encoding, one chunk; else with one Content-Length of digits, that many
bytes; else none.  Every Severe case must be refused.  The corpus's cases mostly
lack a Host field, which HTTP/1.1 requires (so the sidecar refuses them all as
``bad_host``); each is replayed as shipped and again with ``Host: corpus.test``
added, so that the other rules are reached too.  The counts per tier are printed.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from hack import desynccorpus
from hack.desynccorpus import TIERS, Case
from tests.support.processes import Sidecar, sidecar, upstream_app
from tests.support.rawhttp import RawClient, Response
from tests.support.recording import recorded

CANARY = b"GET /__canary HTTP/1.1\r\nHost: canary.test\r\n\r\n"
FENCE = b"GET /__fence HTTP/1.1\r\nHost: fence.test\r\n\r\n"
ADDED_HOST = "corpus.test"
CHUNKED_BODY, CHUNKED_PAYLOAD = b"5\r\nhello\r\n0\r\n\r\n", b"hello"
MAX_BODY = 16 * 1024 * 1024  # a longer Content-Length gets no body (the overflow case)
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
NEVER_DROPPED = {"close", "keep-alive", "upgrade", "content-length", "host"}
EXPECTED_TIERS = {"Severe": 58, "Ambiguous": 58, "Acceptable": 15, "Compliant": 28}


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    return desynccorpus.cases()


@pytest.fixture(scope="module")
def up() -> Iterator[int]:
    with upstream_app(app="tests.support.recording:app") as port:
        yield port


@pytest.fixture(scope="module")
def sc(up, tmp_path_factory) -> Iterator[Sidecar]:
    with sidecar(up, tmp_path=tmp_path_factory.mktemp("desync")) as handle:
        yield handle


@dataclass
class Outcome:
    case: Case
    verdict: str = ""  # "refused" or "forwarded"
    status: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sent:
    """A case as the client sends it, and what it means by it."""

    head: bytes
    fields: list[tuple[str, str]]  # name and value (OWS trimmed), in order
    body: bytes  # the framed body
    payload: bytes  # what that body carries


def as_sent(case: Case, with_host: bool) -> Sent:
    head = case.head()
    fields = [(h.name, h.value.strip(" \t")) for h in case.headers]
    if with_host and not any(name.lower() == "host" for name, _ in fields):
        line, _, rest = head.partition(b"\r\n")
        head = line + f"\r\nHost: {ADDED_HOST}".encode() + b"\r\n" + rest
        fields.insert(0, ("Host", ADDED_HOST))
    names = [name.lower() for name, _ in fields]
    lengths = [value for name, value in fields if name.lower() == "content-length"]
    if "transfer-encoding" in names:
        return Sent(head, fields, CHUNKED_BODY, CHUNKED_PAYLOAD)
    if len(lengths) == 1 and lengths[0].isascii() and lengths[0].isdigit():
        size = int(lengths[0])
        if size <= MAX_BODY:
            return Sent(head, fields, b"x" * size, b"x" * size)
    return Sent(head, fields, b"", b"")


def origin_form(uri: str) -> tuple[str, str | None]:
    """The target the upstream should see, and the Host an absolute form sets."""
    scheme, sep, rest = uri.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        path = rest[cut:]
        return (path if path.startswith("/") else "/" + path), rest[:cut]
    return uri, None


def expected_fields(case: Case, sent: Sent, up: int) -> list[tuple[str, str]]:
    """The fields the upstream should read: the client's, less hop-by-hop, plus forwarding."""
    listed = {
        token.strip(" \t").lower()
        for name, value in sent.fields
        if name.lower() == "connection"
        for token in value.split(",")
    } - NEVER_DROPPED
    _, authority = origin_form(case.uri)
    fields = []
    forwarded_for = []
    for name, value in sent.fields:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in listed:
            continue
        if lname == "x-forwarded-for":
            forwarded_for.append(value)
        elif lname == "host" and authority is not None:
            continue
        else:
            fields.append((lname, value))
    forwarded_for.append("127.0.0.1")
    fields.append(("x-forwarded-for", ", ".join(forwarded_for)))
    if not any(name == "x-forwarded-proto" for name, _ in fields):
        fields.append(("x-forwarded-proto", "http"))
    if any(name.lower() == "transfer-encoding" for name, _ in sent.fields):
        fields.append(("transfer-encoding", "chunked"))
    if authority is not None:
        fields.append(("host", authority))
    elif not any(name == "host" for name, _ in fields):
        fields.append(("host", f"127.0.0.1:{up}"))  # HTTP/1.0 without Host
    return sorted(fields)


def check_forwarded(case: Case, sent: Sent, note: dict[str, Any], up: int) -> list[str]:
    problems = []
    target, _ = origin_form(case.uri)
    got = {
        "method": note["method"],
        "target": note["target"],
        "body": (note["body_size"], note["body_sha256"]),
        "complete": note["complete"],
    }
    want = {
        "method": case.method,
        "target": target,
        "body": (len(sent.payload), hashlib.sha256(sent.payload).hexdigest()),
        "complete": True,
    }
    for key, value in want.items():
        if got[key] != value:
            problems.append(f"upstream read {key} {got[key]!r}, the client sent {value!r}")
    # Surrounding whitespace is not part of a field value (RFC 9112 5.1).
    fields = sorted((name, value.strip(" \t")) for name, value in note["headers"])
    if fields != expected_fields(case, sent, up):
        problems.append(f"upstream read fields {fields!r}")
    return problems


def fenced(sc: Sidecar, up: int) -> list[dict[str, Any]]:
    with RawClient(sc.port, timeout=5) as c:
        c.send(FENCE)
        assert c.read_response().status == 200
    notes = recorded(up, until="ended")
    assert [n["target"] for n in notes][-1:] == ["/__fence"], notes
    return notes[:-1]


def replay(sc: Sidecar, up: int, case: Case, with_host: bool) -> Outcome:
    outcome = Outcome(case)
    sent = as_sent(case, with_host)
    responses: list[Response] = []
    closed = False
    with RawClient(sc.port, timeout=5) as c:
        try:
            c.send(sent.head + sent.body + CANARY)
            responses.append(c.read_response(case.method, until_close=False))
            if responses[0].header("connection") == "close":
                closed = c.wait_closed() == b""
            else:
                responses.append(c.read_response(until_close=False))
        except (OSError, AssertionError) as exc:
            outcome.problems.append(f"client: {exc!r}")
    notes = fenced(sc, up)
    outcome.status = responses[0].status if responses else 0
    if not notes:
        outcome.verdict = "refused"
        if not (400 <= outcome.status < 600 and closed):
            outcome.problems.append(f"refused with {outcome.status}, closed: {closed}")
        return outcome
    outcome.verdict = "forwarded"
    if case.tier == "Severe":
        outcome.problems.append("a Severe case was forwarded")
    canary = [n for n in notes[1:] if n["target"] == "/__canary"]
    if [r.status for r in responses] != [200] * (1 + len(canary)) or len(notes) != 1 + len(canary):
        outcome.problems.append(f"answers {[r.status for r in responses]} for notes {notes}")
    if not closed and not canary:
        outcome.problems.append("the canary after the case was not read as a request")
    outcome.problems += check_forwarded(case, sent, notes[0], up)
    return outcome


def table(outcomes: list[Outcome]) -> str:
    counts = Counter((o.case.tier, o.verdict) for o in outcomes)
    lines = [f"{'tier':12}{'cases':>8}{'refused':>10}{'forwarded':>11}"]
    for tier in TIERS:
        refused, forwarded = counts[tier, "refused"], counts[tier, "forwarded"]
        lines.append(f"{tier:12}{refused + forwarded:8}{refused:10}{forwarded:11}")
    return "\n".join(lines)


def test_the_corpus_has_its_documented_cases(corpus):
    assert Counter(case.tier for case in corpus) == EXPECTED_TIERS
    assert all(case.head().endswith(b"\r\n\r\n") for case in corpus)


@pytest.mark.parametrize("with_host", [False, True], ids=["as-shipped", "with-host"])
def test_severe_cases_are_refused_and_the_rest_read_the_same_upstream(
    sc, up, corpus, with_host, capsys
):
    outcomes = [replay(sc, up, case, with_host) for case in corpus]
    with capsys.disabled():
        print(f"\ndesync corpus, {'with Host added' if with_host else 'as shipped'}:")
        print(table(outcomes))
    failed = [f"{o.case.ident} ({o.case.tier}): {o.problems}" for o in outcomes if o.problems]
    assert not failed, "\n".join(failed)
    severe = [o for o in outcomes if o.case.tier == "Severe"]
    assert {o.verdict for o in severe} == {"refused"}
    assert sc.proc.poll() is None
    assert "Traceback" not in sc.log()
