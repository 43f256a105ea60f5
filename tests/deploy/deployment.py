"""The deployment files of the repository, read as the tests need them: the compose file,
the files its services mount, the Prometheus config and alert rules, and the dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from consumers.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "segmenter.json"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "compose_spec" / "compose-spec.json"

#: What the dashboard's template variables and Grafana's interval become in a test query.
TEST_VARIABLES = {"$__rate_interval": "30s", "${instance}": ".*", "$instance": ".*"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def parse_file(path: Path) -> Any:
    """Parse a config file by its extension (YAML or JSON); raise if it does not parse."""
    if path.suffix == ".json":
        return json.loads(path.read_text())
    if path.suffix in (".yml", ".yaml"):
        return load_yaml(path)
    raise ValueError(f"{path}: not a YAML or JSON file")


def compose() -> dict[str, Any]:
    """docker-compose.yml with its YAML anchors and merge keys resolved."""
    doc = load_yaml(COMPOSE)
    assert isinstance(doc, dict)
    return doc


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of every bind mount of a compose service, in the short
    ``./src:/dst[:mode]`` syntax or the long one; named volumes are left out."""
    mounts: list[tuple[Path, str]] = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type") == "bind":
                mounts.append((ROOT / v["source"], v["target"]))
            continue
        source, target = v.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((ROOT / source, target))
    return mounts


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The file on the host that ``container_path`` is inside the service's container,
    through its bind mounts, or None if no mount covers it."""
    for source, target in bind_mounts(service):
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1 :]
    return None


def dashboard() -> dict[str, Any]:
    doc = json.loads(DASHBOARD.read_text())
    assert isinstance(doc, dict)
    return doc


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel that shows data (rows left out), nested rows' panels included."""
    panels: list[dict[str, Any]] = []
    for p in dashboard()["panels"]:
        if p["type"] == "row":
            panels.extend(p.get("panels", []))
        else:
            panels.append(p)
    return panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title and target ref, PromQL) of every dashboard query, with the template
    variables substituted as in :data:`TEST_VARIABLES`."""
    out = []
    for p in dashboard_panels():
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in TEST_VARIABLES.items():
                expr = expr.replace(var, value)
            out.append((f"{p['title']} [{t['refId']}]", expr))
    return out


def alert_rules() -> list[dict[str, Any]]:
    """The alerting rules of alerts.yml (recording rules left out)."""
    return [r for g in load_yaml(ALERTS)["groups"] for r in g["rules"] if "alert" in r]


def exposed_metric_names() -> set[str]:
    """Every sample name the segmenter can expose (counters' ``_total``, histograms'
    ``_bucket``, ``_count`` and ``_sum``)."""
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
        }.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    return names


def referenced_metric_names(expr: str) -> set[str]:
    """The ``segmenter_*`` metric names a PromQL expression reads."""
    return set(re.findall(r"\bsegmenter_[a-z0-9_]+\b", expr))
