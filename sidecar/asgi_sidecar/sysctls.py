"""Write network sysctls in the current network namespace (the init-container mode).

Only the namespaced settings the operator needs are allowed, so a privileged
init container running this cannot be turned into a way to change the node.
"""

from __future__ import annotations

from pathlib import Path

ALLOWED = frozenset({"net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"})
PROC_SYS = Path("/proc/sys")


class SysctlError(ValueError):
    pass


def parse_assignment(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep:
        raise SysctlError(f"expected NAME=VALUE, got {text!r}")
    if name not in ALLOWED:
        raise SysctlError(f"{name!r} is not allowed; allowed: {', '.join(sorted(ALLOWED))}")
    try:
        number = int(value)
    except ValueError:
        raise SysctlError(f"{name}: value must be an integer, got {value!r}") from None
    if not 1 <= number <= 2**31 - 1:
        raise SysctlError(f"{name}: value out of range: {number}")
    return name, number


def apply_sysctls(assignments: list[str], root: Path = PROC_SYS) -> list[str]:
    parsed = [parse_assignment(a) for a in assignments]
    done = []
    for name, value in parsed:
        path = root / name.replace(".", "/")
        try:
            path.write_text(f"{value}\n")
            now = int(path.read_text().strip())
        except OSError as exc:
            raise SysctlError(f"cannot write {name}: {exc.strerror}") from None
        if now != value:
            raise SysctlError(f"{name}: wrote {value} but the kernel reports {now}")
        done.append(f"{name} = {now}")
    return done
