"""End to end on the real broker and Redis: events in, Redis state and messages out."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import jsonschema
import orjson
import pytest
import redis

from consumers.app import Segmenter
from state.user_states import STATE_FIELD
from stream.errors import TopicLayoutError
from stream.features import full_features
from stream.settings import Settings
from tests.integration.conftest import segment_ids
from tests.integration.kafka_read import committed, read_topic
from tests.integration.shoppers import TYPE_FIELDS, make_events

pytestmark = pytest.mark.integration

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas" / "segment_change.schema.json").read_text()
)


def test_events_become_exact_redis_state_and_change_messages(
    settings: Settings, rds: redis.Redis, run_segmenter
) -> None:
    messages, expected = make_events(settings, n_users=160)
    from tests.integration.conftest import produce

    ends = produce(settings, messages)
    running = run_segmenter(settings)
    running.wait(lambda st: st.messages >= len(messages))
    stats = running.finish()
    assert stats.messages == len(messages)
    assert stats.dead_letters == 0

    p = settings.redis_prefix
    all_ids = segment_ids(rds, p)
    for uid, exp in expected.items():
        h = rds.hgetall(f"{p}user:{{{uid}}}")
        f = full_features(orjson.loads(h["features"]))
        for etype, field in TYPE_FIELDS.items():
            assert f[field] == exp.counts[etype], (uid, field)
        assert f["events_30d"] == sum(exp.counts.values())
        assert f["spend_30d"] == pytest.approx(exp.spend, abs=0.01)
        seg = h["segment"]
        assert rds.sismember(f"{p}segment:{{{seg}}}:members", uid)
        others = [
            i
            for i in all_ids
            if str(i) != seg and rds.sismember(f"{p}segment:{{{i}}}:members", uid)
        ]
        assert others == [], f"{uid} is a member of segments {others} besides {seg}"

    # Every user got a first segment announced, each message matches the published schema,
    # and the last message per user agrees with Redis.
    changes = read_topic(settings.kafka_bootstrap, settings.changes_topic)
    last: dict[str, dict[str, object]] = {}
    firsts = set()
    for rec in changes:
        msg = orjson.loads(rec.value)
        jsonschema.validate(msg, SCHEMA)
        assert rec.key == msg["user_id"].encode()
        assert rec.headers["change_id"] == msg["change_id"].encode()
        if msg["previous_segment"] is None:
            firsts.add(msg["user_id"])
        last[msg["user_id"]] = msg
    assert firsts == set(expected)
    assert len({orjson.loads(r.value)["change_id"] for r in changes}) == len(changes)
    for uid, msg in last.items():
        assert str(msg["segment"]) == rds.hget(f"{p}user:{{{uid}}}", "segment")

    # Offsets were committed to the end of both input topics.
    for topic in (settings.clicks_topic, settings.purchases_topic):
        want = {p: ends.get((topic, p), -1001) for p in range(4)}  # -1001: none committed
        assert committed(settings.kafka_bootstrap, settings.group_id, topic, 4) == want

    # The catalogue names every segment and counts its members.
    catalogue = {int(k): orjson.loads(v) for k, v in rds.hgetall(f"{p}segments").items()}
    model = orjson.loads(rds.get(f"{p}model"))
    assert sorted(catalogue) == sorted(model["ids"]) and model["k"] == settings.n_clusters
    assert sum(e["size"] for e in catalogue.values()) == len(expected)
    assert all(e["name"] and e["description"] for e in catalogue.values())


def test_bad_messages_go_to_dead_letters_and_good_ones_still_count(
    settings: Settings, rds: redis.Redis, run_segmenter
) -> None:
    from tests.integration.conftest import produce

    good, expected = make_events(settings, n_users=60, seed=2)
    bad = [
        (b"not json at all", "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b'{"event_id":"x1","type":"view","ts":1700000000000}', "missing_field"),
        (
            b'{"event_id":"x2","user_id":"user-0001","type":"purchase","ts":1700000000000,'
            b'"amount":-5}',
            "negative_value",
        ),
        (
            b'{"event_id":"x3","user_id":"user-0001","type":"teleport","ts":1700000000000}',
            "unknown_type",
        ),
        (
            b'{"event_id":"x4","user_id":"user-0001","type":"view","ts":"2300-01-01T00:00:00Z"}',
            "timestamp_out_of_range",
        ),
        (b"\xff\xfe\xfd", "not_utf8"),
        (b'{"pad":"' + b"x" * 70_000 + b'"}', "oversized"),
    ]
    mixed = []
    for i, msg in enumerate(good):
        mixed.append(msg)
        if i % 40 == 0 and i // 40 < len(bad):
            mixed.append((settings.clicks_topic, b"user-0001", bad[i // 40][0]))
    assert sum(1 for m in mixed if m not in good) == len(bad)
    produce(settings, mixed)
    running = run_segmenter(settings)
    running.wait(lambda st: st.messages >= len(mixed))
    stats = running.finish()
    assert stats.dead_letters == len(bad)

    dead = read_topic(settings.kafka_bootstrap, settings.deadletter_topic)
    assert sorted((r.value, r.headers["reason"].decode()) for r in dead) == sorted(bad)
    for r in dead:
        assert r.headers["source_topic"] == settings.clicks_topic.encode()
        assert int(r.headers["source_offset"]) >= 0
    p = settings.redis_prefix
    for uid, exp in expected.items():
        features = full_features(orjson.loads(rds.hget(f"{p}user:{{{uid}}}", "features")))
        assert features["events_30d"] == sum(exp.counts.values())


def test_replaying_the_topics_changes_nothing(
    settings: Settings, rds: redis.Redis, run_segmenter
) -> None:
    """A second group reading everything again finds the applied offsets beside each
    user's state and counts nothing twice. Seeing a change's triggering event again makes
    the segmenter publish that change again, byte for byte (its commit could have failed):
    no change id is new."""
    from tests.integration.conftest import produce

    messages, expected = make_events(settings, n_users=80, seed=3)
    produce(settings, messages)
    first = run_segmenter(settings)
    first.wait(lambda st: st.messages >= len(messages))
    first.finish()
    p = settings.redis_prefix
    # States are binary: read them with a client that does not decode replies.
    kw = rds.connection_pool.connection_kwargs
    raw = redis.Redis(host=kw["host"], port=kw["port"])
    # Each state is in its user's hash, or in the state key when long.
    before = {
        uid: (raw.hget(f"{p}user:{{{uid}}}", STATE_FIELD), raw.get(f"{p}user:{{{uid}}}:state"))
        for uid in expected
    }
    assert all(in_hash or in_key for in_hash, in_key in before.values())
    ids_before = {
        orjson.loads(r.value)["change_id"]
        for r in read_topic(settings.kafka_bootstrap, settings.changes_topic)
    }

    again = run_segmenter(settings.replace(group_id=settings.group_id + "-replay"))
    again.wait(lambda st: st.messages >= len(messages))
    stats = again.finish()
    assert stats.events_applied == 0
    assert stats.changes == 0
    for uid, exp in expected.items():
        after = rds.hgetall(f"{p}user:{{{uid}}}")
        assert full_features(orjson.loads(after["features"]))["events_30d"] == sum(
            exp.counts.values()
        )
        assert raw.hget(f"{p}user:{{{uid}}}", STATE_FIELD) == before[uid][0]
        assert raw.get(f"{p}user:{{{uid}}}:state") == before[uid][1]
    after = read_topic(settings.kafka_bootstrap, settings.changes_topic)
    assert {orjson.loads(r.value)["change_id"] for r in after} == ids_before


def test_metrics_and_health_endpoints(settings: Settings, run_segmenter) -> None:
    from tests.integration.conftest import produce

    messages, _ = make_events(settings, n_users=50, seed=4)
    produce(settings, messages)
    running = run_segmenter(settings)
    stop_http = running.segmenter.serve_http()
    try:
        running.wait(lambda st: st.messages >= len(messages))
        # The model is seeded right after the batch that filled the user sample.
        deadline = time.monotonic() + 30
        while not running.segmenter.model.ready and time.monotonic() < deadline:
            time.sleep(0.1)
        base = f"http://127.0.0.1:{settings.metrics_port}"
        assert urllib.request.urlopen(f"{base}/healthz").status == 200
        assert urllib.request.urlopen(f"{base}/readyz").status == 200
        text = urllib.request.urlopen(f"{base}/metrics").read().decode()
    finally:
        stop_http()
    processed = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("segmenter_events_total{") and 'outcome="processed"' in line
    )
    assert processed == len(messages)
    assert "user-" not in text  # no user ids in labels
    for name in (
        "segmenter_batch_duration_seconds_bucket",
        "segmenter_end_to_end_latency_seconds_count",
        "segmenter_segment_changes_total",
        "segmenter_model_ready 1.0",
    ):
        assert name in text


def test_refuses_input_topics_that_are_not_co_partitioned(settings: Settings) -> None:
    from consumers import topics

    bad = settings.replace(purchases_topic=settings.purchases_topic + "-two")
    topics.create_topics(topics.admin_client(bad), {bad.purchases_topic: (2, {})})
    with pytest.raises(TopicLayoutError, match="co-partitioned"):
        Segmenter(bad).start()


def test_missing_broker_is_a_readable_error(settings: Settings) -> None:
    from loadtest.devstack.servers import free_port
    from stream.errors import BrokerError

    port = free_port()
    with pytest.raises(BrokerError, match=f"cannot reach the Kafka broker at 127.0.0.1:{port}"):
        Segmenter(settings.replace(kafka_bootstrap=f"127.0.0.1:{port}")).start()
