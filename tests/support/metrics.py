"""The one reader of Prometheus text expositions in the tests (prometheus-client's parser).

Samples are keyed as the exposition writes them, ``name{label="value",...}`` (labels in
their order there), so a test names a sample the way it reads in a scrape.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def sample_key(name: str, labels: dict[str, str]) -> str:
    if not labels:
        return name
    escaped = (
        v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in labels.values()
    )
    inner = ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped, strict=True))
    return f"{name}{{{inner}}}"


def samples(text: str, *, labelled: bool = True) -> dict[str, float]:
    """Every sample of the exposition ``text``; only the unlabelled ones if not ``labelled``."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if labelled or not sample.labels:
                found[sample_key(sample.name, sample.labels)] = float(sample.value)
    return found


def value(text: str, name: str, labels: str = "") -> float | None:
    """One sample, e.g. ``value(text, "asgi_requests_total", 'code="200"')``; None if absent."""
    return samples(text).get(f"{name}{{{labels}}}" if labels else name)


def scrape(url: str, *, labelled: bool = True, timeout: float = 5.0) -> dict[str, float]:
    """GET ``url`` (a /metrics endpoint) and parse it with ``samples``."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return samples(response.read().decode(), labelled=labelled)
