"""The operator's tuning loop for one local sidecar, in a thread: its own code, not a copy.

Every ``interval`` seconds: GET the sidecar's /metrics, ``parse_metrics``, ``observe``
against the previous round, ``decide`` from the spec's bounds and the values tuned so
far, ``tuned_values`` (with the adaptive limit on, its bounds rather than the limit), and
write the settings the operator would put in the ConfigMap (``tuned_spec``) into the
sidecar's ``--config`` file, which it polls every second.  As in the operator, no new
decision is taken until the sidecar's scrape shows the last one (``not_yet_live``), so
every observation covers one setting.  The kubelet's part (the ConfigMap volume) is the
file write; tests/node measure that part on a real node.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from asgi_operator.autotuning import bounds_of, current_settings, tuned_values
from asgi_operator.building import tuned_spec
from asgi_operator.models import AsgiServerSpec
from asgi_operator.observing import Snapshot, not_yet_live, observe, parse_metrics
from asgi_operator.statusmodels import TunedSettings
from asgi_operator.tuning import Change, Observation, decide

APPLY_TIMEOUT = 5.0  # seconds to wait for the sidecar to show a decision


@dataclass
class Decision:
    t: float  # seconds since the tuner's origin
    changes: list[Change]


@dataclass
class Tuner:
    metrics_url: str
    config: Path
    spec: AsgiServerSpec
    interval: float
    somaxconn: int | None = None
    tuned: TunedSettings = field(default_factory=TunedSettings)
    decisions: list[Decision] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    origin: float = 0.0
    error: BaseException | None = None
    _history: list[Observation] = field(default_factory=list)
    _past: list[tuple[int, Change]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def settings(self) -> dict[str, object]:
        """The sidecar's limits as the operator's ConfigMap would carry them (JSON names)."""
        spec = tuned_spec(self.spec, self.tuned)
        values = spec.server.model_dump(by_alias=True, exclude_none=True)
        values["adaptive"] = spec.adaptive_limit()
        values["timeoutKeepAlive"] = spec.effective_keep_alive()
        return values

    def write(self) -> None:
        write_config(self.config, self.settings())

    def start(self, origin: float) -> None:
        self.origin = origin
        self._thread = threading.Thread(target=self._guarded, name="tuner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self.error is not None:
            raise RuntimeError("the tuning loop failed") from self.error

    def _snapshot(self) -> Snapshot:
        with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
            text = response.read().decode()
        return parse_metrics(text, time.monotonic())

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # re-raised by stop()
            self.error = exc

    def _run(self) -> None:
        before = self._snapshot()
        while not self._stop.wait(max(0.0, before.at + self.interval - time.monotonic())):
            after = self._snapshot()
            obs = observe({"pod": before}, {"pod": after})
            self._history.append(obs)
            current = current_settings(self.spec, self.tuned, self.somaxconn)
            decision = decide(self._history, current, bounds_of(self.spec), self._past)
            self._past += [(len(self._history), c) for c in decision.changes]
            t = time.monotonic() - self.origin
            said = [f"{c.setting} {c.old} -> {c.new}: {c.reason}" for c in decision.changes]
            self.log.append(
                f"t={t:5.1f}s limit={obs.limit} in-flight={obs.in_flight:.1f} "
                f"goodput={obs.throughput:.0f}/s 503={obs.rejected_ratio:.0%} | "
                + "; ".join(said + list(decision.notes) + [decision.frozen or ""]).strip("; ")
            )
            if decision.changes:
                self.decisions.append(Decision(t, list(decision.changes)))
                self.tuned = TunedSettings.model_validate(
                    {
                        **self.tuned.model_dump(exclude_none=True),
                        **tuned_values(decision, self.spec).model_dump(exclude_none=True),
                    }
                )
                self.write()
                after = self._wait_applied()
            before = after

    def _wait_applied(self) -> Snapshot:
        tuned = self.tuned
        bounds = None
        if self.spec.adaptive_limit() and tuned.adaptive_max is not None:
            bounds = (tuned.adaptive_min or 1, tuned.adaptive_max)
        deadline = time.monotonic() + APPLY_TIMEOUT
        snap = self._snapshot()
        while (
            not_yet_live({"pod": snap}, tuned.limit_concurrency, tuned.timeout_keep_alive, bounds)
            and time.monotonic() < deadline
            and not self._stop.is_set()
        ):
            time.sleep(0.05)
            snap = self._snapshot()
        return snap


def write_config(path: Path, settings: dict[str, object]) -> None:
    """Replace the sidecar's config file atomically (it is polled once a second)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings) + "\n")
    os.replace(tmp, path)
