"""The Helm chart's generated files stay in step with their sources (`make chart-files`)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.support.processes import ROOT

CHART = ROOT / "charts" / "asgi-operator"
DASHBOARD = ROOT / "dashboards" / "asgi-server.json"
ALERTS = ROOT / "alerts" / "asgi-server.rules.yaml"
# Written by `make chart-files` while dashboards/asgi-server.json does not exist (Makefile).
DASHBOARD_PLACEHOLDER = (
    '{"title": "ASGI server (placeholder: dashboards/asgi-server.json does not exist yet)", '
    '"uid": "asgi-server", "schemaVersion": 39, "panels": []}\n'
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.yaml"))


def test_chart_crds_are_copies_of_the_top_level_crds() -> None:
    assert _names(CHART / "crds") == _names(ROOT / "crds"), "run `make chart-files`"
    for name in _names(ROOT / "crds"):
        source = (ROOT / "crds" / name).read_bytes()
        assert (CHART / "crds" / name).read_bytes() == source, f"{name}: run `make chart-files`"


def test_chart_dashboard_is_a_copy_of_the_dashboard_or_the_placeholder() -> None:
    copy = (CHART / "files" / "asgi-server.json").read_text()
    expected = DASHBOARD.read_text() if DASHBOARD.exists() else DASHBOARD_PLACEHOLDER
    assert copy == expected, "run `make chart-files`"
    assert isinstance(json.loads(copy), dict)


def test_chart_alerts_are_a_copy_of_the_alert_rules() -> None:
    copy = CHART / "files" / "alerts.yaml"
    assert copy.exists() == ALERTS.exists(), "run `make chart-files`"
    if ALERTS.exists():
        assert copy.read_bytes() == ALERTS.read_bytes(), "run `make chart-files`"
        assert yaml.safe_load(copy.read_text())["groups"]


def _comment_lines_before(lines: list[str], index: int) -> bool:
    previous = lines[index - 1].strip() if index else ""
    return previous.startswith("#") or "#" in lines[index].split(":", 1)[1]


def test_values_carry_a_comment_on_every_key_and_point_at_the_schema() -> None:
    text = (CHART / "values.yaml").read_text()
    lines = text.splitlines()
    assert lines[0] == "# yaml-language-server: $schema=values.schema.json"
    uncommented = []
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        if not _comment_lines_before(lines, index):
            uncommented.append(stripped)
    assert uncommented == []


def test_schema_is_draft_07_closed_and_described_everywhere() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, object], path: str, value: object) -> None:
        assert "description" in node or path == "", f"{path}: no description"
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path}: not closed"
            properties = node["properties"]
            assert isinstance(properties, dict)
            if isinstance(value, dict):
                assert set(value) <= set(properties), f"{path}: keys not in the schema"
            for key, child in properties.items():
                sub = value.get(key) if isinstance(value, dict) else None
                walk(child, f"{path}.{key}", sub)

    walk(schema, "", values)
    assert set(values) == set(schema["properties"])
    for ci in sorted((CHART / "ci").glob("*-values.yaml")):
        assert set(yaml.safe_load(ci.read_text()) or {}) <= set(schema["properties"]), ci.name
