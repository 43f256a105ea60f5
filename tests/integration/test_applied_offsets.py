"""How far Redis holds every write, on a real Redis: the epoch and the applied offsets."""

from __future__ import annotations

import pytest
import redis

from loadtest.devstack.servers import Server
from state.redis_store import RedisStore
from stream.errors import StateLostError

pytestmark = pytest.mark.integration


def test_the_epoch_is_written_once(store: RedisStore) -> None:
    assert store.read_applied(["c:0"]) == (None, {})
    epoch = store.ensure_epoch()
    assert len(epoch) == 16 and store.ensure_epoch() == epoch
    assert store.read_applied([]) == (epoch, {})


def test_offsets_are_raised_never_lowered(store: RedisStore) -> None:
    epoch = store.ensure_epoch()
    store.raise_applied({"c:0": 100, "c:1": 7}, epoch)
    store.raise_applied({"c:0": 40, "c:2": 3}, epoch)  # a replayed batch: 0 stays at 100
    assert store.read_applied(["c:0", "c:1", "c:2", "c:3"]) == (
        epoch,
        {"c:0": 100, "c:1": 7, "c:2": 3},
    )


def test_a_key_space_lost_mid_batch_records_nothing(
    store: RedisStore, redis_server: Server
) -> None:
    epoch = store.ensure_epoch()
    store.raise_applied({"c:0": 100}, epoch)
    # Redis loses everything (a restart without persistence) after the batch began.
    with redis.Redis(host="127.0.0.1", port=redis_server.port) as r:
        r.delete(store.keys.applied)
    with pytest.raises(StateLostError, match="key space changed during the batch"):
        store.raise_applied({"c:0": 200}, epoch)
    assert store.read_applied(["c:0"]) == (None, {})
    # Another key space: the offsets are refused under the old epoch, taken under the new.
    fresh = store.ensure_epoch()
    assert fresh != epoch
    with pytest.raises(StateLostError):
        store.raise_applied({"c:0": 200}, epoch)
    store.raise_applied({"c:0": 200}, fresh)
    assert store.read_applied(["c:0"]) == (fresh, {"c:0": 200})
