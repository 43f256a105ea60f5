"""The user hash is written whole, one short field per feature, and stays in Redis's
compact encoding at Redis's own defaults."""

from __future__ import annotations

import pytest
import redis

from loadtest.devstack.servers import Server
from state.redis_store import RedisStore
from stream.batch import UserUpdate
from stream.events import Event
from stream.feature_registry import DAY_MS
from stream.features import apply_events, compute_features, features_from_hash

pytestmark = pytest.mark.integration

T = 1_700_000_000_000


def test_a_feature_back_at_zero_loses_its_field_and_the_hash_stays_compact(
    redis_server: Server,
) -> None:
    store = RedisStore(f"redis://{redis_server.address}/0", prefix="hash:")
    rds = redis.Redis(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    before = rds.config_get("hash-max-listpack-value")["hash-max-listpack-value"]
    try:
        rds.config_set("hash-max-listpack-value", 64)  # Redis's default
        kinds = ("view", "click", "add_to_cart", "search", "purchase") * 40
        events = [
            Event(f"e{i}", "u1", kind, T + i * 10_000, "clicks", 3, i, amount=19.5, price=19.5)
            for i, kind in enumerate(kinds)
        ]
        state = apply_events(None, events).state
        state.segment, state.segment_name = 2, "window_shopper_more_activity"
        now = compute_features(state, state.last_event_ms)
        assert store.write_updates([UserUpdate("u1", state, now, None, None, None)], 1, 0).written
        h = rds.hgetall("hash:user:{u1}")
        assert h["counts:views"] == "40,40,40,40,40,40"
        assert features_from_hash(h) == now
        assert rds.object("encoding", "hash:user:{u1}") == "listpack"
        # Two years on every window is empty: the counts and window spends go from the hash.
        later = compute_features(state, state.last_event_ms + 730 * DAY_MS)
        update = UserUpdate("u1", state, later, 2, None, None)
        assert store.write_updates([update], 1, 0).written
        h = rds.hgetall("hash:user:{u1}")
        assert not any(k.startswith("counts:") for k in h) and "spend_30d" not in h
        assert features_from_hash(h) == later and h["_o:clicks:3"] == "199"
        assert rds.object("encoding", "hash:user:{u1}") == "listpack"
    finally:
        rds.config_set("hash-max-listpack-value", before)
        store.close()
        rds.close()
