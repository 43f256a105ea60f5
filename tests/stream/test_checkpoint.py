"""The shared checkpoint: merging deltas, warm start, re-seeding, refit, rollback."""

from __future__ import annotations

import numpy as np
import pytest

from stream.checkpoint import (
    ModelDelta,
    ModelParams,
    check,
    empty_checkpoint,
    merge,
    refit,
    refit_due,
    retired_ids,
    rollback,
)
from stream.errors import ModelError
from stream.model import SegmentModel
from stream.scaling import MODEL_FEATURES, OnlineScaler

D = len(MODEL_FEATURES)
BLOBS = np.array([[0.0] * D, [4.0] * D, [8.0] * D])
P = ModelParams(k_min=2, k_max=5, warmup_users=60, reservoir_size=600, seed=1)


def points(n: int, seed: int = 0, centres: np.ndarray = BLOBS) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = np.concatenate([rng.normal(c, 0.3, (n, D)) for c in centres])
    return pts[rng.permutation(len(pts))]


def stats(pts: np.ndarray) -> OnlineScaler:
    s = OnlineScaler.empty(D)
    for x in pts:
        s.learn(x)
    return s


def warm_delta(pts: np.ndarray) -> ModelDelta:
    return ModelDelta(0, 0, None, None, None, 0, stats(pts), len(pts), pts[:0])


def seeded(n: int = 40) -> dict:
    pts = points(n)
    doc, _ = merge(None, warm_delta(pts), pts, P, now_ms=0)
    return doc


def test_warm_start_chooses_k_by_silhouette_and_records_why() -> None:
    doc = seeded()
    assert doc["ready"] and doc["k"] == 3 and doc["ids"] == [0, 1, 2] and doc["next_id"] == 3
    choice = doc["k_choice"]
    assert choice["k"] == 3 and choice["n_points"] == 120
    assert max(choice["scores"], key=lambda k: choice["scores"][k]) == "3"
    assert "k=3" in choice["reason"]
    assert [e["event"] for e in doc["events"]] == ["born", "born", "born"]
    assert all(e["cause"].startswith("warm start") for e in doc["events"])
    # Seeded centres sit on the blobs (in raw units).
    raw = OnlineScaler.from_dict(doc["scaler"]).inverse(np.array(doc["centres"]))
    assert sorted(np.round(raw[:, 0]).tolist()) == [0.0, 4.0, 8.0]
    assert sum(doc["counts"]) == 120


def test_a_fixed_k_is_kept() -> None:
    pts = points(40)
    doc, _ = merge(None, warm_delta(pts), pts, ModelParams(k_min=4, k_max=4, warmup_users=60), 0)
    assert doc["k"] == 4 and len(doc["centres"]) == 4


def test_no_seeding_before_warmup_users_but_statistics_still_merge() -> None:
    pts = points(10)  # 30 < 60
    doc, events = merge(None, warm_delta(pts), pts, P, now_ms=0)
    assert not doc["ready"] and events == [] and doc["updates"] == 30
    assert (doc["merges"], doc["version"], doc["published"]) == (1, 0, None)
    assert OnlineScaler.from_dict(doc["scaler"]).count == 30


def test_scaler_statistics_merge_exactly() -> None:
    a, b = points(20, 1), points(20, 2)
    doc, _ = merge(None, warm_delta(a), None, P, 0)
    doc, _ = merge(doc, warm_delta(b), None, P, 0)
    merged = OnlineScaler.from_dict(doc["scaler"])
    both = stats(np.concatenate([a, b]))
    np.testing.assert_allclose(merged.mean, both.mean)
    np.testing.assert_allclose(merged.m2, both.m2)
    assert doc["merges"] == 2


def delta_from(model: SegmentModel, pts: np.ndarray) -> ModelDelta:
    for x in pts:
        model.observe(x)
        model.learn(x)
    return model.delta()


def test_one_process_merge_is_its_own_learning() -> None:
    doc = seeded()
    m = SegmentModel(P)
    m.adopt(doc)
    d = delta_from(m, points(5, seed=3))
    learned_raw = m.scaler.inverse(m.local_centres())
    merged, events = merge(doc, d, None, P, 1)
    assert events == [] and merged["epoch"] == doc["epoch"]
    raw = OnlineScaler.from_dict(merged["scaler"]).inverse(np.array(merged["centres"]))
    # Exact up to the scaler moving under the shift (a second-order effect).
    np.testing.assert_allclose(raw, learned_raw, atol=0.05)
    assert sum(merged["counts"]) == sum(doc["counts"]) + 15


