"""Instructions per request under valgrind's callgrind: the sidecar's builds and nginx.

Timings on these machines are noisy (and ``perf stat`` has no hardware counters
here); callgrind counts the instructions a process executes, which repeat
almost exactly from run to run, so a change of a few percent shows.  Each proxy
runs under callgrind in front of a fast upstream (nginx ``return 200``, not
under valgrind); after a warm-up its counters are zeroed (``callgrind_control
-z``), a fixed number of requests is made on one keep-alive connection, one
after the other, and the counters are dumped (``-d``): instructions / requests.
Only user-space instructions are counted: the system calls' own cost is not
(both proxies make about the same calls per request).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import nginx
from bench.procs import PURE, Processes, free_port, processes, start_sidecar, uvicorn_cmd
from bench.report import Timing, table

VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"
CALLGRIND_CONTROL = shutil.which("callgrind_control") or "/usr/bin/callgrind_control"
# The dumps, kept for callgrind_annotate (and a look with kcachegrind).
PROFILES = Path(__file__).resolve().parent / "results" / "callgrind"
WARMUP = 300
REQUESTS = 3000
EMBEDDED_REQUESTS = 1000  # the app's own work is most of each: fewer are enough
DEMO = "asgi_sidecar.demo:app"
READY_TIMEOUT = 300.0  # Python's imports under callgrind take a while
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
SIDECAR_FLAGS = ["--limit-concurrency", "10000", "--queue-depth", "100"]
SIDECAR_FLAGS += ["--max-connections", "10000", "--backlog", "4096"]
# Every run the same: no hash randomisation in the sidecar's Python.
DETERMINISTIC = {"PYTHONHASHSEED": "0"}

_NGINX_SINGLE = """\
worker_processes 1;
daemon off;
master_process off;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/{name}-body;
    proxy_temp_path {dir}/{name}-proxy;
    fastcgi_temp_path {dir}/{name}-fastcgi;
    uwsgi_temp_path {dir}/{name}-uwsgi;
    scgi_temp_path {dir}/{name}-scgi;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
{body}
}}
"""


@dataclass
class Count:
    name: str
    instructions: int
    requests: int

    @property
    def per_request(self) -> float:
        return self.instructions / self.requests


def callgrind(workdir: Path, name: str) -> list[str]:
    out = workdir / f"{name}.callgrind.%p"
    return [VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-line=no"]


def requests(port: int, count: int) -> None:
    """``count`` GET requests on one keep-alive connection, each answered 200 in full."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        buffer = b""
        for _ in range(count):
            sock.sendall(REQUEST)
            while b"\r\n\r\n" not in buffer:
                buffer += _recv(sock)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response: {head[:60]!r}")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(buffer) < length:
                buffer += _recv(sock)
            buffer = buffer[length:]


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the proxy closed the connection")
    return data


def _control(pid: int, flag: str) -> None:
    subprocess.run(
        [CALLGRIND_CONTROL, flag, str(pid)], capture_output=True, check=True, timeout=120
    )


def measure(workdir: Path, name: str, pid: int, port: int, count: int = REQUESTS) -> Count:
    """Zero the counters after a warm-up, make ``count`` requests, dump: the instructions
    between."""
    requests(port, WARMUP)
    before = set(workdir.glob(f"{name}.callgrind.*"))
    _control(pid, "-z")
    requests(port, count)
    _control(pid, "-d")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for dump in set(workdir.glob(f"{name}.callgrind.*")) - before:
            total = _totals(dump)
            if total is not None:
                PROFILES.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(dump, PROFILES / f"{name}.callgrind")
                return Count(name, total, count)
        time.sleep(0.2)
    raise RuntimeError(f"no callgrind dump of {name} appeared")


def _totals(dump: Path) -> int | None:
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    return None


def _start_nginx(procs: Processes, name: str, upstream: int) -> tuple[int, int]:
    """nginx as the proxy, one process (no master) so callgrind sees the worker: pid, port."""
    workdir = procs.workdir
    port = free_port()
    body = nginx.PROXY.format(port=port, upstream=upstream)
    conf = workdir / f"{name}.conf"
    conf.write_text(_NGINX_SINGLE.format(dir=workdir, name=name, body=body))
    cmd = [*callgrind(workdir, name), nginx.NGINX, "-p", str(workdir), "-c", str(conf)]
    cmd += ["-e", str(workdir / f"{name}.error.log")]
    proc = procs.start(name, cmd, 0, port=port, ready_timeout=READY_TIMEOUT)
    return proc.pid, port


