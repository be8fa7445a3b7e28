"""The slow tuning loop's decision: ``decide(history, current, bounds) -> Decision``. Pure.

Each interval the operator aggregates the sidecars' metrics into an
``Observation`` (per-Pod averages, see ``observing.py``); this module turns the
recent observations into new settings.  No I/O, no clock.

**limitConcurrency** aims at the knee of the app's latency curve (see
``kneefinding.py``); changes below ``HYSTERESIS`` are not made, steps are
bounded per interval, and everything stays within the AsgiServer's bounds.

**backlog** doubles (within the ceiling) when the sidecar's own accept queue runs
nearly full (ListenOverflows are namespace-wide and count the app's listener too,
so they are only reported alongside); it needs new Pods
when it passes somaxconn, so at most one such rollout per ``ROLLOUT_COOLDOWN``
intervals, and only in a sysctl mode that can raise somaxconn.

**timeoutKeepAlive** rises when the server closes idle connections that clients
then re-open (idle closes with as many new connections, and reuse right up to
the timeout), and falls when idle connections crowd ``maxConnections`` with
little reuse.

Stale or missing metrics freeze everything: the decision keeps every setting and
says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from asgi_operator.kneefinding import HYSTERESIS, WINDOW, decide_limit
from asgi_operator.observations import (
    BACKLOG,
    KEEP_ALIVE,
    LIMIT,
    Bounds,
    Change,
    Current,
    Decision,
    Observation,
    saturated,
)

__all__ = [
    "HYSTERESIS",
    "WINDOW",
    "Bounds",
    "Change",
    "Current",
    "Decision",
    "Observation",
    "decide",
    "decide_backlog",
    "decide_keep_alive",
    "decide_limit",
    "saturated",
]

ROLLOUT_COOLDOWN = 10  # intervals between two backlog rollouts
KEEP_ALIVE_STEP = 1.5
KEEP_ALIVE_COOLDOWN = 2


def decide_backlog(
    history: Sequence[Observation],
    current: Current,
    bounds: Bounds,
    past: Sequence[tuple[int, Change]],
    interval_index: int,
) -> tuple[int, str] | None:
    now = history[-1]
    effective = now.backlog_effective or current.backlog
    # ListenOverflows count every listener of the Pod's network namespace (the app's too),
    # so only the sidecar's own accept queue decides; overflows are reported alongside.
    pressure = now.accept_queue_full > 0 or now.accept_queue_peak >= 0.8 * effective
    if not pressure:
        return None
    new = min(current.backlog * 2, bounds.backlog_max)
    if new <= current.backlog:
        return None
    why = (
        f"the accept queue was nearly full {now.accept_queue_full:.0%} of the time"
        f" (peak {now.accept_queue_peak:.0f} of {effective});"
        f" {now.listen_overflows:.1f} listen overflows/s in the namespace"
    )
    needs_pods = current.somaxconn is None or new > current.somaxconn
    if needs_pods and not current.can_raise_somaxconn and current.somaxconn is not None:
        return None
    if needs_pods and current.somaxconn is None:
        return None  # sysctls.mode none: somaxconn cannot follow; the status reports it
    recent = [i for i, c in past if c.setting == BACKLOG and interval_index - i < ROLLOUT_COOLDOWN]
    if needs_pods and recent:
        return None
    return new, f"{why}: doubling the backlog"


def decide_keep_alive(
    history: Sequence[Observation],
    current: Current,
    bounds: Bounds,
    past: Sequence[tuple[int, Change]],
    interval_index: int,
) -> tuple[float, str] | None:
    now = history[-1]
    recent = [
        i for i, c in past if c.setting == KEEP_ALIVE and interval_index - i < KEEP_ALIVE_COOLDOWN
    ]
    if recent:
        return None
    keep = current.keep_alive
    reconnecting = (
        now.idle_closes > 0
        and now.new_connections >= 0.5 * now.idle_closes
        and now.reuse_near_timeout >= 0.1
    )
    if reconnecting and keep < bounds.keep_alive_max:
        new = min(keep * KEEP_ALIVE_STEP, bounds.keep_alive_max)
        return new, (
            f"{now.idle_closes:.2f} idle closes/s per Pod while clients open"
            f" {now.new_connections:.2f} new connections/s and "
            f"{now.reuse_near_timeout:.0%} of reuses come near the timeout: clients come back"
            " just after the server gave up"
        )
    crowded = (
        now.max_connections is not None
        and now.idle_connections >= 0.8 * now.max_connections
        and now.reuse_ratio < 0.1
    )
    if crowded and keep > bounds.keep_alive_min:
        new = max(keep / KEEP_ALIVE_STEP, bounds.keep_alive_min)
        return new, (
            f"{now.idle_connections:.0f} idle connections crowd maxConnections"
            f" {now.max_connections} with {now.reuse_ratio:.0%} reuse"
        )
    return None


def decide(
    history: Sequence[Observation],
    current: Current,
    bounds: Bounds,
    past: Sequence[tuple[int, Change]] = (),
) -> Decision:
    """New settings from the observations so far (oldest first) and past changes."""
    if not history or history[-1].stale:
        return Decision(
            limit=current.limit,
            backlog=current.backlog,
            keep_alive=current.keep_alive,
            frozen=history[-1].stale if history else "no metrics yet",
        )
    index = len(history)
    changes: list[Change] = []
    notes: list[str] = []
    limit = current.limit
    start = limit if limit is not None else bounds.limit_max
    new_limit, why = decide_limit(history, start, bounds)
    if new_limit != start or limit is None:
        changes.append(Change(LIMIT, limit, new_limit, why))
        limit = new_limit
    else:
        notes.append(why)
    backlog = current.backlog
    grown = decide_backlog(history, current, bounds, past, index)
    if grown is not None:
        changes.append(Change(BACKLOG, backlog, grown[0], grown[1]))
        backlog = grown[0]
    keep_alive = current.keep_alive
    moved = decide_keep_alive(history, current, bounds, past, index)
    if moved is not None and not math.isclose(moved[0], keep_alive):
        changes.append(Change(KEEP_ALIVE, keep_alive, moved[0], moved[1]))
        keep_alive = moved[0]
    return Decision(
        limit=limit,
        backlog=backlog,
        keep_alive=keep_alive,
        changes=tuple(changes),
        notes=tuple(notes),
    )
