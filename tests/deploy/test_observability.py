"""The Grafana dashboard and the Prometheus alert rules, checked statically: they parse,
every panel has a query, every alert tells the SRE what to do, and every metric they read
is one the segmenter exposes. tests/integration/test_prometheus.py runs them for real."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.deploy.deployment import (
    ALERTS,
    alert_rules,
    dashboard,
    dashboard_panels,
    dashboard_queries,
    exposed_metric_names,
    load_yaml,
    referenced_metric_names,
)

#: What the issue asks the dashboard to show, as a word in some panel's title.
REQUIRED_PANELS = (
    "events/s by type",
    "dead letters/s by reason",
    "consumer lag per partition",
    "end-to-end latency",
    "batch duration",
    "segment sizes",
    "segment changes/s",
    "model version",
    "silhouette",
    "size entropy",
    "redis errors/s",
    "produce errors/s",
)

#: What the issue asks the alert rules to cover.
REQUIRED_ALERTS = {
    "SegmenterConsumerLagGrowing",
    "SegmenterNoEvents",
    "SegmenterDeadLetterRatioHigh",
    "SegmenterLatencySLOFastBurn",
    "SegmenterLatencySLOSlowBurn",
    "SegmenterRedisErrors",
    "SegmenterSegmentCollapsing",
    "SegmenterSegmentExploding",
}


def test_dashboard_is_a_grafana_dashboard() -> None:
    doc = dashboard()
    assert doc["uid"] and doc["title"] and doc["schemaVersion"] >= 36
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    names = [v["name"] for v in doc["templating"]["list"]]
    assert names == ["datasource", "instance"]


def test_every_panel_has_a_query_on_the_chosen_datasource() -> None:
    panels = dashboard_panels()
    assert len(panels) >= 20
    for p in panels:
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for t in p["targets"]:
            assert t["expr"].strip(), f"panel {p['title']!r} has an empty query"
        assert p.get("description"), f"panel {p['title']!r} says nothing about what it shows"


def test_dashboard_shows_what_an_sre_needs() -> None:
    titles = [p["title"].lower() for p in dashboard_panels()]
    missing = [r for r in REQUIRED_PANELS if not any(r in t for t in titles)]
    assert missing == []


def test_panels_read_only_metrics_the_segmenter_exposes() -> None:
    exposed = exposed_metric_names()
    for title, expr in dashboard_queries():
        assert "$" not in expr, f"{title}: a variable was left in {expr}"
        unknown = referenced_metric_names(expr) - exposed
        assert not unknown, f"{title} reads {unknown}, which the segmenter does not expose"


def test_referenced_metric_names_finds_them() -> None:
    assert referenced_metric_names(
        "sum(rate(segmenter_events_total[5m])) / segmenter:slow:ratio_rate5m"
    ) == {"segmenter_events_total"}


def test_alert_rules_parse_and_cover_the_issue() -> None:
    doc = load_yaml(ALERTS)
    assert {g["name"] for g in doc["groups"]} == {"segmenter-slo", "segmenter"}
    names = [r["alert"] for r in alert_rules()]
    assert not [n for n, c in Counter(names).items() if c > 1]
    assert set(names) >= REQUIRED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda r: r["alert"])
def test_every_alert_says_what_it_means_and_what_to_do(rule: dict[str, str]) -> None:
    annotations = rule["annotations"]
    for key in ("summary", "description", "runbook"):
        assert len(annotations.get(key, "")) > 20, f"{rule['alert']}: {key} missing or empty"
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert rule["for"], "every alert waits before firing, so a blip does not page"


def test_rules_read_only_metrics_the_segmenter_exposes() -> None:
    exposed = exposed_metric_names()
    for g in load_yaml(ALERTS)["groups"]:
        for r in g["rules"]:
            unknown = referenced_metric_names(r["expr"]) - exposed
            assert not unknown, f"{r.get('alert') or r['record']} reads {unknown}"