def instructions(workdir: Path, t: Timing) -> str:
    counts: list[Count] = []
    with processes(workdir) as procs:
        _, upstream = nginx.start_fixed(procs, "upstream", core=1)
        _, unique = nginx.start_fixed(procs, "upstream-unique", core=1, unique_heads=True)
        sidecars = [
            ("asgi-sidecar compiled", {}, [], upstream),
            ("asgi-sidecar pure", PURE, [], upstream),
            ("asgi-sidecar compiled --adaptive", {}, ["--adaptive"], upstream),
            ("asgi-sidecar compiled, every response head new", {}, [], unique),
        ]
        for label, env, extra, app in sidecars:
            url = ["proxy", "--upstream", f"http://127.0.0.1:{app}"]
            name = label.replace(",", "").replace(" ", "-").replace("--", "")
            proc, port = start_sidecar(
                procs, name, url, 0, *SIDECAR_FLAGS, *extra,
                env={**DETERMINISTIC, **env}, wrapper=callgrind(workdir, name),
                ready_timeout=READY_TIMEOUT,
            )  # fmt: skip
            counts.append(measure(workdir, name, proc.pid, port))
            counts[-1].name = label
            procs.stop(proc)
        pid, port = _start_nginx(procs, "nginx-proxy", upstream)
        counts.append(measure(workdir, "nginx-proxy", pid, port))
        counts[-1].name = "nginx"
        embedded = _embedded(procs)
    peer = counts[-1].per_request
    rows = [
        [c.name, f"{c.per_request:,.0f}", f"{c.per_request / peer:.2f}x",
         f"{peer / c.per_request:.2f}x"]
        for c in counts
    ]  # fmt: skip
    return "\n".join(
        [
            "## instructions: user-space instructions per proxied request (callgrind)",
            "",
            f"Each proxy under valgrind {_valgrind_version()} `--tool=callgrind`, in front of "
            f"nginx `return 200`; {WARMUP} requests of warm-up, then the counters zeroed and "
            f"{REQUESTS} GET requests on one keep-alive connection, one at a time. Sidecar "
            f"flags `{' '.join(SIDECAR_FLAGS)}`, PYTHONHASHSEED=0; nginx one process "
            "(`master_process off`), same proxy config as the ceiling. System calls' kernel "
            "time is not counted. The upstream answers every request with the same head "
            "(but its Date, once a second), which the sidecar parses once and then finds in "
            "its memo; in the row `every response head new` the upstream adds an "
            "`X-Request-Id` of its own to each, so every head is parsed. The goal of 0.8x "
            "nginx is on CPU time per request at saturation, kernel included (the ceiling); "
            "`nginx / this` here is its user-space part only.",
            "",
            table(
                ["proxy", "instructions / request", "vs nginx", "nginx / this"],
                rows,
            ),
            "",
            "## instructions: embedded `serve` and plain uvicorn, the same app (callgrind)",
            "",
            f"`{DEMO}` (FastAPI) under each server, under callgrind as above: {WARMUP} "
            f"requests of warm-up, then {EMBEDDED_REQUESTS} GET / on one keep-alive "
            "connection. uvicorn `--loop uvloop --http httptools --no-access-log`; serve with "
            "every feature on (`--limit-concurrency 1000`). Fewer instructions per request "
            "than uvicorn is what `serve` needs for more requests per second than it.",
            "",
            table(
                ["server", "instructions / request", "vs uvicorn"],
                [
                    [
                        c.name,
                        f"{c.per_request:,.0f}",
                        f"{c.per_request / embedded[0].per_request:.3f}x",
                    ]
                    for c in embedded
                ],
            ),
        ]
    )


def _embedded(procs: Processes) -> list[Count]:
    """Instructions per request of plain uvicorn and of ``serve``, on the demo app."""
    workdir = procs.workdir
    name, port = "uvicorn-demo", free_port()
    # python -m uvicorn, not its script: valgrind runs the interpreter itself.
    cmd = [*callgrind(workdir, name), sys.executable, "-m", "uvicorn", *uvicorn_cmd(DEMO, port)[1:]]
    proc = procs.start(
        name, cmd, 0, ready_url=f"http://127.0.0.1:{port}/", port=port, env=DETERMINISTIC,
        ready_timeout=READY_TIMEOUT,
    )  # fmt: skip
    counts = [measure(workdir, name, proc.pid, port, EMBEDDED_REQUESTS)]
    counts[-1].name = f"uvicorn {DEMO}"
    procs.stop(proc)
    name = "sidecar-serve"
    proc, port = start_sidecar(
        procs, name, ["serve", DEMO, "--limit-concurrency", "1000"], 0, env=DETERMINISTIC,
        wrapper=callgrind(workdir, name), ready_timeout=READY_TIMEOUT,
    )  # fmt: skip
    counts.append(measure(workdir, name, proc.pid, port, EMBEDDED_REQUESTS))
    counts[-1].name = "asgi-sidecar serve, compiled"
    procs.stop(proc)
    return counts


def _valgrind_version() -> str:
    out = subprocess.run([VALGRIND, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().removeprefix("valgrind-") or "?"
