"""Embedded mode's per-connection bookkeeping (``guarding.Guard``), on its own clock."""

from __future__ import annotations

import httptools
import pytest

from asgi_sidecar.admitting import Admission
from asgi_sidecar.guarding import Guard
from asgi_sidecar.refusing import RequestRefusedError
from asgi_sidecar.settings import SidecarSettings
from asgi_sidecar.stats import Stats

HOST = [(b"host", b"example.test")]


def parser_of(raw: bytes) -> httptools.HttpRequestParser:
    """httptools' parser with the head ``raw`` fed in, as uvicorn's is at the hook."""
    parser = httptools.HttpRequestParser(object())
    parser.feed_data(raw)
    return parser


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def guard(**settings: object) -> tuple[Guard[str, str], Clock, Stats]:
    clock, stats = Clock(), Stats()
    values = SidecarSettings(**{"limit_concurrency": 1, **settings}).validated()
    admission: Admission[str] = Admission(values, stats, clock, lambda _: True)
    return Guard(values, stats, admission, clock), clock, stats


def test_an_idle_connection_gets_the_keep_alive_deadline_and_a_head_the_header_deadline():
    g, clock, _ = guard(timeout_keep_alive=7.5, header_timeout=2.0)
    assert g.went_idle("a") == 100.0  # when it went idle, for the idle gap
    assert g.idle.pop_expired(107.4) == []
    g.request_begins("a", reused=False, idle_since=100.0)
    assert "a" not in g.idle  # a request in progress is not idle
    assert g.heads.pop_expired(101.9) == []
    clock.now = 101.0
    g.went_idle("b")
    g.request_begins("b", reused=False, idle_since=101.0)
    assert g.heads.pop_expired(102.0) == ["a"]
    g.head_complete("b", parser_of(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"), b"/", HOST)
    assert len(g.heads) == 0


def test_a_complete_head_must_pass_the_proxys_request_rules():
    g, _, _ = guard()
    g.request_begins("a", reused=False, idle_since=100.0)
    with pytest.raises(RequestRefusedError) as refused:
        g.head_complete("a", parser_of(b"GET / HTTP/1.1\r\n\r\n"), b"/", [])  # no Host
    assert refused.value.status == 400
    assert len(g.heads) == 0  # refused or not, its header deadline is over


def test_a_reused_connection_counts_the_reuse_and_its_idle_gap():
    g, clock, stats = guard()
    idle_since = g.went_idle("a")
    g.request_begins("a", reused=False, idle_since=idle_since)
    assert (stats.keepalive_reused, stats.idle_gap.count) == (0, 0)
    idle_since = g.went_idle("a")
    clock.now += 3.0
    g.request_begins("a", reused=True, idle_since=idle_since)
    assert (stats.keepalive_reused, stats.idle_gap.count, stats.idle_gap.sum) == (1, 1, 3.0)
    # A pipelined request begins with no idle period before it: reused, no gap.
    clock.now += 50.0
    g.request_begins("a", reused=True, idle_since=idle_since)
    assert (stats.keepalive_reused, stats.idle_gap.count) == (2, 1)


def test_closing_forgets_the_connection_and_counts_the_reason():
    g, _, stats = guard()
    g.went_idle("a")
    g.request_begins("b", reused=False, idle_since=100.0)
    g.closed("a", "idle_timeout")
    g.closed("b", "client_closed")
    assert (len(g.idle), len(g.heads)) == (0, 0)
    assert stats.connections_closed == {"idle_timeout": 1, "client_closed": 1}


def test_an_answered_request_is_counted_by_status_and_frees_its_slot():
    g, clock, stats = guard()
    assert g.admission.try_acquire()
    assert not g.admission.try_acquire()
    started = g.admitted(queued_at=-1.0)
    assert stats.queue_wait.count == 0  # it never waited
    clock.now += 0.25
    g.answered(404, started)
    assert stats.requests == {404: 1}
    assert (stats.request_duration.count, stats.request_duration.sum) == (1, 0.25)
    assert g.admission.try_acquire()  # the slot is free again
    g.admitted(queued_at=clock.now - 0.5)
    assert (stats.queue_wait.count, stats.queue_wait.sum) == (1, 0.5)
