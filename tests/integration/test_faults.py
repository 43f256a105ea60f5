"""Fault injection on the real broker and Redis: every event counts exactly once.

Each test produces a known backlog, hurts the segmenter while it works through it, lets
it finish, and then checks every user's counts against what was produced, and every
change id on segments.changes for duplicates.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import KafkaException

from consumers import topics
from loadtest.devstack import servers
from stream.features import full_features
from stream.settings import Settings
from tests.integration.conftest import produce, segment_ids, spawn, stop_gracefully
from tests.integration.kafka_read import committed, read_topic
from tests.integration.shoppers import TYPE_FIELDS, Expected, make_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_committed(
    settings: Settings, ends: dict[tuple[str, int], int], timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = True
        for topic in (settings.clicks_topic, settings.purchases_topic):
            want = {p: ends.get((topic, p), -1001) for p in range(4)}
            try:
                got = committed(settings.kafka_bootstrap, settings.group_id, topic, 4)
            except KafkaException:  # a broker that just started may not answer yet
                got = {}
            if got != want:
                done = False
        if done:
            return
        time.sleep(0.5)
    raise AssertionError("the segmenter did not commit the whole backlog in time")


def wait_settled(settings: Settings, rds: redis.Redis, timeout: float = 60) -> None:
    """Wait until nobody waits to be moved: the reassessment queue is empty, no segment
    the model retired has members, and the model has not changed for longer than a
    process waits between refits. A refit that retires segments while the processes stop
    leaves members queued for the next owner of their partitions, which a test that
    stops every process never starts."""
    p = settings.redis_prefix
    quiet_s = settings.model_refit_min_interval_s + 1.0
    deadline = time.monotonic() + timeout
    version, since = None, time.monotonic()
    while time.monotonic() < deadline:
        doc = rds.get(f"{p}model")
        model = orjson.loads(doc) if doc else {}
        if model.get("version") != version:
            version, since = model.get("version"), time.monotonic()
        current = set(model.get("ids", ()))
        stragglers = sum(
            rds.scard(f"{p}segment:{{{i}}}:members")
            for i in segment_ids(rds, p)
            if i not in current
        )
        quiet = time.monotonic() - since >= quiet_s
        if not rds.hlen(f"{p}model:reassess") and not stragglers and quiet:
            return
        time.sleep(0.5)
    raise AssertionError("users still wait to leave retired segments, or the model still changes")


def check_exact(
    settings: Settings, rds: redis.Redis, expected: dict[str, Expected]
) -> dict[str, int]:
    """Assert exact per-user counts and membership, then everything :func:`check_changes`
    checks; return the figures."""
    p = settings.redis_prefix
    counted = 0
    all_ids = segment_ids(rds, p)
    for uid, exp in expected.items():
        h = rds.hgetall(f"{p}user:{{{uid}}}")
        f = full_features(orjson.loads(h["features"]))
        for etype, field in TYPE_FIELDS.items():
            assert f[field] == exp.counts[etype], (uid, field, f[field], exp.counts[etype])
        assert f["spend_30d"] == pytest.approx(exp.spend, abs=0.01), uid
        counted += int(f["events_30d"])
        seg = h["segment"]
        member_of = [i for i in all_ids if rds.sismember(f"{p}segment:{{{i}}}:members", uid)]
        assert member_of == [int(seg)], (uid, seg, member_of)
    return {"counted": counted, **check_changes(settings, rds, expected)}


def chain_breaks(messages: list[dict[str, Any]]) -> list[str]:
    """Users whose changes, in the order given, do not chain: the first from ``null``,
    each next one from the segment of the one before."""
    last: dict[str, Any] = {}
    broken: list[str] = []
    for msg in messages:
        uid = msg["user_id"]
        if msg["previous_segment"] != last.get(uid) and uid not in broken:
            broken.append(uid)
        last[uid] = msg["segment"]
    return broken


def check_changes(
    settings: Settings, rds: redis.Redis, expected: dict[str, Expected]
) -> dict[str, int]:
    """Read ``segments.changes`` (read_committed) and assert: no change id twice; one first
    segment per user; each user's changes chain; each user's last change is their segment
    in Redis; nobody is in a segment the newest model lacks. Return the figures."""
    p = settings.redis_prefix
    changes = read_topic(settings.kafka_bootstrap, settings.changes_topic)
    ids = Counter(orjson.loads(r.value)["change_id"] for r in changes)
    duplicates = sum(n - 1 for n in ids.values())
    twice = {cid for cid, n in ids.items() if n > 1}
    assert duplicates == 0, [
        (r.partition, r.offset, r.value)
        for r in changes
        if orjson.loads(r.value)["change_id"] in twice
    ][:6]
    # A user's changes share a key, so one partition holds them in publication order.
    ordered = [
        orjson.loads(r.value) for r in sorted(changes, key=lambda r: (r.partition, r.offset))
    ]
    firsts = Counter(m["user_id"] for m in ordered if m["previous_segment"] is None)
    assert set(firsts) == set(expected) and set(firsts.values()) == {1}
    broken = chain_breaks(ordered)
    assert broken == [], broken[:5]
    last = {m["user_id"]: m for m in ordered}
    for uid, msg in last.items():
        assert str(msg["segment"]) == rds.hget(f"{p}user:{{{uid}}}", "segment"), uid
    current = set(orjson.loads(rds.get(f"{p}model"))["ids"])  # type: ignore[arg-type]
    in_retired = [
        u for u in expected if int(rds.hget(f"{p}user:{{{u}}}", "segment")) not in current
    ]  # type: ignore[arg-type]
    assert in_retired == [], in_retired[:5]
    for i in segment_ids(rds, p):
        if i not in current:
            assert rds.scard(f"{p}segment:{{{i}}}:members") == 0, i
    return {
        "changes": len(changes),
        "duplicates": duplicates,
        "broken_chains": len(broken),
        "in_retired": len(in_retired),
    }


def test_kill_minus_nine_at_random_points(
    txn_settings: Settings, rds: redis.Redis, tmp_path: Path
) -> None:
    s = txn_settings
    messages, expected = make_events(s, n_users=1200, seed=11)
    ends = produce(s, messages)
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        proc = spawn(s, str(tmp_path / "segmenter.log"))
        time.sleep(rng.uniform(2.0, 4.5))  # start-up takes ~1.5 s; kill somewhere in the work
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
    final = spawn(s, str(tmp_path / "segmenter.log"))
    try:
        wait_committed(s, ends)
        wait_settled(s, rds)
    finally:
        assert stop_gracefully(s, final) == 0
    figures = check_exact(s, rds, expected)
    print(
        f"\nkill -9 x{kills}: produced {len(messages)}, counted {figures['counted']}, "
        f"changes {figures['changes']}, duplicate change ids {figures['duplicates']}"
    )
    assert figures["counted"] == len(messages)


def test_two_processes_one_killed_and_restarted(
    txn_settings: Settings, rds: redis.Redis, tmp_path: Path
) -> None:
    s = txn_settings
    messages, expected = make_events(s, n_users=1200, seed=12)
    ends = produce(s, messages)
    a_settings = s.replace(instance_id="a", metrics_port=servers.free_port())
    b_settings = s.replace(instance_id="b", metrics_port=servers.free_port())
    a = spawn(a_settings, str(tmp_path / "a.log"))
    b = spawn(b_settings, str(tmp_path / "b.log"))
    procs: list[subprocess.Popen[bytes]] = [a, b]
    try:
        time.sleep(4.0)
        b.send_signal(signal.SIGKILL)  # a takes over b's partitions ...
        b.wait(10)
        time.sleep(3.0)
        b = spawn(b_settings, str(tmp_path / "b.log"))  # ... and gives some back
        procs.append(b)
        wait_committed(s, ends)
        wait_settled(s, rds)
    finally:
        for proc in procs:
            if proc.poll() is None:
                own = a_settings if proc is a else b_settings
                assert stop_gracefully(own, proc) == 0
    figures = check_exact(s, rds, expected)
    print(
        f"\ntwo processes, one killed: produced {len(messages)}, counted {figures['counted']}, "
        f"changes {figures['changes']}, duplicate change ids {figures['duplicates']}"
    )
    assert figures["counted"] == len(messages)


def test_redis_stopped_mid_load_and_started_again(txn_settings: Settings, tmp_path: Path) -> None:
    # A Redis of its own, with an append-only file, so a restart keeps what was written.
    workdir = tmp_path / "redis"
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    own = servers.start_redis(workdir, extra_args=aof)
    s = txn_settings.replace(redis_url=f"redis://{own.address}/0")
    rds = redis.Redis(host=servers.HOST, port=own.port, decode_responses=True)
    messages, expected = make_events(s, n_users=1200, seed=13)
    half = len(messages) // 2
    ends = produce(s, messages[:half])
    proc = spawn(s, str(tmp_path / "segmenter.log"))
    try:
        try:
            wait_committed(s, ends)
            assert own.stop()
            # The second half arrives while Redis is gone for several seconds.
            for key, end in produce(s, messages[half:]).items():
                ends[key] = max(ends.get(key, 0), end)
            time.sleep(5.0)
            assert proc.poll() is None, "the segmenter exited while Redis was away"
            own = servers.start_redis(workdir, own.port, extra_args=aof)
            wait_committed(s, ends)
            failures = _metric(tmp_path / "segmenter.log")
            rds.close()
            rds = redis.Redis(host=servers.HOST, port=own.port, decode_responses=True)
            wait_settled(s, rds)
        finally:
            assert stop_gracefully(s, proc) == 0
            rds.close()
        rds = redis.Redis(host=servers.HOST, port=own.port, decode_responses=True)
        try:
            figures = check_exact(s, rds, expected)
        finally:
            rds.close()
    finally:
        own.stop()  # whatever failed above, the restarted server does not outlive the test
    print(
        f"\nRedis down 5 s: produced {len(messages)}, counted {figures['counted']}, "
        f"changes {figures['changes']}, duplicate change ids {figures['duplicates']}, "
        f"batches replayed {failures}"
    )
    assert figures["counted"] == len(messages)
    assert failures > 0


def _metric(log: Path) -> int:
    return log.read_text().count("batch not committed")


def test_broker_stopped_mid_load_and_started_again(
    txn_settings: Settings, rds: redis.Redis, tmp_path: Path
) -> None:
    # A broker of its own: the session's stays up for the other tests.
    workdir = tmp_path / "kafka"
    own = servers.start_kafka(workdir)
    s = txn_settings.replace(kafka_bootstrap=own.address)
    topics.create_topics(
        topics.admin_client(s), {s.clicks_topic: (4, {}), s.purchases_topic: (4, {})}
    )
    messages, expected = make_events(s, n_users=1200, seed=15)
    half = len(messages) // 2
    ends = produce(s, messages[:half])
    proc = spawn(s, str(tmp_path / "segmenter.log"))
    try:
        try:
            wait_committed(s, ends)
            controller = int(own.extra["controller_port"])
            assert own.stop()
            time.sleep(5.0)  # the broker is gone for several seconds
            assert proc.poll() is None, "the segmenter exited while the broker was away"
            own = servers.start_kafka(workdir, own.port, controller_port=controller)
            for key, end in produce(s, messages[half:]).items():
                ends[key] = max(ends.get(key, 0), end)
            wait_committed(s, ends, timeout=180)
            wait_settled(s, rds)
        finally:
            code = stop_gracefully(s, proc)
        assert code == 0
        figures = check_exact(s, rds, expected)
    finally:
        own.stop()  # whatever failed above, the restarted broker does not outlive the test
    print(
        f"\nbroker down 5 s: produced {len(messages)}, counted {figures['counted']}, "
        f"changes {figures['changes']}, duplicate change ids {figures['duplicates']}"
    )
    assert figures["counted"] == len(messages)
