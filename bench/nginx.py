"""nginx as a peer: generated configs in a temp dir, one worker, in the foreground."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

from bench.procs import NOFILE, Proc, Processes, free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_MAIN = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/{name}.pid;
error_log {dir}/{name}.error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {nofile}; multi_accept on; }}
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

_FIXED = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;{extra}
            return 200 "fixed body";
        }}
    }}
"""

# The same job the sidecar does: pooled HTTP/1.1 keep-alive to the app, hop-by-hop
# Connection header cleared, X-Forwarded-For/Proto added.
PROXY = """\
    upstream app {{
        server 127.0.0.1:{upstream};
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 4s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
"""


def _start(procs: Processes, name: str, body: str, port: int, core: int) -> Proc:
    workdir = procs.workdir
    conf = workdir / f"{name}.conf"
    conf.write_text(_MAIN.format(dir=workdir, name=name, nofile=NOFILE, body=body))
    cmd = [NGINX, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / f"{name}.error.log")]
    # SIGTERM is nginx's fast shutdown; the master stops its workers.
    return procs.start(name, cmd, core, port=port, stop_signal=signal.SIGTERM)


def start_fixed(
    procs: Processes, name: str, core: int, *, unique_heads: bool = False
) -> tuple[Proc, int]:
    """nginx answering every request with 200 "fixed body": a very fast upstream.
    ``unique_heads``: each response carries an X-Request-Id of its own, so no two heads
    are alike (the sidecar's memo of response heads never hits)."""
    port = free_port()
    extra = "\n            add_header X-Request-Id $request_id;" if unique_heads else ""
    return _start(procs, name, _FIXED.format(port=port, extra=extra), port, core), port


def start_proxy(procs: Processes, name: str, upstream: int, core: int) -> tuple[Proc, int]:
    """nginx as a reverse proxy to 127.0.0.1:``upstream``."""
    port = free_port()
    return _start(procs, name, PROXY.format(port=port, upstream=upstream), port, core), port


def version() -> str:
    import subprocess

    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: nginx/")


def error_log(workdir: Path, name: str) -> str:
    try:
        return (workdir / f"{name}.error.log").read_text(errors="replace")
    except OSError:
        return ""
