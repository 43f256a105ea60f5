"""`segmenter model history|refit|versions|rollback` against a real Redis."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import redis

from state.redis_store import RedisStore
from stream.checkpoint import ModelDelta, merge
from stream.scaling import MODEL_FEATURES, OnlineScaler
from stream.settings import Settings
from tests.integration.conftest import cli

pytestmark = pytest.mark.integration
D = len(MODEL_FEATURES)


def test_history_refit_versions_and_rollback(settings: Settings, rds: redis.Redis) -> None:
    s = settings.replace(n_clusters=0, k_min=2, k_max=4, warmup_users=60, reservoir_size=300)
    params = s.model_params()
    store = RedisStore.from_settings(s)
    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(c, 0.2, (50, D)) for c in (0.0, 4.0)])
    scaler = OnlineScaler.empty(D)
    for x in two:
        scaler.learn(x)
    store.push_reservoir(list(two), s.reservoir_size)
    delta = ModelDelta(0, 0, None, None, None, 0, scaler, len(two), two[:0])
    store.commit_model(lambda c: merge(c, delta, store.reservoir(), params, 1000), 10**6, 1000)
    rds.sadd(f"{s.redis_prefix}segment:{{1}}:members", "u-in-1")

    out = cli(s, "model", "history")
    assert out.returncode == 0, out.stderr
    assert "k = 2: k=2 has the highest silhouette" in out.stdout
    assert out.stdout.count(" born ") == 2

    # The behaviour splits: one group becomes two. A refit finds three segments, keeps
    # both old ids (their centres barely move) and announces the new one.
    three = np.concatenate([rng.normal(c, 0.2, (50, D)) for c in (0.0, 4.0, 8.0)])
    store.push_reservoir(list(three), s.reservoir_size)
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
