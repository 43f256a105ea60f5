"""Redis coming back with less than it acknowledged, on the real broker and Redis.

Redis here runs without persistence, so a restart empties it, as a server without an
append-only file does, or one failed over to a replica that had nothing yet. The segmenter
must notice, replay from Kafka what Redis lost (publishing nothing twice), and never give
a segment id or a model version downstream readers have seen to something else.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import TopicPartition

from consumers import topics
from loadtest.devstack import servers
from stream.messages import iso_ms
from stream.settings import Settings
from tests.integration.conftest import produce, spawn, stop_gracefully
from tests.integration.kafka_read import committed, read_topic
from tests.integration.shoppers import make_events
from tests.integration.test_faults import check_exact, wait_committed, wait_settled

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _model(rds: redis.Redis, prefix: str) -> dict:
    doc = rds.get(f"{prefix}model")
    assert doc is not None, "no model in Redis"
    return orjson.loads(doc)


def _wait_model(rds: redis.Redis, prefix: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = rds.get(f"{prefix}model")
        if doc is not None and orjson.loads(doc).get("ids"):
            return orjson.loads(doc)
        time.sleep(0.5)
    raise AssertionError("no seeded model in Redis in time")


def _own_redis(
    settings: Settings, tmp_path: Path, **changes: object
) -> tuple[servers.Server, Settings, redis.Redis]:
    """A Redis of the test's own, without persistence (a restart comes back empty), the
    settings pointed at it (with ``changes``) and a client."""
    own = servers.start_redis(tmp_path / "redis")
    s = settings.replace(redis_url=f"redis://{own.address}/0", **changes)
    return own, s, redis.Redis(host=servers.HOST, port=own.port, decode_responses=True)


def _restart_empty(own: servers.Server, rds: redis.Redis) -> tuple[servers.Server, redis.Redis]:
    """Restart Redis ``own`` (no persistence: it comes back empty) on its port and dir."""
    assert own.stop()
    rds.close()
    own = servers.start_redis(Path(own.workdir), own.port)
    return own, redis.Redis(host=servers.HOST, port=own.port, decode_responses=True)


def _produce_and_settle(
    s: Settings,
    rds: redis.Redis,
    messages: list[tuple[str, bytes | None, bytes]],
    ends: dict[tuple[str, int], int],
) -> None:
    """Produce ``messages``, add their partitions' ends to ``ends``, and wait until the
    group committed them all and nobody waits to be moved."""
    for key, end in produce(s, messages).items():
        ends[key] = max(ends.get(key, 0), end)
    wait_committed(s, ends)
    wait_settled(s, rds)


@pytest.mark.parametrize("segmenter_too", [False, True], ids=["redis", "redis-and-segmenter"])
def test_redis_restarted_empty_mid_load(
    txn_settings: Settings, tmp_path: Path, segmenter_too: bool
) -> None:
    own, s, rds = _own_redis(txn_settings, tmp_path)
    p = s.redis_prefix
    messages, expected = make_events(s, n_users=800, seed=29)
    half = len(messages) // 2
    log = tmp_path / "segmenter.log"
    ends = produce(s, messages[:half])
    proc = spawn(s, str(log))
    try:
        try:
            wait_committed(s, ends)
            wait_settled(s, rds)
            before = _wait_model(rds, p)
            if segmenter_too:
                # Both gone at once: nothing of the model is left in memory either.
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
            own, rds = _restart_empty(own, rds)
            if segmenter_too:
                proc = spawn(s, str(log))
            _produce_and_settle(s, rds, messages[half:], ends)
        finally:
            assert stop_gracefully(s, proc) == 0
        after = _model(rds, p)
        figures = check_exact(s, rds, expected)
    finally:
        rds.close()
        own.stop()
    text = log.read_text()
    gap_lines = [line for line in text.splitlines() if "Redis holds less than" in line]
    # It came back with no key space at all: every partition's gap is of that kind.
    assert gap_lines and " empty (replaying " in gap_lines[0], gap_lines
    assert " behind (" not in gap_lines[0] and " replaced (" not in gap_lines[0]
    assert "rebuilt Redis from Kafka" in text
    # No segment id or model version given out twice: a segment of the model after the
    # loss is one of the model before it, or has an id that model never gave out.
    assert after["version"] > before["version"]
    reborn = [i for i in after["ids"] if i not in before["ids"] and i < before["next_id"]]
    assert reborn == [], (before["ids"], before["next_id"], after["ids"])
    changes = [orjson.loads(r.value) for r in read_topic(s.kafka_bootstrap, s.changes_topic)]
    versions = sorted({c["model_version"] for c in changes})
    print(
        f"\nRedis restarted empty{' with the segmenter' if segmenter_too else ''}: produced "
        f"{len(messages)}, counted {figures['counted']}, changes {figures['changes']}, "
        f"duplicate change ids {figures['duplicates']}; model version {before['version']} "
        f"-> {after['version']}, ids {before['ids']} (next {before['next_id']}) -> "
        f"{after['ids']}; versions in changes {versions[0]}..{versions[-1]}"
    )
    assert figures["counted"] == len(messages)


def _in_sync(replica: redis.Redis, primary: redis.Redis, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, p = replica.info("replication"), primary.info("replication")
        if r.get("master_link_status") == "up" and r.get("slave_repl_offset") == p.get(
            "master_repl_offset"
        ):
            return
        time.sleep(0.2)
    raise AssertionError("the replica did not catch up with the primary")


def _primary_and_replica(tmp_path: Path) -> tuple[servers.Server, servers.Server]:
    primary = servers.start_redis(tmp_path / "primary")
    replica = servers.start_redis(
        tmp_path / "replica", extra_args=("--replicaof", servers.HOST, str(primary.port))
    )
    return primary, replica


def test_failover_to_a_replica_that_lacks_the_last_writes(
    txn_settings: Settings, tmp_path: Path
) -> None:
    # A primary and its replica. The replica is promoted while the segmenter still writes
    # to the primary, so it holds what the primary held at that moment and nothing after:
    # Redis replication is asynchronous, and a failover loses what had not reached it.
    primary, replica = _primary_and_replica(tmp_path)
    s = txn_settings.replace(redis_url=f"redis://{primary.address}/0")
    prim = redis.Redis(host=servers.HOST, port=primary.port, decode_responses=True)
    repl = redis.Redis(host=servers.HOST, port=replica.port, decode_responses=True)
    messages, expected = make_events(s, n_users=600, seed=31)
    third = len(messages) // 3
    log = tmp_path / "segmenter.log"
    try:
        ends = produce(s, messages[:third])
        proc = spawn(s, str(log))
        try:
            wait_committed(s, ends)
            _in_sync(repl, prim)
            repl.replicaof("NO", "ONE")  # promoted: the last writes it will ever get
            held = repl.hgetall(f"{s.redis_prefix}applied")
            for key, end in produce(s, messages[third : 2 * third]).items():
                ends[key] = max(ends.get(key, 0), end)
            wait_committed(s, ends)
        finally:
            assert stop_gracefully(s, proc) == 0
        assert repl.hgetall(f"{s.redis_prefix}applied") == held  # the replica got none of it
        primary.stop()
        # The segmenter comes back pointed at the promoted replica, as after a failover.
        s = s.replace(redis_url=f"redis://{replica.address}/0")
        proc = spawn(s, str(log))
        try:
            for key, end in produce(s, messages[2 * third :]).items():
                ends[key] = max(ends.get(key, 0), end)
            wait_committed(s, ends)
            wait_settled(s, repl)
        finally:
            assert stop_gracefully(s, proc) == 0
        figures = check_exact(s, repl, expected)
    finally:
        prim.close()
        repl.close()
        primary.stop()
        replica.stop()
    text = log.read_text()
    gap_lines = [line for line in text.splitlines() if "Redis holds less than" in line]
    assert gap_lines and " behind (replaying " in gap_lines[0], gap_lines
    print(
        f"\nfailover to a lagging replica: produced {len(messages)}, counted "
        f"{figures['counted']}, changes {figures['changes']}, duplicate change ids "
        f"{figures['duplicates']}; {gap_lines[0].split('committed: ')[1]}"
    )
    assert figures["counted"] == len(messages)


def test_with_wait_nothing_is_committed_while_the_replica_is_away(
    txn_settings: Settings, tmp_path: Path
) -> None:
    primary, replica = _primary_and_replica(tmp_path)
    s = txn_settings.replace(
        redis_url=f"redis://{primary.address}/0",
        redis_wait_replicas=1,
        redis_wait_timeout_ms=300,
    )
    prim = redis.Redis(host=servers.HOST, port=primary.port, decode_responses=True)
    repl = redis.Redis(host=servers.HOST, port=replica.port, decode_responses=True)
    messages, expected = make_events(s, n_users=300, seed=37)
    half = len(messages) // 2
    log = tmp_path / "segmenter.log"
    stopped = False
    try:
        ends = produce(s, messages[:half])
        proc = spawn(s, str(log))
        try:
            wait_committed(s, ends)
            before = {
                t: committed(s.kafka_bootstrap, s.group_id, t, 4)
                for t in (s.clicks_topic, s.purchases_topic)
            }
            os.kill(replica.pid, signal.SIGSTOP)  # the replica stops answering
            stopped = True
            for key, end in produce(s, messages[half:]).items():
                ends[key] = max(ends.get(key, 0), end)
            time.sleep(6.0)
            during = {
                t: committed(s.kafka_bootstrap, s.group_id, t, 4)
                for t in (s.clicks_topic, s.purchases_topic)
            }
            assert during == before, "offsets were committed without the replica"
            assert proc.poll() is None
            os.kill(replica.pid, signal.SIGCONT)
            stopped = False
            wait_committed(s, ends)
            wait_settled(s, prim)
        finally:
            if stopped:
                os.kill(replica.pid, signal.SIGCONT)
            assert stop_gracefully(s, proc) == 0
        _in_sync(repl, prim)
        figures = check_exact(s, repl, expected)  # the replica holds everything
    finally:
        prim.close()
        repl.close()
        primary.stop()
        replica.stop()
    refusals = log.read_text().count("0 of 1 Redis replicas acknowledged")
    print(
        f"\nWAIT for 1 replica, replica stopped 6 s: produced {len(messages)}, counted "
        f"{figures['counted']}, duplicate change ids {figures['duplicates']}, batches "
        f"refused for want of the replica {refusals}"
    )
    assert refusals > 0
    assert figures["counted"] == len(messages)


@pytest.mark.parametrize("choice", ["stop", "continue"])
def test_redis_lost_what_kafka_no_longer_retains(
    txn_settings: Settings, tmp_path: Path, choice: str
) -> None:
    own, s, rds = _own_redis(txn_settings, tmp_path, on_lost_history=choice)
    try:  # whichever Redis runs last is stopped, whatever fails
        p = s.redis_prefix
        messages, expected = make_events(s, n_users=300, seed=31)
        half = len(messages) // 2
        log = tmp_path / "segmenter.log"
        ends = produce(s, messages[:half])
        proc = spawn(s, str(log))
        try:  # the older half, committed; then the segmenter stops
            wait_committed(s, ends)
            wait_settled(s, rds)
        finally:
            assert stop_gracefully(s, proc) == 0
        # Kafka drops the older half of every input partition, as retention would, and Redis
        # comes back empty: what it held of those records is gone for good.
        cut = {key: end // 2 for key, end in ends.items()}
        admin = topics.admin_client(s)  # kept: its futures resolve while it lives
        deleted = admin.delete_records(
            [TopicPartition(topic, part, off) for (topic, part), off in cut.items()]
        )
        for future in deleted.values():
            future.result(30)
        retained = {
            (r.key or b"").decode()
            for topic in (s.clicks_topic, s.purchases_topic)
            for r in read_topic(s.kafka_bootstrap, topic)
        }
        own, rds = _restart_empty(own, rds)
        try:
            restarted = iso_ms(int(time.time() * 1000))
            proc = spawn(s, str(log))
            if choice == "stop":
                assert proc.wait(120) == 1
                lines = [ln for ln in log.read_text().splitlines() if "no longer retains" in ln]
                assert len(lines) == 1, lines
                for (topic, part), off in cut.items():
                    gap = f"{topic}:{part} empty (replaying {off}..{ends[(topic, part)] - 1}"
                    assert f"{gap}; offsets 0..{off - 1} no longer in Kafka)" in lines[0]
                assert "SEGMENTER_ON_LOST_HISTORY=continue" in lines[0]
                assert rds.dbsize() == 0 or not rds.keys(f"{p}user:*")  # nothing rebuilt
                return
            try:
                _produce_and_settle(s, rds, messages[half:], ends)
            finally:
                assert stop_gracefully(s, proc) == 0
            marked = {
                u for u in expected if rds.hget(f"{p}user:{{{u}}}", "state_incomplete") == "true"
            }
        finally:
            rds.close()
            own.stop()
        # Every user the replay rebuilt from what Kafka retained, and no one else (a user all of
        # whose older events went comes back as a new one).
        assert marked == retained
        later = [
            m
            for r in read_topic(s.kafka_bootstrap, s.changes_topic)
            if (m := orjson.loads(r.value or b"{}"))["emitted_at"] > restarted
        ]
        theirs = [m for m in later if m["user_id"] in marked]
        assert theirs and all(m.get("state_incomplete") is True for m in theirs)
        assert not any("state_incomplete" in m for m in later if m["user_id"] not in marked)
        text = log.read_text()
        assert "no longer in Kafka" in text and "rebuilt Redis from Kafka" in text
        print(
            f"\nRedis lost what Kafka no longer retains ({choice}): {len(marked)} users marked "
            f"state_incomplete of {len(expected)}; {len(theirs)} changes of theirs after the loss"
        )
    finally:
        own.stop()
