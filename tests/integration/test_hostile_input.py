"""Thousands of hostile payloads through the real pipeline: none stops it, each bad one
lands in the dead-letter topic with its reason, the good events around them count."""

from __future__ import annotations

import random
import time
from collections import Counter

import orjson
import pytest
import redis

from stream.events import DeadLetter, decode
from stream.features import full_features
from stream.settings import Settings
from tests.integration.conftest import produce
from tests.integration.kafka_read import read_topic
from tests.integration.shoppers import make_events
from tests.stream.test_decode_fuzz import REASONS, mutate

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fuzz_corpus_end_to_end(settings: Settings, rds: redis.Redis, run_segmenter) -> None:
    good, expected = make_events(settings, n_users=300, seed=21)
    rng = random.Random(99)
    now = int(time.time() * 1000)
    bad: list[bytes] = []
    accepted_fuzz = 0
    mixed: list[tuple[str, bytes | None, bytes]] = []
    for i, msg in enumerate(good):
        mixed.append(msg)
        if i % 2 == 0:
            raw, key = mutate(rng)
            # The fuzz corpus is built around a 2027 "now": re-base its timestamps here.
            raw = raw.replace(b"1799999999000", str(now - 1000).encode())
            if isinstance(decode(raw, key, "t", 0, 0, now), DeadLetter):
                bad.append(raw)
            else:
                accepted_fuzz += 1
            mixed.append((settings.clicks_topic, key, raw))
    assert len(bad) > 2000
    produce(settings, mixed)
    running = run_segmenter(settings)
    running.wait(lambda st: st.messages >= len(mixed), timeout=120)
    stats = running.finish()
    assert stats.dead_letters == len(bad)

    dead = read_topic(settings.kafka_bootstrap, settings.deadletter_topic)
    assert Counter(r.value for r in dead) == Counter(bad)
    assert {r.headers["reason"].decode() for r in dead} <= REASONS
    positions = {(r.headers["source_partition"], r.headers["source_offset"]) for r in dead}
    assert len(positions) == len(dead)
    p = settings.redis_prefix
    for uid, exp in expected.items():
        f = full_features(orjson.loads(rds.hget(f"{p}user:{{{uid}}}", "features")))
        assert f["events_30d"] == sum(exp.counts.values()), uid
    print(
        f"\nfuzz: {len(good)} good events, {len(bad)} malformed -> {len(dead)} dead letters, "
        f"{accepted_fuzz} fuzz mutants valid; every good user's count exact"
    )