def test_two_processes_merge_into_what_one_would_have_learned() -> None:
    doc = seeded()
    new = points(30, seed=4)
    a, b, one = SegmentModel(P), SegmentModel(P), SegmentModel(P)
    for m in (a, b, one):
        m.adopt(doc)
    da, db = delta_from(a, new[::2]), delta_from(b, new[1::2])
    shared, _ = merge(doc, da, None, P, 1)
    shared, _ = merge(shared, db, None, P, 2)
    alone, _ = merge(doc, delta_from(one, new), None, P, 1)
    c2 = OnlineScaler.from_dict(shared["scaler"]).inverse(np.array(shared["centres"]))
    c1 = OnlineScaler.from_dict(alone["scaler"]).inverse(np.array(alone["centres"]))
    # Same users, learned by two processes or one: centres agree to within 0.1 raw units
    # on blobs 4 apart.
    assert np.abs(c2 - c1).max() < 0.1
    assert shared["counts"] == pytest.approx(alone["counts"])
    assert shared["merges"] == 3


def test_a_delta_from_an_older_epoch_keeps_its_statistics_but_not_its_shift() -> None:
    doc = seeded()
    m = SegmentModel(P)
    m.adopt(doc)
    d = delta_from(m, points(5, seed=3))
    newer = {**doc, "epoch": doc["epoch"] + 1}
    merged, _ = merge(newer, d, None, P, 1)
    raw_before = OnlineScaler.from_dict(doc["scaler"]).inverse(np.array(doc["centres"]))
    raw_after = OnlineScaler.from_dict(merged["scaler"]).inverse(np.array(merged["centres"]))
    np.testing.assert_allclose(raw_after, raw_before, atol=1e-9)  # centres did not move
    assert merged["counts"] == doc["counts"]
    assert merged["updates"] == doc["updates"] + 15


def test_a_dead_centre_is_reseeded_as_a_new_segment() -> None:
    doc = seeded()
    # Segment 2 stops winning: recent wins all on 0 and 1.
    doc = {**doc, "recent_wins": [500.0, 500.0, 0.0]}
    far = points(20, seed=6, centres=np.array([[20.0] * D]))
    m = SegmentModel(P)
    m.adopt(doc)
    for x in far:
        m.observe(x)
    merged, events = merge(doc, m.delta(), None, P, 7)
    kinds = sorted(e["event"] for e in events)
    assert kinds == ["born", "retired"]
    assert merged["ids"] == [0, 1, 3] and merged["next_id"] == 4
    assert merged["epoch"] == doc["epoch"] + 1
    assert retired_ids(events) == [2]
    raw = OnlineScaler.from_dict(merged["scaler"]).inverse(np.array(merged["centres"]))
    assert raw[2, 0] > 15  # moved to where the unserved users are
    assert all(e["cause"].startswith("re-seeded") and e["at_ms"] == 7 for e in events)


def test_collapsed_centres_are_split_apart_and_recorded_as_a_merge() -> None:
    doc = seeded()
    centres = np.array(doc["centres"])
    centres[2] = centres[1] + 0.05  # segment 2 has collapsed onto segment 1
    doc = {**doc, "centres": centres.tolist(), "recent_wins": [400.0, 350.0, 250.0]}
    far = points(20, seed=6, centres=np.array([[20.0] * D]))
    m = SegmentModel(P)
    m.adopt(doc)
    for x in far:
        m.observe(x)
    merged, events = merge(doc, m.delta(), None, P, 7)
    assert sorted((e["event"], e["segment"]) for e in events) == [
        ("born", 3),
        ("merged", 2),
        ("retired", 2),
    ]
    assert next(e for e in events if e["event"] == "merged")["into"] == 1
    assert merged["ids"] == [0, 1, 3]


def test_refit_on_the_same_data_keeps_every_id() -> None:
    doc = seeded()
    new, events = refit(doc, points(40, seed=8), P, now_ms=9)
    assert sorted(new["ids"]) == doc["ids"]  # rows may come in another order
    assert [e["event"] for e in events] == ["refit"]  # no segment born or retired
    assert new["version"] == doc["version"] + 1 and new["epoch"] == doc["epoch"] + 1


