"""`segmenter model history|refit|versions|rollback` against a real Redis."""

from __future__ import annotations

import random

import orjson
import pytest
import redis

from state.redis_store import RedisStore
from state.user_states import STATE_FIELD, stored_state
from stream.checkpoint import ModelDelta, merge
from stream.events import Event
from stream.features import apply_events
from stream.scaling import MODEL_FEATURES, OnlineScaler
from stream.settings import Settings
from stream.state_codec import encode_state
from stream.watermark import PartitionClock
from tests.integration.conftest import cli

pytestmark = pytest.mark.integration
D = len(MODEL_FEATURES)


T0 = 1_700_000_000_000
HOUR = 3_600_000


def write_users(store: RedisStore, kind: str, n: int) -> list[str]:
    """``n`` users of one kind, their states written as a batch would, and sampled."""
    users = []
    rng = random.Random(kind)
    for i in range(n):
        uid = f"{kind}-{i:03d}"
        x = rng.gauss(1.0, 0.05)  # a little spread within the kind
        if kind == "big":  # five large orders
            evs = [
                Event(f"{uid}-{j}", uid, "purchase", T0 - j * HOUR, "p", 0, j, amount=300.0 * x)
                for j in range(5)
            ]
        elif kind == "small":  # one small order
            evs = [Event(f"{uid}-0", uid, "purchase", T0, "p", 0, 0, amount=5.0 * x)]
        else:  # browsing only
            evs = [Event(f"{uid}-{j}", uid, "view", T0 - j * HOUR, "c", 0, j) for j in range(40)]
        state = stored_state(encode_state(apply_events(None, evs).state))
        store.client.hset(store.keys.user(uid), STATE_FIELD, state)
        users.append(uid)
    store.sample_users(users, 1000, random.Random(0))
    return users


def test_history_refit_versions_and_rollback(settings: Settings, rds: redis.Redis) -> None:
    s = settings.replace(n_clusters=0, k_min=2, k_max=4, warmup_users=60, reservoir_size=300)
    params = s.model_params()
    store = RedisStore.from_settings(s)
    store.share_watermark({"c:0": PartitionClock(T0, 0)})  # the group's clock: T0
    write_users(store, "big", 50)
    write_users(store, "small", 50)
    scaler = OnlineScaler.empty(D)
    snapshot = store.snapshot(T0)
    delta = ModelDelta(0, 0, None, None, None, 0, scaler, 0, snapshot[:0])
    store.commit_model(lambda c: merge(c, delta, snapshot, params, 1000, T0), 10**6, 1000)
    rds.sadd(f"{s.redis_prefix}segment:{{1}}:members", "u-in-1")

    out = cli(s, "model", "history")
    assert out.returncode == 0, out.stderr
    assert "k = 2: k=2 is the largest k whose prediction strength" in out.stdout
    assert out.stdout.count(" born ") == 2

    # A third kind of customer arrives. A refit on the sample finds three segments, keeps
    # both old ids (their centres barely move) and announces the new one.
    write_users(store, "browser", 50)
    out = cli(s, "model", "refit")
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(rds.get(f"{s.redis_prefix}model"))
    assert doc["k"] == 3 and sorted(doc["ids"]) == [0, 1, 2] and doc["version"] == 2
    assert "segment 2 born" in out.stdout

    out = cli(s, "model", "versions")
    assert out.returncode == 0, out.stderr
    assert [int(line.split()[0]) for line in out.stdout.splitlines()[1:]] == [1, 2]

    out = cli(s, "model", "rollback", "1")
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(rds.get(f"{s.redis_prefix}model"))
    assert (doc["version"], doc["rolled_back_from"], doc["ids"]) == (3, 1, [0, 1])
    assert "segment 2 retired" in out.stdout
    assert doc["next_id"] == 3  # id 2 is never given out again

    out = cli(s, "model", "rollback", "99")
    assert out.returncode != 0 and "no model version 99" in out.stderr
    store.close()


def test_a_model_on_orders_only_features_refuses_a_process_with_other_features(
    settings: Settings, rds: redis.Redis
) -> None:
    rfm = ("frequency", "monetary", "days_without_purchase")
    s = settings.replace(
        n_clusters=2, warmup_users=60, reservoir_size=300, model_features=",".join(rfm)
    )
    params = s.model_params()
    store = RedisStore.from_settings(s)
    store.share_watermark({"c:0": PartitionClock(T0, 0)})
    write_users(store, "big", 50)
    write_users(store, "small", 50)
    snapshot = store.snapshot(T0, used=params.features)
    delta = ModelDelta(0, 0, None, None, None, 0, OnlineScaler.empty(D), 0, snapshot[:0])
    store.commit_model(lambda c: merge(c, delta, snapshot, params, 1000, T0), 10**6, 1000)

    out = cli(s, "model", "refit")
    assert out.returncode == 0, out.stderr
    doc = orjson.loads(rds.get(f"{s.redis_prefix}model"))
    assert doc["features"] == list(rfm) and doc["version"] == 2
    # k is fixed and the groups did not change: the refit keeps both ids, and says so.
    assert "refit: every segment kept its id" in out.stdout
    out = cli(s, "model", "history")
    assert out.returncode == 0, out.stderr
    assert "refit: every segment kept its id  (refit" in out.stdout

    # A process with the default features would read those centres as eight-dimensional
    # ones: it refuses, names the setting and both lists, and changes nothing.
    out = cli(s.replace(model_features=""), "model", "refit")
    assert out.returncode != 0
    assert "SEGMENTER_MODEL_FEATURES" in out.stderr and "clusters on frequency" in out.stderr
    assert orjson.loads(rds.get(f"{s.redis_prefix}model"))["version"] == 2
