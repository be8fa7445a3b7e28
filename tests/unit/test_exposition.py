"""The sidecar's own text exposition, read back by prometheus_client's parser (a separate
implementation of the format)."""

import math

from prometheus_client.parser import text_string_to_metric_families

from asgi_sidecar import exposition


def parsed(*families: exposition.Family) -> dict[str, object]:
    text = exposition.render(families).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_counters_gauges_and_labels_read_back_as_written():
    result = parsed(
        exposition.counter("x_opened", "Opened.", 5),
        exposition.by_label("counter", "x_closed", "Closed.", "reason", {"b": 2, "a": 1}),
        exposition.gauge("x_limit", "Limit.", math.inf),
        exposition.by_label("gauge", "x_state", "By state.", "state", {"idle": 3}),
    )
    opened = result["x_opened"]
    assert opened.type == "counter"
    assert [(s.name, s.value) for s in opened.samples] == [("x_opened_total", 5.0)]
    closed = result["x_closed"]
    assert [(s.labels, s.value) for s in closed.samples] == [
        ({"reason": "a"}, 1.0),
        ({"reason": "b"}, 2.0),
    ]
    assert result["x_limit"].type == "gauge"
    assert result["x_limit"].samples[0].value == math.inf
    assert result["x_state"].samples[0].labels == {"state": "idle"}


def test_a_histogram_has_cumulative_buckets_its_count_and_sum():
    family = parsed(
        exposition.histogram("x_seconds", "Time.", [("0.1", 1), ("1.0", 3), ("+Inf", 4)], 2.5)
    )["x_seconds"]
    assert family.type == "histogram"
    values = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert values == {
        ("x_seconds_bucket", "0.1"): 1.0,
        ("x_seconds_bucket", "1.0"): 3.0,
        ("x_seconds_bucket", "+Inf"): 4.0,
        ("x_seconds_count", None): 4.0,
        ("x_seconds_sum", None): 2.5,
    }


def test_label_values_and_help_are_escaped():
    awkward = 'a "quoted" back\\slash and a\nnewline'
    result = parsed(
        exposition.info("x", "Help with a \\ and a\nsecond line.", {"value": awkward, "e": ""})
    )
    family = result["x_info"]  # a gauge named with its suffix in this format
    assert family.documentation == "Help with a \\ and a\nsecond line."
    assert family.samples[0].name == "x_info"
    assert family.samples[0].labels == {"e": "", "value": awkward}
    assert family.samples[0].value == 1.0


def test_special_values_are_written_as_prometheus_reads_them():
    assert [exposition.number(v) for v in (math.inf, -math.inf, 3, 0.25)] == [
        "+Inf",
        "-Inf",
        "3.0",
        "0.25",
    ]
    assert exposition.number(math.nan) == "NaN"
