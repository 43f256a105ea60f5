"""Users' states: short ones in the user hash, long ones in the state key, read back whole."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from loadtest.devstack.servers import Server
from state.redis_store import RedisStore
from state.user_states import INLINE_STATE_MAX, READ_CHUNK, STATE_FIELD
from stream.batch import UserUpdate
from stream.events import Event
from stream.features import apply_events, compute_features
from stream.state_codec import encode_state

pytestmark = pytest.mark.integration

T = 1_700_000_000_000
DAY_MS = 86_400_000


def user(uid: str, n: int, first_offset: int = 0) -> UserUpdate:
    """A user with ``n`` events, one a day, every fourth a purchase."""
    events = [
        Event(
            f"{uid}-{o}",
            uid,
            "purchase" if o % 4 == 3 else "view",
            T + (o - first_offset) * DAY_MS,
            "c",
            0,
            o,
            amount=10.0 + o,
        )
        for o in range(first_offset, first_offset + n)
    ]
    state = apply_events(None, events).state
    state.segment = n % 3
    return UserUpdate(uid, state, compute_features(state), None, None, None)


def check_states_round_trip(store: RedisStore, rds: Any, prefix: str) -> None:
    """Write light and busy users, read them back, and move one user's state from the
    state key to the hash and back; ``rds`` reads as text."""
    light = [user(f"u{i}", 1 + i % 5) for i in range(READ_CHUNK + 3)]
    busy = [user(f"b{i}", 200) for i in range(5)]
    assert all(len(encode_state(u.state)) <= INLINE_STATE_MAX for u in light)
    assert all(len(encode_state(u.state)) > INLINE_STATE_MAX for u in busy)
    updates = light + busy
    assert store.write_updates(updates, 1, 0).written == len(updates)
    wanted = [u.user_id for u in updates] + ["never-seen"]
    states = store.load_states(wanted)
    assert list(states) == wanted
    assert states.pop("never-seen") is None
    assert states == {u.user_id: u.state for u in updates}
    # A light user: one key, the state in the hash, which reads whole as text.
    assert rds.exists(f"{prefix}user:{{u5}}:state") == 0
    whole = rds.hgetall(f"{prefix}user:{{u5}}")
    assert whole["segment"] == str(light[5].state.segment)
    assert whole[STATE_FIELD].isascii() and len(whole[STATE_FIELD]) > 0
    # A busy user: the state in the state key, the hash's field empty.
    assert rds.hget(f"{prefix}user:{{b0}}", STATE_FIELD) == ""
    assert rds.exists(f"{prefix}user:{{b0}}:state") == 1

    # A state that shrinks (events past the windows) moves back to the hash, and the state
    # key goes; one that grows moves to the state key.
    shrunk = user("b1", 1, first_offset=500)
    grown = user("u7", 300, first_offset=100)
    assert store.write_updates([shrunk, grown], 2, 0).written == 2
    assert rds.exists(f"{prefix}user:{{b1}}:state") == 0
    assert rds.hget(f"{prefix}user:{{b1}}", STATE_FIELD) != ""
    assert rds.hget(f"{prefix}user:{{u7}}", STATE_FIELD) == ""
    assert store.load_states(["b1", "u7"]) == {"b1": shrunk.state, "u7": grown.state}


def test_states_are_read_back_whole_wherever_they_are_kept(redis_server: Server) -> None:
    store = RedisStore(f"redis://{redis_server.address}/0", prefix="states:")
    rds = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    try:
        check_states_round_trip(store, rds, "states:")
        assert rds.object("encoding", "states:user:{u5}") == "listpack"
        # A server that forgot its scripts (a restart) is answered by loading them again.
        rds.script_flush()
        assert store.load_states(["b0"])["b0"] is not None
    finally:
        store.close()
        rds.close()
