"""Deadlines for many connections without a timer per connection.

One periodic sweep replaces a ``call_later`` per request: connections are kept
in insertion-ordered dicts, so the oldest entry is always first and a sweep
stops at the first deadline still ahead.  Idle connections double as the
least-recently-used list that ``max_connections`` evicts from.  Pure: times are
passed in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Generic, TypeVar

K = TypeVar("K")

SWEEP_INTERVAL: Final = 0.1  # seconds between sweeps; every deadline is honoured to within this
# A connection idle this long gives up its request parser until bytes come again (the
# sweeps of both modes): one that waits this long between requests makes at most a few a
# second, so a new parser for each is a small cost, against about 0.9 KiB per idle connection.
REST_AFTER: Final = 0.5


class Deadlines(Generic[K]):
    """Keys with deadlines, oldest insertion first.

    Deadlines are usually in insertion order (one timeout for all).  When a
    timeout is lowered, later keys may expire before earlier ones; ``unordered``
    makes the sweep look at every key until the old entries are gone.
    """

    __slots__ = ("_entries", "_full_scan_until")

    def __init__(self) -> None:
        # A plain dict keeps insertion order and is cheaper than OrderedDict here;
        # re-adding a key (pop, then set) moves it to the end.
        self._entries: dict[K, float] = {}
        self._full_scan_until = float("-inf")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """The keys, oldest insertion first (do not add or remove while iterating)."""
        return iter(self._entries)

    # ``in`` and ``del`` rather than ``dict.pop``: mypyc has primitives for the first two,
    # while ``pop`` is a generic method call (a method lookup, then a call), about twice
    # the instructions of both on this path.

    def add(self, key: K, deadline: float) -> None:
        entries = self._entries
        size = len(entries)  # a native read: the usual key is new, found so with no lookup
        entries[key] = deadline
        if len(entries) == size:  # it was there: move it to the end
            del entries[key]
            entries[key] = deadline

    def discard(self, key: K) -> None:
        entries = self._entries
        if key in entries:
            del entries[key]

    def take(self, key: K) -> bool:
        """Remove ``key``; True if it was there."""
        entries = self._entries
        if key in entries:
            del entries[key]
            return True
        return False

    def oldest(self) -> K | None:
        for key in self._entries:
            return key
        return None

    def pop_oldest(self) -> K | None:
        for key in self._entries:
            del self._entries[key]
            return key
        return None

    def unordered(self, until: float) -> None:
        """Deadlines may be out of order until ``until`` (a timeout was lowered)."""
        self._full_scan_until = max(self._full_scan_until, until)

    def pop_expired(self, now: float) -> list[K]:
        expired: list[K] = []
        if now < self._full_scan_until:
            for key, deadline in list(self._entries.items()):
                if deadline <= now:
                    del self._entries[key]
                    expired.append(key)
            return expired
        while self._entries:
            key, deadline = next(iter(self._entries.items()))
            if deadline > now:
                break
            del self._entries[key]
            expired.append(key)
        return expired
