"""Benchmarks of asgi-sidecar against its peers (nginx, plain uvicorn), one Markdown table each.

Usage: ``python -m bench.run all|<scenario>``, a scenario being a key of ``SCENARIOS``
(ceiling, app, embedded, overload, idle, instructions, operator, keepalive, slow,
admission, soak; ``all`` is every one but the 30-minute soak), from the repository root
(``make bench``, ``make bench-<name>``).

Every process (nginx with generated configs, uvicorn, the sidecar) is started
here on free loopback ports, pinned with taskset, and stopped by PID when its
scenario ends, however it ends.  wrk is the load generator of the throughput ceilings,
vegeta the open-loop one of every overload (bench/openloop.py), and slowhttptest makes
the slow-client attacks.  Tables are printed
and also written to bench/results/latest.md.  BENCH_SECONDS and BENCH_ROUNDS
shorten the runs for a quick check.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    admission,
    idle,
    instructions,
    keepalive,
    nginx,
    openloop,
    operator_bench,
    overload,
    slow,
    soak,
    throughput,
    wrk,
)
from bench.report import Timing

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"

Scenario = Callable[[Path, Timing], str]
SCENARIOS: dict[str, Scenario] = {
    "ceiling": throughput.ceiling,
    "app": throughput.app,
    "embedded": throughput.embedded,
    "overload": overload.overload,
    "idle": idle.idle,
    "instructions": instructions.instructions,
    "operator": operator_bench.operator,
    "keepalive": keepalive.keepalive,
    "slow": slow.slow,
    "admission": admission.admission,
    "soak": soak.soak,
}
ONLY_ALONE = {"soak"}  # 30 minutes: `make bench-soak`, not part of `make bench`


def header() -> str:
    import uvicorn

    from asgi_sidecar import __version__

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "\n".join(
        [
            "# asgi-sidecar benchmarks",
            "",
            f"- date: {now}",
            f"- nproc: {os.cpu_count()} (affinity {sorted(os.sched_getaffinity(0))})",
            f"- kernel: {platform.release()}; python {platform.python_version()}",
            f"- asgi-sidecar {__version__}, uvicorn {uvicorn.__version__}, "
            f"nginx {nginx.version()}, wrk {wrk.version()}, vegeta {openloop.version()}",
            f"- somaxconn: {_read('/proc/sys/net/core/somaxconn')}",
        ]
    )


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def main(argv: list[str]) -> int:
    choice = argv[1] if len(argv) > 1 else "all"
    if choice != "all" and choice not in SCENARIOS:
        print(f"usage: python -m bench.run all|{'|'.join(SCENARIOS)}", file=sys.stderr)
        return 2
    names = [n for n in SCENARIOS if n not in ONLY_ALONE] if choice == "all" else [choice]
    timing = Timing(
        seconds=float(os.environ.get("BENCH_SECONDS", "5")),
        rounds=int(os.environ.get("BENCH_ROUNDS", "3")),
    )
    sections = [header()]
    print(sections[0], flush=True)
    failed: list[str] = []
    started = time.monotonic()
    for name in names:
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            try:
                text = SCENARIOS[name](Path(tmp), timing)
            except Exception as exc:
                failed.append(name)
                text = f"## {name}: FAILED\n\n```\n{_failure(exc, Path(tmp))}\n```"
        text += f"\n\n_{name} took {time.monotonic() - began:.0f} s_"
        sections.append(text)
        print("\n" + text, flush=True)
        _write(sections)
    footer = f"_total {time.monotonic() - started:.0f} s_"
    if failed:
        footer += f"; failed: {', '.join(failed)}"
    sections.append(footer)
    print("\n" + footer)
    _write(sections)
    return 1 if failed else 0


def _failure(exc: Exception, workdir: Path) -> str:
    """The error and the tail of every log the scenario's processes wrote."""
    lines = ["".join(traceback.format_exception(exc)).rstrip()]
    for log in sorted(workdir.glob("*.log")):
        text = log.read_text(errors="replace").strip()
        if text:
            lines.append(f"--- {log.name}\n" + "\n".join(text.splitlines()[-10:]))
    return "\n".join(lines)


def _write(sections: list[str]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n\n".join(sections) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
