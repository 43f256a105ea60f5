"""The segmenter through a SASL_SSL listener of Apache Kafka (SCRAM-SHA-256, a certificate
of a CA the test makes): it runs end to end as on a plaintext broker; a wrong password and
an untrusted certificate each stop it with one readable error that names the setting to
fix, and no secret is printed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from consumers import topics
from loadtest.devstack import install, servers
from loadtest.devstack.servers import SaslSsl, Server
from stream.features import full_features
from stream.settings import Settings
from tests.integration.certs import make_server_cert
from tests.integration.conftest import cli, produce
from tests.integration.kafka_read import read_topic
from tests.integration.shoppers import TYPE_FIELDS, make_events

pytestmark = pytest.mark.integration

USER = "segmenter"
PASSWORD = "scram-pw-7c1d"


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int, Path]]:
    """An Apache Kafka with a SASL_SSL listener (user :data:`USER`) beside its plaintext
    one: (the server, the SASL_SSL port, the CA's certificate)."""
    if install.java_bin() is None:
        pytest.skip("needs Apache Kafka, which needs Java 17: Tansu has no SASL_SSL listener")
    d = tmp_path_factory.mktemp("kafka-sasl")
    cert = make_server_cert(d)
    port = servers.free_port()
    server = servers.start_kafka(
        d / "kafka", sasl_ssl=SaslSsl(port, cert.keystore_pem(), ((USER, PASSWORD),))
    )
    yield server, port, cert.ca
    server.stop()


@pytest.fixture
def sasl_settings(settings: Settings, sasl_kafka: tuple[Server, int, Path]) -> Settings:
    """This test's settings, on the SASL_SSL listener, with its input topics made there."""
    _, port, ca = sasl_kafka
    s = settings.replace(
        kafka_bootstrap=f"127.0.0.1:{port}",
        kafka_sasl_password=PASSWORD,
        transactional=True,
        extra={
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-256",
            "sasl.username": USER,
            "ssl.ca.location": str(ca),
        },
    )
    topics.create_topics(
        topics.admin_client(s), {s.clicks_topic: (4, {}), s.purchases_topic: (4, {})}
    )
    return s


def test_the_segmenter_runs_over_sasl_ssl(
    sasl_settings: Settings,
    sasl_kafka: tuple[Server, int, Path],
    run_segmenter: Any,
    rds: redis.Redis,
) -> None:
    s = sasl_settings
    messages, expected = make_events(s, n_users=40, seed=23)
    produce(s, messages)  # over SASL_SSL too
    running = run_segmenter(s)
    running.wait(lambda st: st.messages >= len(messages))
    stats = running.finish()
    assert stats.messages == len(messages) and stats.dead_letters == 0
    for uid, exp in expected.items():
        h = rds.hgetall(f"{s.redis_prefix}user:{{{uid}}}")
        f = full_features(orjson.loads(h["features"]))
        for etype, field in TYPE_FIELDS.items():
            assert f[field] == exp.counts[etype], (uid, field)
        assert h["segment"] != ""
    # Every user's first segment reached the output topic (read on the broker's other
    # listener).
    server, _, _ = sasl_kafka
    firsts = {
        m["user_id"]
        for r in read_topic(server.address, s.changes_topic)
        if (m := orjson.loads(r.value or b"{}"))["previous_segment"] is None
    }
    assert firsts == set(expected)


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ("wrong password", "refused the SASL credentials"),
        ("untrusted certificate", "SEGMENTER_KAFKA__SSL__CA__LOCATION"),
    ],
)
def test_a_wrong_password_or_an_untrusted_certificate_is_one_readable_error(
    sasl_settings: Settings, fault: str, says: str
) -> None:
    s = sasl_settings
    if fault == "wrong password":
        s = s.replace(kafka_sasl_password="not-the-password-9e")
    else:
        s = s.replace(extra={k: v for k, v in s.extra.items() if k != "ssl.ca.location"})
    out = cli(s, "run", timeout=90)
    printed = out.stdout + out.stderr
    assert out.returncode == 1, printed
    assert printed.count(says) == 1, printed
    assert "Traceback" not in printed
    assert "%3|" not in printed  # no stream of librdkafka's own log lines
    assert PASSWORD not in printed and "not-the-password-9e" not in printed
