"""Per-user writes are fenced by input offsets: stale state never overwrites newer."""

from __future__ import annotations

import orjson
import pytest
import redis

from loadtest.devstack.servers import Server
from state.redis_store import RedisStore
from stream.batch import UserUpdate
from stream.events import Event
from stream.features import apply_events, compute_features, full_features

pytestmark = pytest.mark.integration


def update(offsets: range, segment: int, previous: int | None) -> UserUpdate:
    events = [Event(f"e{o}", "u1", "view", 1_700_000_000_000 + o, "clicks", 3, o) for o in offsets]
    state = apply_events(None, events).state
    state.segment = segment
    return UserUpdate("u1", state, compute_features(state), previous, None, None)


def test_an_older_write_is_refused_and_a_newer_one_accepted(redis_server: Server) -> None:
    store = RedisStore(f"redis://{redis_server.address}/0", prefix="fence:")
    rds = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    try:
        newer = store.write_updates([update(range(0, 10), 1, None)], 1, 0)
        assert (newer.written, newer.fenced, newer.moves) == (1, 0, 1)
        # A process that lost the partition comes back with state up to offset 5 only.
        stale = store.write_updates([update(range(0, 6), 2, None)], 1, 0)
        assert (stale.written, stale.fenced, stale.moves) == (0, 1, 0)
        h = rds.hgetall("fence:user:{u1}")
        assert h["_o:clicks:3"] == "9"
        assert full_features(orjson.loads(h["features"]))["views_30d"] == 10
        assert h["segment"] == "1"
        assert rds.smembers("fence:segment:{1}:members") == {"u1"}
        assert not rds.exists("fence:segment:{2}:members")
        # The rightful owner moves on.
        moved = store.write_updates([update(range(0, 12), 2, 1)], 1, 0)
        assert (moved.written, moved.fenced, moved.moves) == (1, 0, 1)
        assert rds.hget("fence:user:{u1}", "_o:clicks:3") == "11"
        assert rds.smembers("fence:segment:{2}:members") == {"u1"}
        assert not rds.smembers("fence:segment:{1}:members")
    finally:
        store.close()
        rds.close()


def test_a_write_that_never_saw_a_partition_the_stored_state_has_is_refused(
    redis_server: Server,
) -> None:
    """A reassessment (or a stale process) that read the state before events from a second
    partition were applied must not overwrite them, though its own offsets are current."""
    store = RedisStore(f"redis://{redis_server.address}/0", prefix="fence2:")
    rds = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    try:
        clicks = [
            Event(f"c{o}", "u1", "view", 1_700_000_000_000 + o, "clicks", 3, o) for o in range(5)
        ]
        read = apply_events(None, clicks).state  # what the reassessing process read
        buys = [
            Event(f"p{o}", "u1", "purchase", 1_700_000_100_000 + o, "purchases", 3, o, amount=9.0)
            for o in range(2)
        ]
        owner = apply_events(read.copy(), buys).state  # the owner applied two purchases
        w = store.write_updates(
            [UserUpdate("u1", owner, compute_features(owner), None, None, None)], 1, 0
        )
        assert w.written == 1
        read.segment = 4
        late = store.write_updates(
            [UserUpdate("u1", read, compute_features(read), None, None, None)], 1, 0
        )
        assert (late.written, late.fenced) == (0, 1)
        h = rds.hgetall("fence2:user:{u1}")
        assert full_features(orjson.loads(h["features"]))["purchases_30d"] == 2 and h["_on"] == "2"
    finally:
        store.close()
        rds.close()
