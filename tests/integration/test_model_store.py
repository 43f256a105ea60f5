"""The shared model in Redis: version fence, history, rollback, reservoir, reassess queue."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from state.redis_store import RECOMMENDED_LISTPACK_VALUE, RedisStore
from state.user_states import STATE_FIELD, stored_state
from stream.checkpoint import Checkpoint, ModelDelta, ModelParams, merge, rollback
from stream.errors import ModelError
from stream.events import Event
from stream.features import apply_events
from stream.reassessment import QueueEntry
from stream.scaling import MODEL_FEATURES, OnlineScaler
from stream.state_codec import encode_state

pytestmark = pytest.mark.integration
D = len(MODEL_FEATURES)
P = ModelParams(k_min=2, k_max=3, warmup_users=30, reservoir_size=40, seed=1)


def delta(n: int, seed: int) -> ModelDelta:
    rng = np.random.default_rng(seed)
    pts = np.concatenate([rng.normal(c, 0.2, (n, D)) for c in (0.0, 5.0)])
    s = OnlineScaler.empty(D)
    for x in pts:
        s.learn(x)
    return ModelDelta(0, 0, None, None, None, 0, s, len(pts), pts[:0])


def test_a_concurrent_commit_is_merged_not_lost(store: RedisStore) -> None:
    calls = []

    def build(cur: Checkpoint | None) -> tuple[Checkpoint, list[dict[str, Any]]]:
        calls.append(None if cur is None else cur.merges)
        if len(calls) == 1:
            # Another process commits between this one's read and its write.
            store.commit_model(lambda c: merge(c, delta(5, 2), None, P, 1), 0, 1)
        return merge(cur, delta(5, 1), None, P, 2)

    doc, _ = store.commit_model(build, 0, 2)
    assert calls == [None, 1]  # the fenced write was refused, then built on merge 1
    assert doc.merges == 2 and doc.updates == 20
    stored = store.load_model()
    assert stored is not None and stored.merges == 2 and stored.updates == 20


def test_versions_are_kept_every_interval_and_trimmed(store: RedisStore) -> None:
    every_second = ModelParams(
        k_min=2, k_max=3, warmup_users=30, reservoir_size=40, publish_interval_ms=1000
    )
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(c, 0.2, (20, D)) for c in (0.0, 5.0)])
    store.commit_model(lambda c: merge(c, delta(20, 0), pts, every_second, 1000), 3000, 1000)
    for t in range(2, 11):
        doc, _ = store.commit_model(
            lambda c, t=t: merge(c, delta(2, t), None, every_second, t * 1000),
            3000,
            t * 1000,
            keep=3,
        )
        assert doc.version == t  # published every second
    kept = [v["version"] for v in store.model_versions()]
    # Kept: 1 (the seeding), then 4, 7, 10 (3 s apart); trimmed to the newest three.
    assert kept == [4, 7, 10]
    assert store.model_version(7).version == 7
    with pytest.raises(ModelError, match="no model version 1"):
        store.model_version(1)


def test_the_user_sample_is_uniform_over_users_and_bounded(store: RedisStore) -> None:
    rng = random.Random(1)
    size = 100
    # 2,000 users arrive in batches of 50: each ends in the sample with chance 1/20.
    users = [f"u{i:04d}" for i in range(2000)]
    for start in range(0, 2000, 50):
        assert store.sample_users(users[start : start + 50], size, rng) == min(size, start + 50)
    sampled = store.sampled_users()
    assert len(sampled) == size
    early = sum(1 for u in sampled if int(u[1:]) < 1000)
    assert 30 <= early <= 70  # half the users came first: about half the sample
    assert store.sample_users([], size, rng) == size  # nothing new: just the size


def test_the_snapshot_is_one_vector_per_sampled_user_as_of_the_watermark(
    store: RedisStore,
) -> None:
    day = 86_400_000
    t0 = 1_700_000_000_000
    for i, uid in enumerate(("a", "b")):
        ev = Event(f"e{i}", uid, "purchase", t0, "shop.purchases", 0, i, amount=50.0)
        state = stored_state(encode_state(apply_events(None, [ev]).state))
        store.client.hset(store.keys.user(uid), STATE_FIELD, state)
    store.sample_users(["a", "b", "never-written"], 10, random.Random(0))
    snap = store.snapshot(t0 + 40 * day)
    assert snap.shape == (2, D)
    recency = MODEL_FEATURES.index("days_without_purchase")
    np.testing.assert_allclose(snap[:, recency], np.log1p(40.0))  # as of the watermark
    assert store.snapshot(t0 + 40 * day, limit=1).shape == (1, D)


def test_seeding_is_kept_and_rollback_is_a_new_version(store: RedisStore) -> None:
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(c, 0.2, (20, D)) for c in (0.0, 5.0)])
    seeded, events = store.commit_model(lambda c: merge(c, delta(20, 3), pts, P, 5), 10**9, 5)
    assert seeded.ready and [e["event"] for e in events] == ["born", "born"]
    store.commit_model(lambda c: merge(c, delta(2, 4), None, P, 6), 10**9, 6)
    assert [v["version"] for v in store.model_versions()] == [1]  # seeding: kept
    old = store.model_version(1)
    doc, _ = store.commit_model(lambda c: rollback(c or old, old, 7), 10**9, 7)
    assert (doc.version, doc.rolled_back_from) == (2, 1)  # v1 was still published
    loaded = store.load_model()
    assert loaded is not None and loaded.centres == old.centres


def test_reassess_queue_and_members_of_retired_segments(store: RedisStore) -> None:
    assert store.queue(["a", "b"], version=0) == 2
    first = store.reassess_batch(10)
    assert sorted(first) == ["a", "b"] and {e.version for e in first.values()} == {0}
    assert first["a"].token != first["b"].token
    # Queued again (a segment retired at version 5): tokens kept, version raised.
    assert store.queue(["a", "c"], version=5) == 1
    again = store.queue_entries(["a", "b", "c", "nobody"])
    assert sorted(again) == ["a", "b", "c"]
    assert again["a"] == QueueEntry(5, first["a"].token) and again["b"] == first["b"]
    # Settled with the entry as it was read: a's version was raised since, so it stays
    # with a fresh token; b goes; c, settled with a token it never had, is left alone.
    settled = {
        "a": (first["a"], 4),
        "b": (first["b"], 4),
        "c": (QueueEntry(5, again["c"].token + 1), 5),
    }
    assert store.settle(settled) == 1
    after = store.queue_entries(["a", "b", "c"])
    assert sorted(after) == ["a", "c"] and after["c"] == again["c"]
    assert after["a"].version == 5 and after["a"].token != first["a"].token
    # Settled with -1 (published again, not resolved): stays, with a fresh token.
    assert store.settle({"c": (again["c"], -1)}) == 0
    assert store.queue_entries(["c"])["c"].token != again["c"].token
    store.client.sadd(store.keys.members(7), *[f"m{i}" for i in range(2500)])
    assert store.queue_members([7], version=6, chunk=1000) == 2500
    queued = store.reassess_batch(5000)
    assert len(queued) == 2502 and queued["m7"].version == 6


def test_encoding_advice_names_the_setting_when_hashes_would_not_stay_compact(
    store: RedisStore,
) -> None:
    r = store.client
    before = r.config_get("hash-max-listpack-value")["hash-max-listpack-value"]
    try:
        r.config_set("hash-max-listpack-value", RECOMMENDED_LISTPACK_VALUE)
        assert store.encoding_advice() is None
        r.config_set("hash-max-listpack-value", 64)
        advice = store.encoding_advice()
        assert advice is not None
        assert "hash-max-listpack-value 64" in advice
        assert str(RECOMMENDED_LISTPACK_VALUE) in advice
    finally:
        r.config_set("hash-max-listpack-value", before)