def test_refit_after_a_split_keeps_the_old_ids_and_records_the_split() -> None:
    doc = seeded()
    split = np.array([[0.0] * D, [4.0] * D, [8.0] * D, [11.0] * D])
    new, events = refit(doc, points(40, seed=8, centres=split), P, now_ms=9)
    assert new["k"] == 4
    assert set(doc["ids"]) <= set(new["ids"]) and 3 in new["ids"]
    assert {e["event"] for e in events} >= {"born"}
    assert new["next_id"] == 4


def test_refit_refuses_an_unseeded_model_or_a_thin_reservoir() -> None:
    with pytest.raises(ModelError, match="not been seeded"):
        refit(empty_checkpoint(), points(40), P, 0)
    with pytest.raises(ModelError, match="fewer than warmup_users"):
        refit(seeded(), points(5), P, 0)


def test_rollback_is_a_new_version_in_a_new_epoch_and_never_reuses_ids() -> None:
    old = seeded()
    cur = {**old, "merges": 20, "version": 9, "epoch": 4, "ids": [0, 1, 5], "next_id": 6}
    doc, events = rollback(cur, old, now_ms=11)
    assert doc["version"] == 10 and doc["epoch"] == 5 and doc["next_id"] == 6
    assert doc["merges"] == 21 and doc["published"]["centres"] == old["published"]["centres"]
    assert doc["ids"] == [0, 1, 2] and doc["rolled_back_from"] == old["version"]
    assert [(e["event"], e["segment"]) for e in events] == [("retired", 5), ("restored", 2)]
    assert retired_ids(events) == [5]


def test_learning_is_published_at_most_every_interval_and_at_once_on_new_segments() -> None:
    doc = seeded()
    assert doc["version"] == 1 and doc["published"]["at_ms"] == 0
    m = SegmentModel(P)  # publish_interval_ms = 10 s
    for t in (1_000, 5_000, 9_999):
        m.adopt(doc)
        doc, _ = merge(doc, delta_from(m, points(3, seed=t)), None, P, t)
        assert doc["version"] == 1 and doc["published"]["at_ms"] == 0
    assert doc["centres"] != doc["published"]["centres"]  # learning went on
    m.adopt(doc)
    doc, _ = merge(doc, delta_from(m, points(3, seed=2)), None, P, 10_000)
    assert doc["version"] == 2 and doc["published"]["centres"] == doc["centres"]
    assert doc["merges"] == 5


def test_check_rejects_other_formats_and_features() -> None:
    assert check(empty_checkpoint())["version"] == 0
    with pytest.raises(ModelError, match="another format"):
        check({**empty_checkpoint(), "format": 1})
    with pytest.raises(ModelError):
        check({**empty_checkpoint(), "features": ["spend"]})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"k_min": 1}, "k_min"),
        ({"k_min": 4, "k_max": 3}, "k_max"),
        ({"warmup_users": 5}, "warmup_users"),
        ({"halflife": 0.0}, "halflife"),
        ({"match_threshold": 0.0}, "match_threshold"),
        ({"reservoir_size": 10}, "reservoir_size"),
    ],
)
def test_params_are_validated_by_name(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ModelParams(**kwargs)


def test_an_automatic_refit_replaces_the_centres_only_when_it_scores_better() -> None:
    p = ModelParams(k_min=2, k_max=5, warmup_users=60, reservoir_size=600, refit_updates=50)
    doc = seeded()  # three blobs, k = 3, fitted at 120 updates
    assert not refit_due(doc, p) and refit_due(doc, p, pending=50)
    m = SegmentModel(p)
    m.adopt(doc)
    same = points(40, seed=12)
    merged, events = merge(doc, delta_from(m, same[:60]), same, p, 5)
    assert events == [] and merged["ids"] == doc["ids"]  # no better fit: left alone
    assert merged["fitted_at_updates"] == merged["updates"]
    four = points(40, seed=13, centres=np.array([[0.0] * D, [4.0] * D, [8.0] * D, [12.0] * D]))
    m.adopt(merged)
    for x in four[:60]:
        m.observe(x)
    refitted, events = merge(merged, m.delta(), four, p, 6)
    assert refitted["k"] == 4 and set(doc["ids"]) < set(refitted["ids"])
    assert [e["event"] for e in events] == ["born"]
    assert events[0]["cause"].startswith("automatic refit (silhouette")
    assert refitted["version"] == merged["version"] + 1  # published at once
