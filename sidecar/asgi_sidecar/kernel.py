"""What the kernel says about the listening socket and the network namespace.

All reads are cheap (a getsockopt or a small /proc file) and happen at scrape
time, never on the request path.  Each function returns None where the kernel
does not offer the figure (not Linux), so callers report "unknown", not zero.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

PROC_SOMAXCONN = Path("/proc/sys/net/core/somaxconn")
PROC_NETSTAT = Path("/proc/net/netstat")

# struct tcp_info: eight one-byte fields, then u32 rto, ato, snd_mss, rcv_mss,
# unacked, sacked.  On a LISTEN socket unacked is the accept queue's current
# length and sacked is its capacity (the effective backlog).
_TCP_INFO_LEN = 104
_QUEUE_FIELDS = struct.Struct("=II")
_QUEUE_OFFSET = 24


def read_somaxconn(path: Path = PROC_SOMAXCONN) -> int | None:
    """net.core.somaxconn of this process's network namespace."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def listen_queue(sock: socket.socket) -> tuple[int, int] | None:
    """(current accept queue length, effective backlog) of a listening TCP socket."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(raw) < _QUEUE_OFFSET + _QUEUE_FIELDS.size:
        return None
    queued, capacity = _QUEUE_FIELDS.unpack_from(raw, _QUEUE_OFFSET)
    return queued, capacity


def parse_netstat(text: str) -> dict[str, dict[str, int]]:
    """Parse /proc/net/netstat: pairs of header and value lines per protocol."""
    result: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        proto, _, names = header.partition(":")
        vproto, _, numbers = values.partition(":")
        if proto != vproto:
            continue
        result[proto] = {
            name: int(number) for name, number in zip(names.split(), numbers.split(), strict=False)
        }
    return result


def listen_overflows(path: Path = PROC_NETSTAT) -> tuple[int, int] | None:
    """(ListenOverflows, ListenDrops) of this network namespace since it was created.

    They count SYNs dropped because an accept queue was full, including each
    retransmission: read them as a rate, not as a number of clients.
    """
    try:
        tcp_ext = parse_netstat(path.read_text()).get("TcpExt", {})
    except OSError:
        return None
    if "ListenOverflows" not in tcp_ext:
        return None
    return tcp_ext["ListenOverflows"], tcp_ext.get("ListenDrops", 0)


def effective_backlog(requested: int, somaxconn: int | None) -> int:
    """What listen(requested) gives: the kernel clamps it to somaxconn silently."""
    return requested if somaxconn is None else min(requested, somaxconn)
