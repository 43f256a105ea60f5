"""The alert rules and the dashboard on a real Prometheus (Debian's ``prometheus`` package,
installed by ``make setup``): promtool checks the files, then a Prometheus
started here scrapes a `segmenter run` process under load from the generator, every
dashboard query must return data, and breaking Redis must fire SegmenterRedisErrors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loadtest.devstack import install, servers
from loadtest.devstack.servers import Server
from stream.settings import Settings
from tests.deploy.deployment import (
    ALERTS,
    PROMETHEUS_CONFIG,
    ROOT,
    alert_rules,
    dashboard_queries,
    load_yaml,
)
from tests.integration.conftest import env_of, spawn

pytestmark = pytest.mark.integration

#: Scrape and rule evaluation interval of the test's Prometheus.
INTERVAL = "1s"
#: The alert the test produces, and how long it may take to fire once Redis is gone.
ALERT = "SegmenterRedisErrors"
FIRE_WITHIN_S = 45.0
#: How long every dashboard query gets to return data.
DATA_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def promtool() -> str:
    found = install.prometheus_bins()
    if found is None:
        pytest.skip(
            "prometheus and promtool are not installed: `make setup` "
            "(part of `make setup`) installs Debian's prometheus package when run as root"
        )
    return found[1]


def _promtool(promtool: str, *args: str) -> str:
    done = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_accepts_the_rules_and_the_config(promtool: str) -> None:
    out = _promtool(promtool, "check", "rules", str(ALERTS))
    assert "SUCCESS" in out
    out = _promtool(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert "1 rule files found" in out


def test_every_alert_fires_on_its_condition_in_promtools_unit_tests(promtool: str) -> None:
    """deploy/prometheus/alerts.test.yml: each alert quiet before its condition, firing
    after it held for its `for`, quiet on a look-alike."""
    tests = ALERTS.with_name("alerts.test.yml")
    tested = {
        line.split('alertname="')[1].split('"')[0]
        for line in tests.read_text().splitlines()
        if 'ALERTS{alertname="' in line
    }
    assert tested == {r["alert"] for r in alert_rules()}
    assert "SUCCESS" in _promtool(promtool, "test", "rules", str(tests))


def test_promtool_rejects_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The check above can fail: a rule with a PromQL syntax error is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        yaml.safe_dump({"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "sum(("}]}]})
    )
    done = subprocess.run(
        [promtool, "check", "rules", str(broken)], capture_output=True, timeout=60, check=False
    )
    assert done.returncode != 0


def test_prometheus_starts_on_loopback_and_stops_by_pid(promtool: str, tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": INTERVAL}}))
    prom = servers.start_prometheus(tmp_path / "prom", config)
    try:
        assert prom.alive()
        assert _api(prom, "status/buildinfo")["version"]
    finally:
        assert prom.stop()
    assert not prom.alive()
    assert not servers.port_open(prom.port)


def _test_rules(directory: Path, for_: str) -> Path:
    """The repository's rules, expressions untouched, with every ``for`` set to ``for_``
    so the test need not wait minutes."""
    doc = load_yaml(ALERTS)
    for rule in _rules(doc):
        if "alert" in rule:
            rule["for"] = for_
    path = directory / "alerts.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in doc["groups"] for r in g["rules"]]


def _prometheus_config(directory: Path, metrics_port: int) -> Path:
    path = directory / "prometheus.yml"
    config = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [
            {
                "job_name": "segmenter",
                "static_configs": [{"targets": [f"{servers.HOST}:{metrics_port}"]}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _api(prom: Server, path: str, **params: str) -> Any:
    url = f"http://{prom.address}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def _alerts(prom: Server, name: str) -> list[dict[str, Any]]:
    return [a for a in _api(prom, "alerts")["alerts"] if a["labels"]["alertname"] == name]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Server]:
    """A Redis of this test's own, which it may stop without disturbing the others."""
    server = servers.start_redis(tmp_path / "redis")
    yield server
    server.stop()


def test_dashboard_queries_return_data_and_a_broken_redis_fires_its_alert(
    promtool: str, settings: Settings, own_redis: Server, tmp_path: Path
) -> None:
    s = settings.replace(redis_url=f"redis://{own_redis.address}/0")
    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    prom: Server | None = None
    try:
        procs.append(spawn(s, str(tmp_path / "segmenter.log")))
        # About 90 s of traffic at most, 1 % malformed so dead letters have reasons.
        generator = [sys.executable, "-m", "loadtest.dev", "generate", "--users", "600"]
        generator += ["--events", "36000", "--rate", "400", "--bad-ratio", "0.01"]
        with open(tmp_path / "generator.log", "ab") as log:
            procs.append(
                subprocess.Popen(generator, env=env_of(s), stdout=log, stderr=log, cwd=ROOT)
            )
        work = tmp_path / "prometheus"
        work.mkdir()
        rules = _test_rules(work, for_=INTERVAL)
        prom = servers.start_prometheus(work, _prometheus_config(work, s.metrics_port))
        # The repository's expressions, every rule loaded; only the `for`s are shorter.
        repo = _rules(load_yaml(ALERTS))
        assert [r["expr"] for r in _rules(load_yaml(rules))] == [r["expr"] for r in repo]
        names = sorted(r.get("alert") or r["record"] for r in repo)
        assert sorted(r["name"] for r in _rules(_api(prom, "rules"))) == names

        queries = dashboard_queries()
        missing = dict(queries)
        deadline = time.monotonic() + DATA_WITHIN_S
        while missing and time.monotonic() < deadline:
            for title, expr in list(missing.items()):
                if _api(prom, "query", query=expr)["result"]:
                    del missing[title]
            time.sleep(1)
        assert procs[0].poll() is None, (tmp_path / "segmenter.log").read_text()[-3000:]
        assert missing == {}, f"dashboard queries without data after {DATA_WITHIN_S:.0f}s"
        rules_now = _rules(_api(prom, "rules"))
        unhealthy = {r["name"]: r.get("lastError") for r in rules_now if r["health"] != "ok"}
        assert unhealthy == {}  # every rule evaluates on the live series
        print(
            f"\nall {len(queries)} dashboard queries have data after "
            f"{time.monotonic() - started:.0f}s"
        )

        assert _alerts(prom, ALERT) == []  # Redis is fine so far
        assert own_redis.stop()
        broken_at = time.monotonic()
        firing: list[dict[str, Any]] = []
        while not firing and time.monotonic() - broken_at < FIRE_WITHIN_S:
            time.sleep(0.5)
            firing = [a for a in _alerts(prom, ALERT) if a["state"] == "firing"]
        assert firing, f"{ALERT} did not fire within {FIRE_WITHIN_S:.0f}s of Redis stopping"
        (alert,) = firing
        assert alert["labels"]["instance"] == f"{servers.HOST}:{s.metrics_port}"
        assert alert["labels"]["severity"] == "critical"
        assert "Redis" in alert["annotations"]["summary"]
        print(
            f"{ALERT} firing {time.monotonic() - broken_at:.1f}s after Redis stopped; "
            f"test took {time.monotonic() - started:.0f}s"
        )
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)
        if prom is not None:
            prom.stop()
