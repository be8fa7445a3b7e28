"""The alert rules as promql-parser reads them, against their runbooks in the README.

The expressions are checked against live data in tests/integration/test_monitoring.py;
here only what needs no Prometheus: every alert has a runbook, and the runbook names the
metrics its expression selects, so an on-call engineer reading it knows what to graph.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import promql_parser
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RULES = sorted((ROOT / "alerts").glob("*.yaml"))
SECTION = "### Alerts: what each means and what to do"


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def runbooks() -> dict[str, str]:
    """The README's runbook section: each ``#### Alert`` heading with its text."""
    readme = README.read_text()
    assert readme.count(SECTION) == 1, f"README needs one {SECTION!r}"
    section = readme.split(SECTION, 1)[1]
    section = re.split(r"^#{1,3} ", section, maxsplit=1, flags=re.MULTILINE)[0]
    parts = re.split(r"^#### (\S+)\n", section, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def metrics(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def test_every_alert_has_one_runbook_in_the_readme():
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), names
    books = runbooks()
    assert sorted(books) == sorted(names), (
        f"without a runbook: {sorted(set(names) - set(books))}; "
        f"runbooks of no alert: {sorted(set(books) - set(names))}"
    )


def test_each_runbook_says_when_it_fires_what_it_costs_and_what_to_do():
    books = runbooks()
    for rule in alert_rules():
        text = books.get(rule["alert"], "")
        for part in ("**Fires when**", "**What users get:**", "**First checks:**", "**Fix:**"):
            assert part in text, (rule["alert"], part)
        # The alert's own `for`, as the runbook words it ("for 5 minutes").
        minutes = round(promql_parser.parse_duration(rule["for"]).total_seconds() / 60)
        assert f"for {minutes} minutes" in text, (rule["alert"], rule["for"])


def test_each_runbook_names_the_metrics_its_alert_selects():
    books = runbooks()
    for rule in alert_rules():
        selected = metrics(rule["expr"])
        assert selected, rule["alert"]
        text = books.get(rule["alert"], "")
        # `name` or `name{...}`: a metric, not the start of a longer one.
        unnamed = sorted(n for n in selected if f"`{n}`" not in text and f"`{n}{{" not in text)
        assert not unnamed, f"runbook of {rule['alert']} does not name {unnamed}"
