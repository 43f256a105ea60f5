"""Per-user writes are fenced by input offsets: stale state never overwrites newer."""

from __future__ import annotations

import orjson
import pytest
import redis

from loadtest.devstack.servers import Server
from state.redis_store import RedisStore
from state.user_states import WRITE_CHUNK
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


def test_many_users_in_one_batch_are_fenced_each_on_their_own(redis_server: Server) -> None:
    """Users go several to a script call on a single server: each is still fenced alone."""
    store = RedisStore(f"redis://{redis_server.address}/0", prefix="fence3:")
    rds = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)

    def user(uid: str, last: int) -> UserUpdate:
        events = [
            Event(f"{uid}-{o}", uid, "view", 1_700_000_000_000 + o, "clicks", 1, o)
            for o in range(last + 1)
        ]
        state = apply_events(None, events).state
        return UserUpdate(uid, state, compute_features(state), None, None, None)

    try:
        n = 2 * WRITE_CHUNK + 7
        first = store.write_updates([user(f"u{i}", 9) for i in range(n)], 1, 0)
        assert (first.written, first.fenced) == (n, 0)
        # Every third user comes back stale, the others newer.
        again = [user(f"u{i}", 5 if i % 3 == 0 else 12) for i in range(n)]
        result = store.write_updates(again, 1, 0)
        stale = {f"u{i}" for i in range(n) if i % 3 == 0}
        assert result.fenced_users == stale and result.written == n - len(stale)
        for i in (0, 1, WRITE_CHUNK, n - 1):
            want = "9" if i % 3 == 0 else "12"
            assert rds.hget(f"fence3:user:{{u{i}}}", "_o:clicks:1") == want, i
        # A server that forgot its scripts (a restart) is answered by loading them again.
        rds.script_flush()
        assert store.write_updates([user("late", 3)], 1, 0).written == 1
    finally:
        store.close()
        rds.close()
