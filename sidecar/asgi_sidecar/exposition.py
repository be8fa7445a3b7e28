"""Prometheus' text exposition format (version 0.0.4), written without prometheus_client.

The sidecar exports a few dozen figures it keeps itself (``stats.Stats``), built into
families at scrape time; all it needs of a client library is this writer.  Importing
prometheus_client would load its metric classes, registry, HTTP and WSGI servers and
threads with it: about 5 MB in every Pod (README, Memory), a quarter of what the proxy
holds at start.  The output is what prometheus_client writes for the same families
(``# HELP``/``# TYPE`` lines, ``_total`` counters, ``_bucket``/``_count``/``_sum``
histograms, ``_info`` gauges); tests read it back with prometheus_client's parser and
with ``promtool check metrics``.

Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Family:
    """One metric: its name (without ``_total`` or ``_info``), help, type and samples."""

    name: str
    help: str
    kind: str  # "counter", "gauge", "histogram" or "info"
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)  # suffix, labels

    def add(self, value: float, labels: Labels = (), suffix: str = "") -> Family:
        self.samples.append((suffix, labels, value))
        return self


def gauge(name: str, help: str, value: float) -> Family:
    return Family(name, help, "gauge").add(value)


def counter(name: str, help: str, value: float) -> Family:
    return Family(name, help, "counter").add(value, suffix="_total")


def by_label(kind: str, name: str, help: str, label: str, values: Mapping[str, float]) -> Family:
    """A counter or gauge with one label, a sample per key in sorted order."""
    family = Family(name, help, kind)
    suffix = "_total" if kind == "counter" else ""
    for key in sorted(values):
        family.add(values[key], ((label, key),), suffix)
    return family


def histogram(name: str, help: str, cumulative: Iterable[tuple[str, int]], total: float) -> Family:
    """``cumulative``: (upper bound as written in ``le``, observations up to it), the last
    bound ``+Inf``, whose count is the histogram's count."""
    family = Family(name, help, "histogram")
    seen = 0
    for bound, seen in cumulative:
        family.add(seen, (("le", bound),), "_bucket")
    family.add(seen, suffix="_count")
    return family.add(total, suffix="_sum")


def info(name: str, help: str, labels: Mapping[str, str]) -> Family:
    return Family(name, help, "info").add(1.0, tuple(sorted(labels.items())), "_info")


def render(families: Iterable[Family]) -> bytes:
    lines: list[str] = []
    for family in families:
        # A counter's and an info's HELP and TYPE name the samples' name, as
        # prometheus_client writes them; an info is a gauge in this format.
        name = family.name + {"counter": "_total", "info": "_info"}.get(family.kind, "")
        kind = "gauge" if family.kind == "info" else family.kind
        lines.append(f"# HELP {name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in family.samples:
            if labels:
                pairs = ",".join(f'{key}="{_escape_label(text)}"' for key, text in labels)
                lines.append(f"{family.name}{suffix}{{{pairs}}} {number(value)}")
            else:
                lines.append(f"{family.name}{suffix} {number(value)}")
    lines.append("")
    return "\n".join(lines).encode("utf-8")


def number(value: float) -> str:
    """A sample value as Prometheus reads it: ``+Inf``, ``-Inf``, ``NaN`` or a float."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
