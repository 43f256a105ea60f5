"""The clustering model: k-means++ seeding, warm start, distances, River's update and
checkpoints."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream.errors import ModelError
from stream.model import CHECKPOINT_FORMAT, SegmentModel, kmeans_plus_plus
from stream.scaling import MODEL_FEATURES

DIM = len(MODEL_FEATURES)


def blobs(rng: np.random.Generator, centres: np.ndarray, n: int, sd: float) -> np.ndarray:
    return np.concatenate([c + rng.normal(scale=sd, size=(n, centres.shape[1])) for c in centres])


@pytest.mark.parametrize("seed", range(10))
def test_kmeans_plus_plus_picks_one_seed_per_blob(seed: int) -> None:
    truth = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0], [50.0, 50.0]])
    rng = np.random.default_rng(seed)
    points = blobs(rng, truth, 40, 0.5)
    seeds = kmeans_plus_plus(points, 5, np.random.default_rng(seed))
    assert seeds.shape == (5, 2)
    # Every seed is one of the points ...
    for s in seeds:
        assert np.any(np.all(points == s, axis=1))
    # ... and each lies in a different blob.
    nearest = np.argmin(((seeds[:, None, :] - truth[None, :, :]) ** 2).sum(axis=2), axis=1)
    assert sorted(nearest.tolist()) == [0, 1, 2, 3, 4]


def test_kmeans_plus_plus_is_deterministic_for_a_seed() -> None:
    points = np.random.default_rng(3).normal(size=(50, 4))
    a = kmeans_plus_plus(points, 3, np.random.default_rng(11))
    b = kmeans_plus_plus(points, 3, np.random.default_rng(11))
    np.testing.assert_array_equal(a, b)


def test_kmeans_plus_plus_with_fewer_distinct_points_than_k() -> None:
    points = np.ones((6, 3))
    seeds = kmeans_plus_plus(points, 4, np.random.default_rng(0))
    np.testing.assert_array_equal(seeds, np.ones((4, 3)))


def vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    half = n // 2
    return np.concatenate(
        [rng.normal(0.0, 0.3, size=(half, DIM)), rng.normal(4.0, 0.3, size=(n - half, DIM))]
    )[rng.permutation(n)]


def warm_model(
    n_clusters: int = 3, warmup: int = 10, seed: int = 7
) -> tuple[SegmentModel, np.ndarray]:
    m = SegmentModel(n_clusters=n_clusters, halflife=0.25, warmup_users=warmup, seed=seed)
    data = vectors(warmup, seed)
    for v in data:
        m.observe(v)
    return m, data


def test_not_ready_before_warmup_and_ready_after() -> None:
    m = SegmentModel(n_clusters=3, halflife=0.1, warmup_users=6, seed=1)
    data = vectors(8)
    for i, v in enumerate(data[:5], 1):
        m.observe(v)
        assert not m.ready
        assert len(m.reservoir) == i
        assert m.version == 0
    m.observe(data[5])
    assert m.ready
    assert m.reservoir == []
    assert m.version == 1
    assert m.updates == 6
    assert m.centres().shape == (3, DIM)
    m.observe(data[6])
    m.observe(data[7])
    assert m.updates == 8 and m.reservoir == [] and m.version == 1


def test_observe_keeps_a_copy_of_the_vector() -> None:
    m = SegmentModel(n_clusters=2, halflife=0.1, warmup_users=3, seed=1)
    v = np.zeros(DIM)
    m.observe(v)
    v[0] = 99.0
    assert m.reservoir[0][0] == 0.0


def test_seed_centres_are_scaled_reservoir_points() -> None:
    m, data = warm_model(n_clusters=2)
    points = m.scale(data)
    for c in m.centres():
        assert np.min(np.abs(points - c).max(axis=1)) < 1e-12
    # The two well-separated groups each got a centre.
    assert np.sign(m.centres()[0, 0]) != np.sign(m.centres()[1, 0])


def test_scaler_learns_every_observation() -> None:
    m, data = warm_model()
    np.testing.assert_allclose(m.scaler.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.scaler.std, data.std(axis=0), rtol=1e-10)


def test_distances_match_numpy() -> None:
    m, _ = warm_model(n_clusters=3)
    c = m.centres()
    z = np.random.default_rng(1).normal(size=DIM)
    d = m.distances(z)
    assert d.shape == (3,)
    np.testing.assert_allclose(d, np.linalg.norm(c - z, axis=1), rtol=1e-12)
    zs = np.random.default_rng(2).normal(size=(7, DIM))
    dm = m.distances(zs)
    assert dm.shape == (7, 3)
    expected = np.array([[np.linalg.norm(row - ci) for ci in c] for row in zs])
    np.testing.assert_allclose(dm, expected, rtol=1e-12)
    np.testing.assert_allclose(m.distances(c), np.linalg.norm(c[:, None] - c[None], axis=2))
    np.testing.assert_array_equal(np.diag(m.distances(c)), 0.0)


def test_centres_match_rivers_centres() -> None:
    m, _ = warm_model()
    for i in range(3):
        assert [m.kmeans.centers[i][f] for f in MODEL_FEATURES] == m.centres()[i].tolist()


def test_learn_moves_the_nearest_centre_toward_the_point() -> None:
    m, _ = warm_model(n_clusters=3)
    before = m.centres().copy()
    z = before[1] + np.linspace(0.1, 0.9, DIM)  # near centre 1
    j = int(np.argmin(m.distances(z)))
    assert j == 1
    m.learn(z)
    after = m.centres()
    np.testing.assert_allclose(after[j], before[j] + 0.25 * (z - before[j]), rtol=1e-12)
    for i in range(3):
        if i != j:
            np.testing.assert_array_equal(after[i], before[i])
    assert np.linalg.norm(after[j] - z) == pytest.approx(0.75 * np.linalg.norm(before[j] - z))
    assert m.updates == 10  # learning is not observing


def test_learn_before_warmup_does_nothing() -> None:
    m = SegmentModel(n_clusters=2, halflife=0.5, warmup_users=3, seed=0)
    m.learn(np.ones(DIM))
    assert not m.ready
    assert all(len(c) == 0 for c in m.kmeans.centers.values())


def roundtrip(m: SegmentModel, warmup: int) -> SegmentModel:
    blob = orjson.dumps(m.to_dict())
    return SegmentModel.from_dict(orjson.loads(blob), warmup_users=warmup)


def test_checkpoint_round_trip() -> None:
    m, _ = warm_model(n_clusters=3)
    m.learn(m.centres()[0] + 0.5)
    m.observe(np.full(DIM, 2.0))
    m.unassigned = ["u7", "u9"]
    d = m.to_dict()
    assert d["format"] == CHECKPOINT_FORMAT
    assert d["features"] == list(MODEL_FEATURES)
    assert (d["n_clusters"], d["halflife"], d["seed"], d["ready"], d["updates"]) == (
        3,
        0.25,
        7,
        True,
        11,
    )
    back = roundtrip(m, 10)
    assert back.ready and back.version == 1 and back.updates == 11
    assert (back.n_clusters, back.halflife, back.seed) == (3, 0.25, 7)
    assert back.unassigned == ["u7", "u9"]
    np.testing.assert_array_equal(back.centres(), m.centres())
    assert back.scaler.count == m.scaler.count
    np.testing.assert_array_equal(back.scaler.mean, m.scaler.mean)
    np.testing.assert_array_equal(back.scaler.m2, m.scaler.m2)
    zs = np.random.default_rng(4).normal(size=(5, DIM))
    np.testing.assert_array_equal(back.distances(zs), m.distances(zs))
    np.testing.assert_array_equal(back.scale(zs), m.scale(zs))
    # Both keep learning alike.
    for z in zs:
        m.learn(z)
        back.learn(z)
    np.testing.assert_array_equal(back.centres(), m.centres())


def test_checkpoint_during_warmup_resumes_the_warm_start() -> None:
    m = SegmentModel(n_clusters=2, halflife=0.1, warmup_users=5, seed=3)
    data = vectors(5, 3)
    for v in data[:3]:
        m.observe(v)
    d = m.to_dict()
    assert d["ready"] is False and d["centres"] is None and len(d["reservoir"]) == 3
    back = roundtrip(m, 5)
    assert not back.ready and len(back.reservoir) == 3
    for v in data[3:]:
        m.observe(v)
        back.observe(v)
    assert back.ready and m.ready
    np.testing.assert_array_equal(back.centres(), m.centres())


def test_checkpoint_without_unassigned_users_still_loads() -> None:
    m, _ = warm_model()
    d = m.to_dict()
    d.pop("unassigned", None)
    back = SegmentModel.from_dict(d, warmup_users=10)
    assert back.unassigned == []
    np.testing.assert_array_equal(back.centres(), m.centres())


def test_version_survives_the_checkpoint() -> None:
    m, _ = warm_model()
    m.version = 4
    assert roundtrip(m, 10).version == 4


@pytest.mark.parametrize(
    "change",
    [
        {"features": list(reversed(MODEL_FEATURES))},
        {"features": [*MODEL_FEATURES, "extra"]},
        {"features": list(MODEL_FEATURES[:-1])},
        {"format": CHECKPOINT_FORMAT + 1},
        {"format": None},
    ],
)
def test_from_dict_rejects_other_checkpoints(change: dict[str, object]) -> None:
    m, _ = warm_model()
    d = {**m.to_dict(), **change}
    with pytest.raises(ModelError, match="seg:model"):
        SegmentModel.from_dict(d, warmup_users=10)


def test_from_dict_rejects_a_checkpoint_without_features() -> None:
    m, _ = warm_model()
    d = m.to_dict()
    del d["features"]
    with pytest.raises(ModelError):
        SegmentModel.from_dict(d, warmup_users=10)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_clusters": 1}, "n_clusters"),
        ({"n_clusters": 0}, "n_clusters"),
        ({"halflife": 0.0}, "halflife"),
        ({"halflife": -0.1}, "halflife"),
        ({"halflife": 1.5}, "halflife"),
        ({"n_clusters": 5, "warmup_users": 4}, "warmup_users"),
    ],
)
def test_constructor_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SegmentModel(**kwargs)  # type: ignore[arg-type]


def test_constructor_accepts_the_bounds() -> None:
    m = SegmentModel(n_clusters=2, halflife=1.0, warmup_users=2, seed=0)
    assert (m.n_clusters, m.halflife, m.warmup_users, m.seed) == (2, 1.0, 2, 0)
    assert m.features == MODEL_FEATURES
    assert not m.ready and m.updates == 0 and m.version == 0
    d = SegmentModel()
    assert (d.n_clusters, d.halflife, d.warmup_users, d.seed) == (5, 0.05, 200, 42)


def test_a_young_centre_takes_running_mean_steps_an_old_one_the_floor() -> None:
    m, _ = warm_model(n_clusters=3)
    c = m.centres()
    z = c[0] + 0.1
    m.counts[:] = [0.0, 1000.0, 1000.0]
    m.learn(z)  # no users yet: step 1, the centre jumps onto the user
    np.testing.assert_allclose(m.centres()[0], z, rtol=1e-12)
    before = m.centres()[1].copy()
    z1 = before + 0.1
    m.learn(z1)  # many users: the floor, halflife (0.25 here)
    np.testing.assert_allclose(m.centres()[1], before + 0.25 * (z1 - before), rtol=1e-12)
    assert m.kmeans.halflife == m.halflife  # River's own setting is left as configured
    assert m.counts.tolist() == [1.0, 1001.0, 1000.0]


def test_a_centre_that_stops_winning_is_reseeded_where_users_are() -> None:
    m = SegmentModel(n_clusters=3, halflife=0.05, warmup_users=6, seed=2)
    rng = np.random.default_rng(0)
    # Seed from three groups; then only two groups keep coming.
    groups = np.array([[-5.0] * DIM, [5.0] * DIM, [50.0] * DIM])
    for g in groups:
        for _ in range(2):
            m.observe(g + rng.normal(0, 0.01, DIM))
    assert m.ready
    far = int(np.argmin(m.distances(m.scale(groups[2]))))
    for i in range(3000):
        m.learn(m.scale(groups[i % 2] + rng.normal(0, 0.5, DIM)))
    assert [e["segment"] for e in m.events] == [far]
    moved = m.centres()[far]
    recent = np.stack([m.scale(g) for g in groups[:2]])
    assert np.min(np.linalg.norm(recent - moved, axis=1)) < np.linalg.norm(
        m.scale(groups[2]) - moved
    )
    back = SegmentModel.from_dict(orjson.loads(orjson.dumps(m.to_dict())), 6)
    assert back.events == m.events and back.counts.tolist() == m.counts.tolist()
