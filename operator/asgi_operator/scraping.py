"""Read the sidecars' metrics: straight from each ready Pod, or from a Prometheus HTTP API.

The I/O edge of autotuning; everything it returns is parsed by ``observing.py``.
A Pod that does not answer within ``TIMEOUT`` is reported as missing, never as
zeros: missing figures make the observation stale, which freezes tuning.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from asgi_operator.observing import Snapshot, parse_metrics, snapshot_from_samples

log = logging.getLogger("asgi_operator.scraping")

TIMEOUT = 2.0


def ready_pod_addresses(pods: list[dict[str, Any]]) -> dict[str, str]:
    """Pod name -> IP of the Pods that are Running and Ready."""
    result = {}
    for pod in pods:
        status = pod.get("status", {})
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions", []) or []
        )
        if ready and status.get("podIP") and not pod["metadata"].get("deletionTimestamp"):
            result[pod["metadata"]["name"]] = status["podIP"]
    return result


def load_address_map(path: Path | None) -> dict[str, str]:
    """Test-only: ``{"<podIP>:<port>": "<host>:<port>"}``, re-read at every scrape.

    Lets the operator reach sidecars that run on loopback beside a control plane
    whose Pods are faked (kwok); never needed in a real cluster.
    """
    if path is None:
        return {}
    try:
        data: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("address map %s unusable: %s", path, exc)
        return {}
    return data


def _fetch(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return str(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.info("scrape of %s failed: %s", url, exc)
        return None


def scrape_pods(
    addresses: Mapping[str, str], port: int, address_map: Mapping[str, str] | None = None
) -> dict[str, Snapshot | None]:
    """Pod name -> Snapshot (None when the Pod did not answer)."""
    address_map = address_map or {}

    def one(item: tuple[str, str]) -> tuple[str, Snapshot | None]:
        name, ip = item
        target = address_map.get(f"{ip}:{port}", f"{ip}:{port}")
        text = _fetch(f"http://{target}/metrics")
        if text is None:
            return name, None
        try:
            return name, parse_metrics(text, time.monotonic())
        except ValueError as exc:
            log.warning("metrics of %s unreadable: %s", name, exc)
            return name, None

    if not addresses:
        return {}
    with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
        return dict(pool.map(one, addresses.items()))


def query_prometheus(
    base_url: str, namespace: str, pods: Mapping[str, str]
) -> dict[str, Snapshot | None]:
    """Pod name -> Snapshot from a Prometheus server scraping the sidecars.

    Series are matched by the ``namespace`` and ``pod`` target labels (what the
    Prometheus Operator and the usual Kubernetes scrape configs attach).
    """
    if not pods:
        return {}
    names = "|".join(sorted(pods))
    query = f'{{__name__=~"asgi_.*",namespace="{namespace}",pod=~"{names}"}}'
    url = base_url.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    text = _fetch(url)
    if text is None:
        return dict.fromkeys(pods)
    try:
        body = json.loads(text)
        results = body["data"]["result"]
    except (ValueError, KeyError, TypeError):
        log.warning("unexpected answer from %s", base_url)
        return dict.fromkeys(pods)
    per_pod: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for series in results:
        metric = dict(series.get("metric", {}))
        pod = metric.get("pod", "")
        name = metric.pop("__name__", "")
        per_pod.setdefault(pod, []).append((name, metric, float(series["value"][1])))
    now = time.monotonic()
    return {
        pod: snapshot_from_samples(per_pod[pod], now) if pod in per_pod else None for pod in pods
    }
