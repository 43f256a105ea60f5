"""docker-compose.yml, checked without a Docker engine: against the Compose Specification's
JSON schema, and every file it mounts or builds from exists and parses."""

from __future__ import annotations

import json
import shlex
from typing import Any

import jsonschema
import pytest

from loadtest.dev import parser
from tests.deploy.deployment import (
    COMPOSE_SCHEMA,
    ROOT,
    bind_mounts,
    compose,
    host_path,
    load_yaml,
    parse_file,
)

SEGMENTERS = ("segmenter-1", "segmenter-2")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return compose()


@pytest.fixture(scope="module")
def services(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["services"])


def test_compose_file_follows_the_compose_specification(doc: dict[str, Any]) -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert errors == []


def test_the_schema_catches_a_mistake(doc: dict[str, Any]) -> None:
    """The check above can fail: an unknown service key is an error."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    broken = {**doc, "services": {**doc["services"], "redis": {"image": "x", "imagee": "y"}}}
    assert not jsonschema.Draft202012Validator(schema).is_valid(broken)


def test_every_service_of_a_full_deployment_is_there(services: dict[str, Any]) -> None:
    assert set(services) == {
        "kafka",
        "kafka-init",
        "redis",
        *SEGMENTERS,
        "generator",
        "prometheus",
        "grafana",
    }
    assert services["kafka"]["image"].startswith("apache/kafka:")
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper


def test_every_mounted_file_exists_and_parses(services: dict[str, Any]) -> None:
    mounted = 0
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            assert source.exists(), f"{name} mounts {source}, which does not exist"
            files = sorted(p for p in source.rglob("*") if p.is_file())
            for path in files if source.is_dir() else [source]:
                assert parse_file(path) is not None, f"{name}: {path} is empty"
                mounted += 1
    assert mounted >= 5  # prometheus config and rules, datasource, provider, dashboard


def test_images_built_here_have_their_dockerfile(services: dict[str, Any]) -> None:
    built = {n: s["build"] for n, s in services.items() if "build" in s}
    assert set(built) == {*SEGMENTERS, "generator"}
    dockerfile = (ROOT / "Dockerfile").read_text()
    for build in built.values():
        assert (ROOT / build["context"] / "Dockerfile").is_file()
        assert f" AS {build['target']}\n" in dockerfile
    # The segmenters run the runtime image; only the generator gets the development tools.
    assert {built[n]["target"] for n in SEGMENTERS} == {"runtime"}
    assert built["generator"]["target"] == "dev"
    runtime = dockerfile.split(" AS dev")[0]
    assert "COPY loadtest" not in runtime and "COPY loadtest" in dockerfile


def test_two_segmenter_replicas_in_one_group(services: dict[str, Any]) -> None:
    envs = [services[n]["environment"] for n in SEGMENTERS]
    assert {e["SEGMENTER_GROUP_ID"] for e in envs} == {"segmenter"}
    assert len({e["SEGMENTER_INSTANCE_ID"] for e in envs}) == 2
    for n in SEGMENTERS:
        assert services[n]["command"] == ["run"]
        assert services[n]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "healthcheck" in services[n]


def test_generator_command_is_one_the_cli_accepts(services: dict[str, Any]) -> None:
    args = parser().parse_args(services["generator"]["command"])
    assert args.command == "generate"
    assert args.rate and args.users and args.events and args.bad_ratio > 0


def test_init_creates_the_topics_the_segmenter_reads_and_writes(services: dict[str, Any]) -> None:
    script = " ".join(services["kafka-init"]["command"])
    topics = shlex.split(script.split("for t in ", 1)[1].split(";", 1)[0])
    assert {"shop.clicks", "shop.purchases"} <= set(topics)
    assert "--topic segments.current" in script and "cleanup.policy=compact" in script


def test_prometheus_loads_the_rules_and_scrapes_both_replicas(services: dict[str, Any]) -> None:
    prom = services["prometheus"]
    config_in_container = next(
        a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file=")
    )
    config_path = host_path(prom, config_in_container)
    assert config_path is not None and config_path.is_file()
    config = load_yaml(config_path)
    config_dir = config_in_container.rsplit("/", 1)[0]
    for rule_file in config["rule_files"]:
        in_container = rule_file if rule_file.startswith("/") else f"{config_dir}/{rule_file}"
        on_host = host_path(prom, in_container)
        assert on_host is not None and on_host.is_file(), f"{rule_file} is not mounted"
    port = {services[n]["environment"]["SEGMENTER_METRICS_PORT"] for n in SEGMENTERS}
    targets = {
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    assert targets == {f"{n}:{p}" for n in SEGMENTERS for p in port}


def test_grafana_provisions_the_datasource_and_the_dashboard(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    datasources = host_path(grafana, "/etc/grafana/provisioning/datasources")
    assert datasources is not None
    (ds,) = [d for f in datasources.glob("*.yml") for d in load_yaml(f)["datasources"]]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = host_path(grafana, "/etc/grafana/provisioning/dashboards")
    assert providers is not None
    (provider,) = [p for f in providers.glob("*.yml") for p in load_yaml(f)["providers"]]
    dashboards = host_path(grafana, provider["options"]["path"])
    assert dashboards is not None
    assert [p.name for p in dashboards.glob("*.json")] == ["segmenter.json"]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home) == dashboards / "segmenter.json"
