"""Redis coming back with less than it acknowledged, on the real broker and Redis.

Redis here runs without persistence, so a restart empties it, as a server without an
append-only file does, or one failed over to a replica that had nothing yet. The segmenter
must notice, replay from Kafka what Redis lost (publishing nothing twice), and never give
a segment id or a model version downstream readers have seen to something else.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import orjson
import pytest
import redis

from loadtest.devstack import servers
from stream.settings import Settings
from tests.integration.conftest import produce, spawn, stop_gracefully
from tests.integration.kafka_read import read_topic
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


@pytest.mark.parametrize("segmenter_too", [False, True], ids=["redis", "redis-and-segmenter"])
def test_redis_restarted_empty_mid_load(
    txn_settings: Settings, tmp_path: Path, segmenter_too: bool
) -> None:
    workdir = tmp_path / "redis"
    own = servers.start_redis(workdir)  # no persistence: a restart comes back empty
    s = txn_settings.replace(redis_url=f"redis://{own.address}/0")
    p = s.redis_prefix
    rds = redis.Redis(host=servers.HOST, port=own.port, decode_responses=True)
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
            assert own.stop()
            if segmenter_too:
                # Both gone at once: nothing of the model is left in memory either.
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
            own = servers.start_redis(workdir, own.port)
            rds.close()
            rds = redis.Redis(host=servers.HOST, port=own.port, decode_responses=True)
            assert rds.dbsize() == 0
            if segmenter_too:
                proc = spawn(s, str(log))
            for key, end in produce(s, messages[half:]).items():
                ends[key] = max(ends.get(key, 0), end)
            wait_committed(s, ends)
            wait_settled(s, rds)
        finally:
            assert stop_gracefully(s, proc) == 0
        after = _model(rds, p)
        figures = check_exact(s, rds, expected)
    finally:
        rds.close()
        own.stop()
    text = log.read_text()
    assert "Redis holds less than the consumer group committed" in text
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
