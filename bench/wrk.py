"""wrk as the load generator: pinned, time-bounded, results read back as JSON from a Lua hook."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

WRK = shutil.which("wrk") or "/usr/bin/wrk"

# done() runs once after the test with wrk's own statistics (latency in microseconds).
# An optional delay() adds think time before each request on a connection, which
# turns wrk's closed loop into a roughly fixed offered rate while responses are fast.
# The pause is exponentially distributed (mean ``delay_ms``): with a constant pause
# all connections stay in lockstep and the "rate" arrives as one burst per period.
_SCRIPT = """\
{delay}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%.0f,"duration_us":%.0f,"connect":%.0f,"read":%.0f,' ..
    '"write":%.0f,"status":%.0f,"timeout":%.0f,"p50":%.0f,"p90":%.0f,"p99":%.0f,' ..
    '"max":%.0f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non_2xx: int  # wrk counts status >= 400 (its "Non-2xx or 3xx responses")
    socket_errors: int  # connect + read + write + timeout
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def ok_rps(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds

    @property
    def rejected_rps(self) -> float:
        return self.non_2xx / self.seconds


def run(
    url: str,
    *,
    core: int | str,
    connections: int,
    seconds: float,
    workdir: Path,
    threads: int = 1,
    delay_ms: float | None = None,
    timeout_s: int = 10,
) -> WrkResult:
    """One wrk run pinned to ``core``; raises if wrk fails or overruns its time."""
    script = workdir / ("wrk-delay.lua" if delay_ms else "wrk.lua")
    delay = ""
    if delay_ms:
        delay = f"delay = function() return -{delay_ms:.3f} * math.log(1 - math.random()) end"
    script.write_text(_SCRIPT.format(delay=delay))
    cmd = ["taskset", "-c", str(core), WRK, "-t", str(threads), "-c", str(connections)]
    cmd += ["-d", f"{seconds:.0f}s", "--timeout", f"{timeout_s}s", "--latency"]
    cmd += ["-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        tail = f"{out.stdout[-800:]} {out.stderr[-800:]}"
        raise RuntimeError(f"wrk failed ({out.returncode}): {tail}")
    data = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        non_2xx=int(data["status"]),
        socket_errors=int(data["connect"] + data["read"] + data["write"] + data["timeout"]),
        p50_ms=data["p50"] / 1000,
        p90_ms=data["p90"] / 1000,
        p99_ms=data["p99"] / 1000,
        max_ms=data["max"] / 1000,
    )


def version() -> str:
    out = subprocess.run([WRK, "-v"], capture_output=True, text=True, timeout=10, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" Copyright")[0].removeprefix("wrk ") if first else "unknown"
