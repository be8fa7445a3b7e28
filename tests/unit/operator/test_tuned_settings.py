"""A tuned value has one spelling, the sidecar's, from the decision to the ConfigMap."""

import json
import logging

from asgi_operator.autotuning import _resumed, tuned_values
from asgi_operator.building import Owner, build_config_map, sidecar_settings, tuned_spec
from asgi_operator.handlers import QuietSuccesses
from asgi_operator.models import AsgiServerSpec
from asgi_operator.observations import BACKLOG, KEEP_ALIVE, LIMIT
from asgi_operator.statusing import Observed, Tuned, Verdict, build_status
from asgi_operator.statusmodels import AsgiServerStatus, TunedSettings
from asgi_operator.tuning import Decision
from asgi_sidecar.settings import SidecarSettings

OWNER = Owner(name="web", namespace="ns", uid="u1")


def spec(**fields):
    return AsgiServerSpec.model_validate({"image": "x", **fields})


def test_the_decision_names_settings_by_the_sidecars_aliases():
    aliases = {f.alias for f in SidecarSettings.model_fields.values()}
    assert {LIMIT, BACKLOG, KEEP_ALIVE} <= aliases
    assert set(TunedSettings.model_fields) <= set(SidecarSettings.model_fields)
    for name, field in TunedSettings.model_fields.items():
        assert field.alias == SidecarSettings.model_fields[name].alias


def test_decided_values_reach_the_configmap_under_the_same_names():
    decision = Decision(limit=12, backlog=4096, keep_alive=90.0)
    tuned = tuned_values(decision, spec())
    data = json.loads(build_config_map(OWNER, tuned_spec(spec(), tuned))["data"]["sidecar.json"])
    for name, value in decision.values().items():
        assert data[name] == value


def test_a_tuned_keep_alive_replaces_the_profile():
    tuned = TunedSettings(timeout_keep_alive=90.0)
    applied = tuned_spec(spec(clientProfile="mobile"), tuned)
    assert applied.effective_keep_alive() == 90.0
    assert tuned_spec(spec(clientProfile="mobile"), TunedSettings()).effective_keep_alive() == 80


def test_autotune_adaptive_runs_the_adaptive_limit_and_tunes_its_bounds():
    adaptive = spec(autotune={"enabled": True, "adaptive": True})
    assert sidecar_settings(adaptive).adaptive is True
    assert sidecar_settings(spec()).adaptive is False
    assert sidecar_settings(spec(server={"adaptive": True})).adaptive is True
    tuned = tuned_values(Decision(limit=20, backlog=2048, keep_alive=75.0), adaptive)
    assert (tuned.adaptive_min, tuned.adaptive_max, tuned.limit_concurrency) == (10, 40, None)
    settings = sidecar_settings(tuned_spec(adaptive, tuned))
    assert (settings.adaptive_min, settings.adaptive_max) == (10, 40)
    assert settings.limit_concurrency == 100  # the starting value stays the spec's


def test_server_adaptive_under_autotuning_also_tunes_the_bounds():
    one = spec(server={"adaptive": True}, autotune={"enabled": True})
    tuned = tuned_values(Decision(limit=8, backlog=2048, keep_alive=75.0), one)
    assert (tuned.adaptive_min, tuned.adaptive_max) == (4, 16)


def test_the_status_holds_reconcile_and_tuning_together():
    tuned = Tuned(
        tuning=AsgiServerStatus.read(
            {"tuning": {"current": {"limitConcurrency": 12}, "lastRound": "t0"}}
        ).tuning,
        verdict=Verdict("True", "Tuning", "holding"),
    )
    status = build_status(spec(), Observed(1, None), None, "now", tuned)
    assert [c.type for c in status.conditions][-1] == "Tuned"
    patch = status.to_patch()
    assert patch["tuning"]["current"]["limitConcurrency"] == 12
    assert patch["tuning"]["current"]["backlog"] is None  # a merge patch removes it
    untuned = build_status(spec(), Observed(1, None, previous=status.conditions), None, "now")
    assert "Tuned" not in {c.type for c in untuned.conditions}
    assert untuned.to_patch()["tuning"] is None


def test_a_stored_status_is_read_leniently_and_tuning_resumes_from_it():
    stored = {
        "kopf": {"dummy": "x"},
        "conditions": [{"type": "Tuned", "status": "False", "reason": "MetricsStale"}],
        "tuning": {"current": {"limitConcurrency": 7}},
    }
    assert AsgiServerStatus.read(stored).condition("Tuned").reason == "MetricsStale"
    assert AsgiServerStatus.read({"conditions": "garbage"}) == AsgiServerStatus()
    resumed = _resumed({"status": stored})
    assert resumed.tuning.current.limit_concurrency == 7
    assert resumed.verdict.reason == "MetricsStale"


def test_handler_successes_of_per_event_handlers_go_to_debug():
    quiet = QuietSuccesses(("reconcile-owner-of-child",))
    logger = logging.getLogger("test.quiet")
    logger.setLevel(logging.INFO)

    def record(msg):
        return logger.makeRecord(logger.name, logging.INFO, __file__, 1, msg, (), None)

    noisy = record("Handler 'reconcile-owner-of-child' succeeded.")
    assert quiet.filter(noisy) is False
    assert noisy.levelno == logging.DEBUG
    assert quiet.filter(record("Handler 'reconcile' succeeded.")) is True
    logger.setLevel(logging.DEBUG)
    assert quiet.filter(record("Handler 'reconcile-owner-of-child' succeeded.")) is True


def merge_patch(target, patch):
    """RFC 7386, as the API server applies the status patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def test_a_written_status_reads_back_as_unchanged_so_resyncs_write_nothing():
    from asgi_operator.reconciling import status_changed

    tuned = Tuned(
        tuning=AsgiServerStatus.read({"tuning": {"current": {"timeoutKeepAlive": 75}}}).tuning,
        verdict=Verdict("True", "Tuning", "holding"),
    )
    status = build_status(spec(), Observed(2, None), 4096, "now", tuned)
    stored = merge_patch({"kopf": {"x": 1}, "phase": "old"}, status.to_patch())
    assert not status_changed(json.loads(json.dumps(stored)), status)
    assert status_changed({}, status)
