"""SegmentModel: one process's view of the shared model (decide frozen, learn locally)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from stream.checkpoint import Checkpoint, ModelParams, empty_checkpoint, merge, population
from stream.errors import ModelError
from stream.model import SegmentModel
from stream.scaling import MODEL_FEATURES

D = len(MODEL_FEATURES)
CENTRES = np.array([[0.0] * D, [4.0] * D, [8.0] * D])


def blobs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, 0.3, (n, D)) for c in CENTRES])[rng.permutation(3 * n)]


def params(**kw: float) -> ModelParams:
    base = {
        "k_min": 2,
        "k_max": 4,
        "warmup_users": 60,
        "reservoir_size": 200,
        "publish_interval_ms": 0,
        "seed": 1,
    }
    return ModelParams(**{**base, **kw})  # type: ignore[arg-type]


def seeded(seed: int = 0) -> SegmentModel:
    m = SegmentModel(params())
    for v in blobs(30, seed):
        m.observe(v)
    m.sync_local(now_ms=0)
    return m


def test_not_ready_until_a_sync_finds_enough_users() -> None:
    m = SegmentModel(params())
    for v in blobs(10):  # 30 users, fewer than warmup_users
        m.observe(v)
    m.sync_local(now_ms=0)
    assert not m.ready and (m.merges, m.version, m.updates) == (1, 0, 30)
    # (On 60 users, the prediction strength splits one of three blobs in about one draw in
    # a dozen; this one, like most, is read as the three blobs it is.)
    for v in blobs(10, seed=2):
        m.observe(v)
    events = m.sync_local(now_ms=1)
    assert m.ready and (m.merges, m.version, m.updates) == (2, 1, 60)
    assert m.n_clusters == 3 and m.ids == [0, 1, 2]
    assert [e["event"] for e in events] == ["born"] * 3
    choice = m.checkpoint.k_choice
    assert choice is not None and choice.k == 3 and "prediction strength" in choice.reason


def test_sync_local_fits_on_the_newest_observed_vectors() -> None:
    m = SegmentModel(params(refit_updates=100, refit_interval_ms=0))
    assert m.population is None and m.rfm is None
    for v in blobs(30):
        m.observe(v)
    m.sync_local(now_ms=0)
    assert m.ready and m.population is not None and m.rfm is not None
    np.testing.assert_allclose(m.population, population(blobs(30)))
    # 300 users of a population far away: the refit due after 100 updates is made on the
    # newest reservoir_size (200) vectors only, so the typical customer is one of them.
    far = blobs(100, seed=4) + 50.0
    for v in far:
        m.observe(v)
    events = m.sync_local(now_ms=1)
    assert events and all("automatic refit on 200 users" in e["cause"] for e in events)
    assert m.population is not None
    np.testing.assert_allclose(m.population, population(far[-200:]))
    assert m.checkpoint.fitted_at_updates == m.updates == 390


def test_the_population_and_rfm_sketches_come_from_the_checkpoint() -> None:
    m = seeded()
    ckpt = m.checkpoint
    assert ckpt.population is not None and ckpt.population == m.population
    n = SegmentModel(params())
    n.adopt(ckpt)
    assert n.population == m.population
    assert n.rfm is not None and m.rfm is not None
    assert n.rfm.to_dict() == m.rfm.to_dict() == ckpt.rfm
    # A checkpoint without them (written before they were kept) adopts as "not known".
    plain = ckpt.to_dict()
    old = Checkpoint.from_dict({k: v for k, v in plain.items() if k not in ("population", "rfm")})
    n.adopt(old)
    assert n.population is None and n.rfm is None and n.ready


def test_decisions_use_the_adopted_centres_and_learning_the_local_copy() -> None:
    m = seeded()
    before = m.centres().copy()
    for _ in range(5):
        m.learn(np.full(D, 4.2))
    np.testing.assert_array_equal(m.centres(), before)
    moved = np.linalg.norm(m.local_centres() - before, axis=1)
    assert (moved > 0).sum() == 1
    d = m.delta()
    assert d.learned == 5 and d.counts is not None and d.counts.sum() == 5
    assert d.shift is not None
    np.testing.assert_allclose(d.shift, m.local_centres() - before)


def test_the_step_is_a_running_mean_while_young_and_halflife_after() -> None:
    m = seeded()
    j = int(np.argmin(m.distances(m.scale(np.zeros(D)))))
    n = m.checkpoint.counts[j]
    c0 = m.local_centres()[j].copy()
    z = c0 + 0.1
    m.learn(m.scaler.inverse(z))  # published and learning scaler agree right after a sync
    step = max(1.0 / (n + 1.0), m.params.halflife)
    np.testing.assert_allclose(m.local_centres()[j], c0 + step * 0.1)
    # 30 users per seeded centre: 1/31 is above the floor (0.01): a running mean.
    assert step == 1.0 / (n + 1.0)
    old = SegmentModel(params(halflife=0.1))
    old.adopt(m.checkpoint)
    old.learn(m.scaler.inverse(z))
    np.testing.assert_allclose(old.local_centres()[j], c0 + 0.1 * 0.1)  # the floor


def test_sync_adopts_the_merge_and_restarts_local_learning() -> None:
    m = seeded()
    for v in blobs(20, seed=5):
        m.observe(v)
        m.learn(v)
    learned_raw = m.scaler.inverse(m.local_centres())  # units of the adopted scaler
    version = m.version
    m.sync_local(now_ms=5)
    assert m.version == version + 1 and not m.dirty
    # One process: the merged centres are exactly what it learned (in raw units; learning
    # moved them by up to 0.07 here).
    np.testing.assert_allclose(m.scaler.inverse(m.centres()), learned_raw, atol=1e-9)
    assert m.delta().learned == 0 and m.delta().updates == 0
    np.testing.assert_array_equal(m.local_centres(), m.centres())


def test_decide_speaks_segment_ids_and_moves_users_of_retired_segments() -> None:
    m = seeded()
    m.adopt(replace(m.checkpoint, ids=(10, 11, 12)))
    z = m.scale(np.full(D, 8.1))
    d = m.distances(z)
    dec = m.decide(None, z, d, 0.15)
    assert dec.segment in (10, 11, 12) and dec.runner_up in (10, 11, 12)
    assert dec.segment == m.ids[int(np.argmin(d))]
    # Hysteresis keeps a current segment that is nearly as close ...
    other = m.ids[int(np.argsort(d)[1])]
    assert m.decide(other, z, d, 0.99).segment == other
    # ... but a retired one (not among the ids) cannot be kept.
    retired = m.decide(3, z, d, 0.99)
    assert retired.segment == dec.segment and retired.previous == 3 and retired.changed
    # All at once, the same decisions.
    zs = m.scale(blobs(40, seed=5)[::3])
    current = [None, 3, *([10, 11, 12] * 13)][:40]
    many = m.decide_many(current, zs, m.distances(zs), 0.15)
    one = [m.decide(c, zz, m.distances(zz), 0.15) for c, zz in zip(current, zs, strict=True)]
    assert many == one


def test_two_processes_at_the_same_version_decide_alike() -> None:
    a, b = SegmentModel(params()), SegmentModel(params())
    shared = empty_checkpoint()
    pts = blobs(40)
    for m, half in ((a, pts[::2]), (b, pts[1::2])):
        for v in half:
            m.observe(v)
    # Both merge with the same snapshot of every user (what Redis would hand them).
    for m in (a, b):
        shared, _ = merge(shared, m.delta(), pts, m.params, 0)
        m.adopt(shared)
    a.adopt(shared)
    assert a.version == b.version == 2 and a.merges == b.merges == 2 and a.ready
    probe = blobs(20, seed=9)
    za, zb = a.scale(probe), b.scale(probe)
    np.testing.assert_array_equal(za, zb)
    for x, y in zip(za, zb, strict=True):
        assert a.decide(None, x, a.distances(x), 0.1) == b.decide(None, y, b.distances(y), 0.1)


def test_adopt_rejects_checkpoints_of_another_format() -> None:
    m = SegmentModel(params())
    with pytest.raises(ModelError, match="delete the seg:model key"):
        m.adopt(replace(empty_checkpoint(), format=1))
    with pytest.raises(ModelError):
        m.adopt(replace(empty_checkpoint(), features=("x",)))


def test_the_checkpoint_round_trips_through_plain_values_and_adopt() -> None:
    m = seeded()
    n = SegmentModel(params())
    n.adopt(Checkpoint.from_dict(m.checkpoint.to_dict()))
    assert (n.version, n.epoch, n.ids, n.ready) == (m.version, m.epoch, m.ids, m.ready)
    np.testing.assert_array_equal(n.centres(), m.centres())
    np.testing.assert_array_equal(n.scaler.mean, m.scaler.mean)
