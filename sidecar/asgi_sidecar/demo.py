"""``make demo``: a small FastAPI app behind the sidecar on localhost.

Starts the demo app on uvicorn and the sidecar in front of it as two real
processes, exactly as they would run in a Pod, prints where to send traffic and
where to read metrics, and stops both on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from fastapi import FastAPI

app = FastAPI(title="asgi-sidecar demo")


@app.get("/")
async def hello() -> dict[str, str]:
    return {"hello": "world"}


@app.get("/ready")
async def ready() -> dict[str, bool]:
    """The app's own readiness probe (samples/production-api.yaml uses it)."""
    return {"ready": True}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@app.get("/whoami")
async def whoami() -> dict[str, object]:
    """Which Pod answered, its arguments, and proof that it read its secrets without
    showing them: the SHA-256 of each environment variable named in ``DEMO_DIGEST_ENV``
    and of each file named in ``DEMO_DIGEST_FILES`` (comma-separated lists)."""
    names = [n for n in os.environ.get("DEMO_DIGEST_ENV", "").split(",") if n]
    files = [f for f in os.environ.get("DEMO_DIGEST_FILES", "").split(",") if f]
    digests: dict[str, str | None] = {}
    for name in names:
        value = os.environ.get(name)
        digests[f"env:{name}"] = None if value is None else _digest(value.encode())
    for path in files:
        try:
            with open(path, "rb") as source:
                digests[f"file:{path}"] = _digest(source.read())
        except OSError:
            digests[f"file:{path}"] = None
    return {"hostname": socket.gethostname(), "argv": sys.argv, "digests": digests}


@app.get("/slow")
async def slow(seconds: float = 0.2) -> dict[str, float]:
    """A request that holds a concurrency slot for a while: try it in a loop."""
    await asyncio.sleep(min(seconds, 30.0))
    return {"slept": seconds}


@app.get("/cpu")
async def cpu(ms: float = 2.0) -> dict[str, float]:
    """Burn ``ms`` milliseconds of CPU (at most 1 s): a request with a known cost, so
    the server has a knee that autotuning can find.  It blocks the event loop, as
    CPU-bound handlers do."""
    deadline = time.thread_time() + min(ms, 1000.0) / 1000.0
    n = 0
    while time.thread_time() < deadline:
        n += 1
    return {"ms": ms}


APP_PORT = int(os.environ.get("DEMO_APP_PORT", "8000"))
PORT = int(os.environ.get("DEMO_PORT", "8080"))
METRICS_PORT = int(os.environ.get("DEMO_METRICS_PORT", "9090"))


def _wait_ok(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


def main() -> int:
    python = sys.executable
    app_proc = subprocess.Popen(
        [python, "-m", "uvicorn", "asgi_sidecar.demo:app", "--port", str(APP_PORT),
         "--host", "127.0.0.1", "--log-level", "warning"]
    )  # fmt: skip
    sidecar = subprocess.Popen(
        [python, "-m", "asgi_sidecar", "proxy", "--upstream", f"http://127.0.0.1:{APP_PORT}",
         "--host", "127.0.0.1", "--port", str(PORT), "--metrics-host", "127.0.0.1",
         "--metrics-port", str(METRICS_PORT), "--limit-concurrency", "20", "--queue-depth", "20"]
    )  # fmt: skip
    procs = [sidecar, app_proc]
    try:
        if not _wait_ok(f"http://127.0.0.1:{METRICS_PORT}/readyz", time.monotonic() + 20):
            print("demo did not become ready; see the log above", file=sys.stderr)
            return 1
        print(
            f"\n  traffic: http://127.0.0.1:{PORT}/  (and /slow?seconds=1)\n"
            f"  metrics: http://127.0.0.1:{METRICS_PORT}/metrics\n"
            f"  try:     wrk -c 50 -d 10s http://127.0.0.1:{PORT}/slow\n"
            "  Ctrl-C stops the demo.\n",
            flush=True,
        )
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
