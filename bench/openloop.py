"""Open-loop load with vegeta: a constant arrival rate per phase, whatever the server does.

wrk and its kin are closed loops: a slower server gets fewer requests, so "3x overload"
is not defined and latency is understated (coordinated omission).  vegeta sends each
request at its scheduled time, on a new worker if every other one waits for an answer
(up to ``MAX_CONNECTIONS`` of them), so the offered rate is the rate asked for until that
many requests are waiting at once (the tables show the rate offered).

``attack`` runs a list of phases back to back: one vegeta process per phase, each started
at its phase's time, so the next phase's arrivals begin on schedule while the last one's
requests are still being answered.  ``at_phase`` callbacks run at each phase's start (a
capacity shift of the app).  Every process started here is stopped by its PID, however
the run ends.  The hits come back from vegeta's CSV encoding as ``loadstats.Hit`` values,
``sent`` in seconds since the run's origin.
"""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.loadstats import Hit
from hack.cache import ROOT

VEGETA = ROOT / ".cache" / "bin" / "vegeta"
TIMEOUT = 2.0  # seconds a request may take before vegeta gives up on it (code 0)
MAX_CONNECTIONS = 8000  # per vegeta process: below its open-file limit (bench.procs.NOFILE)

# Each vegeta process connects from its own loopback address, 127.0.0.2 to 127.0.0.254 in
# turn: the sockets it leaves in TIME_WAIT (every timed-out request, and each connection at
# its exit) then hold ports of that address only, so a run of thousands of them neither
# runs out of ephemeral ports nor leaves free_port() on 127.0.0.1 without any.
_SOURCES = itertools.cycle(f"127.0.0.{n}" for n in range(2, 255))


@dataclass(frozen=True, slots=True)
class Phase:
    rate: float  # requests per second (vegeta takes whole ones: rounded)
    seconds: float
    at_start: Callable[[], None] | None = None  # e.g. shift the app's capacity

    def __post_init__(self) -> None:
        # vegeta reads a rate of 0 as "as fast as possible": never ask for that by accident
        if round(self.rate) < 1 or self.seconds <= 0:
            raise ValueError(f"a phase needs a rate >= 1/s and a duration > 0, not {self}")


def vegeta() -> Path:
    if not VEGETA.exists():
        raise RuntimeError(f"{VEGETA} is missing: run `make vegeta` (hack/build-vegeta.sh)")
    return VEGETA


def version() -> str:
    try:
        cmd = [str(vegeta()), "-version"]
        out = subprocess.run(cmd, check=False, capture_output=True, text=True)
    except (OSError, RuntimeError):
        return "?"
    for line in out.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "?"


def _attack_cmd(url: str, phase: Phase, output: Path, core: int | None) -> list[str]:
    pin = [] if core is None else ["taskset", "-c", str(core)]
    return [
        *pin, str(vegeta()), "attack", f"-laddr={next(_SOURCES)}",
        f"-max-connections={MAX_CONNECTIONS}", f"-max-workers={MAX_CONNECTIONS}",
        f"-rate={round(phase.rate)}/1s", f"-duration={round(phase.seconds * 1000)}ms",
        f"-timeout={TIMEOUT:g}s", "-keepalive=true", "-redirects=-1", "-max-body=0",
        f"-output={output}",
    ]  # fmt: skip


def attack(
    url: str,
    phases: Sequence[Phase],
    workdir: Path,
    *,
    core: int | None = 0,
    name: str = "attack",
) -> tuple[list[Hit], float]:
    """Run the phases against ``url``; returns the hits and the origin (time.time())."""
    env = {**os.environ, "GOMAXPROCS": "1"}  # one core: vegeta shares it with the proxy
    target = f"GET {url}\n".encode()
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    origin = time.time()
    start = time.monotonic()
    try:
        offset = 0.0
        for i, phase in enumerate(phases):
            delay = start + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if phase.at_start is not None:
                phase.at_start()
            output = workdir / f"{name}-{i}.bin"
            log = (workdir / f"{name}-{i}.log").open("wb")
            popen = subprocess.Popen(
                _attack_cmd(url, phase, output, core),
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
            log.close()
            assert popen.stdin is not None
            popen.stdin.write(target)
            popen.stdin.close()
            running.append((popen, output))
            offset += phase.seconds
        hits: list[Hit] = []
        for i, (popen, output) in enumerate(running):
            code = popen.wait(timeout=offset + TIMEOUT + 30)
            if code != 0:
                log_text = output.with_suffix(".log").read_text(errors="replace")
                raise RuntimeError(f"vegeta attack exited with {code}: {log_text[:600]}")
            hits += decode(output, origin, i)
    finally:
        for popen, _ in running:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
    hits.sort(key=lambda h: h.sent)
    return hits, origin


def decode(results: Path, origin: float, phase: int = 0) -> list[Hit]:
    """vegeta's binary results as hits, through ``vegeta encode -to csv``."""
    out = subprocess.run(
        [str(vegeta()), "encode", "-to", "csv", str(results)],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return parse_csv(out.stdout.splitlines(), origin, phase)


def parse_csv(lines: Sequence[str], origin: float, phase: int = 0) -> list[Hit]:
    """Rows of vegeta's CSV: unix-nanosecond timestamp, status code, latency in ns, ..."""
    hits = []
    for row in csv.reader(lines):
        if not row:
            continue
        sent_ns, code, latency_ns = int(row[0]), int(row[1]), int(row[2])
        hits.append(Hit(sent_ns / 1e9 - origin, latency_ns / 1e9, code, phase))
    return hits
