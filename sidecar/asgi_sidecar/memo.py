"""A bounded memo of a pure function of bytes, for the values the edge sees over and over.

Field names, Host values and response heads repeat from message to message, so the
proxy checks each once and then looks it up.  A memo is bounded in entries (emptied
when full) and in key length (longer keys are not kept), so no peer can make it grow.

A memo can keep its last hit in front of the dict: comparing two bytes objects
costs a length check and a ``memcmp``, where a dict lookup hashes the whole key
first (a new bytes object has no cached hash).  That pays where the same key
comes back to back (one Host for every request to a Pod, the same response head
for every answer of an endpoint until its Date changes), not where keys vary
within a message (field names).  Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    """``get`` what ``put`` kept for a key, or None."""

    __slots__ = ("_entries", "_front", "_last_key", "_last_value", "max_entries", "max_key")

    def __init__(self, max_entries: int, max_key: int, *, front: bool) -> None:
        self.max_entries = max_entries
        self.max_key = max_key  # longest key kept, in bytes
        self._entries: dict[bytes, V] = {}
        self._front = front
        self._last_key = b""
        self._last_value: V | None = None  # None: the front holds nothing yet

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> V | None:
        if self._front:
            if key == self._last_key and self._last_value is not None:
                return self._last_value
            found = self._entries.get(key)
            if found is not None:
                self._last_key = key
                self._last_value = found
            return found
        return self._entries.get(key)

    def put(self, key: bytes, value: V) -> None:
        if len(key) > self.max_key:
            return
        entries = self._entries
        if len(entries) >= self.max_entries:
            entries.clear()
        entries[key] = value


def interned(memo: Memo[bytes], value: bytes) -> bytes:
    """The bytes object ``memo`` keeps equal to ``value``, kept now if it is new: values
    held for long (a connection's peer address) then share one object."""
    kept = memo.get(value)
    if kept is None:
        memo.put(value, value)
        return value
    return kept
