"""The shared checkpoint: merging deltas, warm start, re-seeding, refit, rollback."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import pytest

from stream.checkpoint import (
    Checkpoint,
    ModelDelta,
    ModelParams,
    check,
    empty_checkpoint,
    merge,
    population,
    refit,
    refit_due,
    retired_ids,
    rfm_population,
    rollback,
    snapshot_scaler,
)
from stream.errors import ModelError
from stream.model import SegmentModel
from stream.scaling import MODEL_FEATURES, OnlineScaler, to_vector

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


def seeded(n: int = 40) -> Checkpoint:
    pts = points(n)
    doc, _ = merge(None, warm_delta(pts), pts, P, now_ms=0)
    return doc


def rows(centres: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(r) for r in centres.tolist())


def raw_centres(doc: Checkpoint) -> np.ndarray:
    """The learning centres in raw units."""
    return doc.scaler.to_scaler().inverse(np.array(doc.centres))


def test_warm_start_chooses_k_and_records_why() -> None:
    doc = seeded()
    assert doc.ready and doc.k == 3 and doc.ids == (0, 1, 2) and doc.next_id == 3
    choice = doc.k_choice
    assert choice is not None
    assert choice.k == 3 and choice.n_points == 120
    assert {k for k, _ in choice.scores} == {2, 3, 4, 5}
    assert "k=3" in choice.reason
    assert P.k_criterion in choice.reason.replace(" ", "_")
    assert [e["event"] for e in doc.events] == ["born", "born", "born"]
    assert all(e["cause"].startswith("warm start") for e in doc.events)
    # Seeded centres sit on the blobs (in raw units).
    raw = raw_centres(doc)
    assert sorted(np.round(raw[:, 0]).tolist()) == [0.0, 4.0, 8.0]
    assert sum(doc.counts) == 120


def test_warm_start_by_silhouette_takes_the_highest() -> None:
    pts = points(40)
    doc, _ = merge(None, warm_delta(pts), pts, replace(P, k_criterion="silhouette"), now_ms=0)
    choice = doc.k_choice
    assert choice is not None
    assert choice.k == 3 and "silhouette" in choice.reason
    assert max(choice.scores, key=lambda score: score[1])[0] == 3


def test_a_fixed_k_is_kept() -> None:
    pts = points(40)
    doc, _ = merge(None, warm_delta(pts), pts, ModelParams(k_min=4, k_max=4, warmup_users=60), 0)
    assert doc.k == 4 and len(doc.centres) == 4


def test_no_seeding_before_warmup_users_but_statistics_still_merge() -> None:
    pts = points(10)  # 30 < 60
    doc, events = merge(None, warm_delta(pts), pts, P, now_ms=0)
    assert not doc.ready and events == [] and doc.updates == 30
    assert (doc.merges, doc.version, doc.published) == (1, 0, None)
    assert doc.scaler.to_scaler().count == 30


def test_scaler_statistics_merge_exactly() -> None:
    a, b = points(20, 1), points(20, 2)
    doc, _ = merge(None, warm_delta(a), None, P, 0)
    doc, _ = merge(doc, warm_delta(b), None, P, 0)
    merged = doc.scaler.to_scaler()
    both = stats(np.concatenate([a, b]))
    np.testing.assert_allclose(merged.mean, both.mean)
    np.testing.assert_allclose(merged.m2, both.m2)
    assert doc.merges == 2


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
    assert events == [] and merged.epoch == doc.epoch
    raw = raw_centres(merged)
    # Exact up to the scaler moving under the shift (a second-order effect).
    np.testing.assert_allclose(raw, learned_raw, atol=0.05)
    assert sum(merged.counts) == sum(doc.counts) + 15


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
    c2, c1 = raw_centres(shared), raw_centres(alone)
    # Same users, learned by two processes or one: centres agree to within 0.1 raw units
    # on blobs 4 apart.
    assert np.abs(c2 - c1).max() < 0.1
    assert shared.counts == pytest.approx(alone.counts)
    assert shared.merges == 3


def test_a_delta_from_an_older_epoch_keeps_its_statistics_but_not_its_shift() -> None:
    doc = seeded()
    m = SegmentModel(P)
    m.adopt(doc)
    d = delta_from(m, points(5, seed=3))
    newer = replace(doc, epoch=doc.epoch + 1)
    merged, _ = merge(newer, d, None, P, 1)
    raw_before, raw_after = raw_centres(doc), raw_centres(merged)
    np.testing.assert_allclose(raw_after, raw_before, atol=1e-9)  # centres did not move
    assert merged.counts == doc.counts
    assert merged.updates == doc.updates + 15


def test_with_refits_a_centre_that_wins_no_update_is_kept() -> None:
    doc = seeded()
    doc = replace(doc, recent_wins=(500.0, 500.0, 0.0))
    m = SegmentModel(P)
    m.adopt(doc)
    for x in points(20, seed=6, centres=np.array([[20.0] * D])):
        m.observe(x)
    assert P.refit_updates > 0
    merged, events = merge(doc, m.delta(), None, P, 7)
    assert events == []
    assert merged.ids == doc.ids and merged.epoch == doc.epoch


def test_a_dead_centre_is_reseeded_as_a_new_segment() -> None:
    doc = seeded()
    # Segment 2 stops winning: recent wins all on 0 and 1.
    doc = replace(doc, recent_wins=(500.0, 500.0, 0.0))
    far = points(20, seed=6, centres=np.array([[20.0] * D]))
    # A threshold under the gap between neighbouring blobs: no merge is recorded. Without
    # refits: with them, a centre that wins no update is a segment of quiet customers.
    p = replace(P, match_threshold=1.0, refit_updates=0, refit_interval_ms=0)
    m = SegmentModel(p)
    m.adopt(doc)
    for x in far:
        m.observe(x)
    merged, events = merge(doc, m.delta(), None, p, 7)
    kinds = sorted(e["event"] for e in events)
    assert kinds == ["born", "retired"]
    assert merged.ids == (0, 1, 3) and merged.next_id == 4
    assert merged.epoch == doc.epoch + 1
    assert retired_ids(events) == [2]
    raw = raw_centres(merged)
    assert raw[2, 0] > 15  # moved to where the unserved users are
    assert all(e["cause"].startswith("re-seeded") and e["at_ms"] == 7 for e in events)
    # A stopping process merges its learning but changes no segment.
    kept, none = merge(doc, m.delta(), None, p, 7, structural=False)
    assert none == [] and kept.ids == doc.ids and kept.epoch == doc.epoch
    assert kept.merges == doc.merges + 1


def test_collapsed_centres_are_split_apart_and_recorded_as_a_merge() -> None:
    doc = seeded()
    centres = np.array(doc.centres)
    centres[2] = centres[1] + 0.05  # segment 2 has collapsed onto segment 1
    doc = replace(doc, centres=rows(centres), recent_wins=(400.0, 350.0, 250.0))
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
    assert merged.ids == (0, 1, 3)


def test_refit_on_the_same_data_keeps_every_id() -> None:
    doc = seeded()
    new, events = refit(doc, points(40, seed=8), P, now_ms=9)
    assert tuple(sorted(new.ids)) == doc.ids  # rows may come in another order
    assert [e["event"] for e in events] == ["refit"]  # no segment born or retired
    assert new.version == doc.version + 1 and new.epoch == doc.epoch + 1


def test_refit_after_a_split_keeps_the_old_ids_and_records_the_split() -> None:
    doc = seeded()
    split = np.array([[0.0] * D, [4.0] * D, [8.0] * D, [11.0] * D])
    new, events = refit(doc, points(40, seed=8, centres=split), P, now_ms=9)
    assert new.k == 4
    assert set(doc.ids) <= set(new.ids) and 3 in new.ids
    assert {e["event"] for e in events} >= {"born"}
    assert new.next_id == 4


def test_refit_refuses_an_unseeded_model_or_a_thin_reservoir() -> None:
    with pytest.raises(ModelError, match="not been seeded"):
        refit(empty_checkpoint(), points(40), P, 0)
    with pytest.raises(ModelError, match="fewer than warmup_users"):
        refit(seeded(), points(5), P, 0)


def test_rollback_is_a_new_version_in_a_new_epoch_and_never_reuses_ids() -> None:
    old = seeded()
    cur = replace(old, merges=20, version=9, epoch=4, ids=(0, 1, 5), next_id=6)
    doc, events = rollback(cur, old, now_ms=11)
    assert doc.version == 10 and doc.epoch == 5 and doc.next_id == 6
    assert doc.published is not None and old.published is not None
    assert doc.merges == 21 and doc.published.centres == old.published.centres
    assert doc.ids == (0, 1, 2) and doc.rolled_back_from == old.version
    assert [(e["event"], e["segment"]) for e in events] == [("retired", 5), ("restored", 2)]
    assert retired_ids(events) == [5]


def test_learning_is_published_at_most_every_interval_and_at_once_on_new_segments() -> None:
    doc = seeded()
    assert doc.published is not None
    assert doc.version == 1 and doc.published.at_ms == 0
    m = SegmentModel(P)  # publish_interval_ms = 10 s
    for t in (1_000, 5_000, 9_999):
        m.adopt(doc)
        doc, _ = merge(doc, delta_from(m, points(3, seed=t)), None, P, t)
        assert doc.published is not None
        assert doc.version == 1 and doc.published.at_ms == 0
    assert doc.published is not None
    assert doc.centres != doc.published.centres  # learning went on
    m.adopt(doc)
    doc, _ = merge(doc, delta_from(m, points(3, seed=2)), None, P, 10_000)
    assert doc.published is not None
    assert doc.version == 2 and doc.published.centres == doc.centres
    assert doc.merges == 5


def test_check_rejects_other_formats_and_features() -> None:
    assert check(empty_checkpoint()).version == 0
    with pytest.raises(ModelError, match="another format"):
        check(replace(empty_checkpoint(), format=1))
    with pytest.raises(ModelError):
        check(replace(empty_checkpoint(), features=("spend",)))
    # Read from plain values (what Redis holds), the same checkpoints are refused alike.
    plain = empty_checkpoint().to_dict()
    with pytest.raises(ModelError, match="another format"):
        Checkpoint.from_dict({**plain, "format": 1})
    with pytest.raises(ModelError, match="another format"):
        Checkpoint.from_dict({**plain, "features": ["spend"]})
    with pytest.raises(ModelError, match="cannot be read"):
        Checkpoint.from_dict({k: v for k, v in plain.items() if k != "centres"})


RFM_ONLY = ("frequency", "monetary", "days_without_purchase")


def test_a_checkpoint_keeps_the_features_it_clusters_on_and_refuses_others() -> None:
    params = replace(P, features=RFM_ONLY)
    pts = points(40)
    doc, _ = merge(None, warm_delta(pts), pts, params, now_ms=0)
    assert doc.features == RFM_ONLY and doc.ready
    assert check(doc, RFM_ONLY) is doc
    # Centres learned on three features mean nothing on eight: the operator is told both
    # lists, and what to do.
    with pytest.raises(ModelError, match=r"clusters on frequency.*SEGMENTER_MODEL_FEATURES"):
        merge(doc, warm_delta(pts), pts, P, now_ms=1)
    with pytest.raises(ModelError, match="SEGMENTER_MODEL_FEATURES"):
        SegmentModel(P).adopt(doc)
    with pytest.raises(ModelError, match="SEGMENTER_MODEL_FEATURES"):
        rollback(seeded(), doc, now_ms=2)


def test_features_left_out_of_the_model_do_not_split_segments() -> None:
    # Two groups of users who differ only in their activity over 30 days, and two RFM
    # groups that cut across them: on RFM alone, the segments are the RFM groups.
    rng = np.random.default_rng(3)
    feats = []
    for i in range(400):
        buyer = i % 2 == 0
        feats.append(
            {
                "events_30d": 400.0 if i % 4 < 2 else 2.0,
                "frequency": 12.0 if buyer else 1.0,
                "monetary": (900.0 if buyer else 20.0) * rng.uniform(0.8, 1.2),
                "days_without_purchase": 2.0 if buyer else 120.0,
            }
        )
    params = replace(P, k_min=2, k_max=2, features=RFM_ONLY)
    raw = np.stack([to_vector(f, RFM_ONLY) for f in feats])
    assert (raw[:, MODEL_FEATURES.index("events_30d")] == 0.0).all()
    doc, _ = merge(None, warm_delta(raw), raw, params, now_ms=0)
    m = SegmentModel(params)
    m.adopt(doc)
    nearest = m.distances(m.scale(raw)).argmin(axis=1)
    buyers = np.arange(len(feats)) % 2 == 0
    assert len(set(nearest[buyers])) == 1 and len(set(nearest[~buyers])) == 1
    assert nearest[buyers][0] != nearest[~buyers][0]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"k_min": 1}, "k_min"),
        ({"k_min": 4, "k_max": 3}, "k_max"),
        ({"warmup_users": 5}, "warmup_users"),
        ({"halflife": 0.0}, "halflife"),
        ({"match_threshold": 0.0}, "match_threshold"),
        ({"reservoir_size": 10}, "reservoir_size"),
        ({"refit_updates": -1}, "refit_updates"),
        ({"refit_interval_ms": -1}, "refit_interval_ms"),
        ({"refit_gain": 1.0}, "refit_gain"),
        ({"refit_gain": -0.1}, "refit_gain"),
        ({"refit_starts": 0}, "refit_starts"),
        ({"publish_updates": 0}, "publish_updates"),
    ],
)
def test_params_are_validated_by_name(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        ModelParams(**kwargs)


def test_an_automatic_refit_with_the_same_k_is_kept_only_when_it_gains_enough() -> None:
    doc = seeded()  # three blobs, k = 3, fitted at 120 updates
    strict = replace(P, refit_updates=50, refit_interval_ms=0, refit_gain=0.05)
    assert not refit_due(doc, strict) and refit_due(doc, strict, pending=50)
    m = SegmentModel(strict)
    m.adopt(doc)
    same = points(40, seed=12)  # a new sample of the same three blobs
    d = delta_from(m, same[:60])
    # Fitting afresh lowers the inertia on this sample by between 1 and 5 %: under a 5 % bar,
    # the centres are left alone ...
    merged, events = merge(doc, d, same, strict, 5)
    assert events == [] and merged.ids == doc.ids and merged.epoch == doc.epoch
    assert merged.fitted_at_updates == merged.updates == 180  # not due again at once
    assert not refit_due(merged, strict)
    assert merged.population == doc.population  # the names' reference stays too
    # ... though the learning scaler and the RFM sketches are the snapshot's now.
    scaler = merged.scaler.to_scaler()
    assert scaler.count == len(same)
    np.testing.assert_allclose(scaler.mean, same.mean(axis=0))
    assert merged.rfm == rfm_population(same).to_dict()
    # Over a 1 % bar, the new centres replace the old ones, every id kept.
    refitted, events = merge(doc, d, same, replace(strict, refit_gain=0.01), 5)
    assert [e["event"] for e in events] == ["refit"]
    assert events[0]["cause"].startswith("automatic refit on 120 users (inertia 0.091 -> 0.090")
    assert tuple(sorted(refitted.ids)) == doc.ids
    assert refitted.epoch == doc.epoch + 1
    assert refitted.version == doc.version + 1  # published at once


def test_an_automatic_refit_that_changes_k_is_kept() -> None:
    p = replace(P, refit_updates=50, refit_interval_ms=0, refit_gain=0.5)
    doc = seeded()
    m = SegmentModel(p)
    m.adopt(doc)
    four = points(40, seed=13, centres=np.array([[0.0] * D, [4.0] * D, [8.0] * D, [12.0] * D]))
    for x in four[:60]:
        m.observe(x)
    refitted, events = merge(doc, m.delta(), four, p, 6)
    assert refitted.k == 4 and set(doc.ids) < set(refitted.ids)
    assert [e["event"] for e in events] == ["born"]
    assert events[0]["cause"].startswith("automatic refit on 160 users")
    assert refitted.version == doc.version + 1  # published at once
    assert refitted.k_choice is not None and refitted.k_choice.k == 4


def test_no_automatic_refit_without_a_snapshot_or_when_turned_off() -> None:
    doc = seeded()
    due = replace(P, refit_updates=50, refit_interval_ms=0, refit_gain=0.0)
    m = SegmentModel(due)
    m.adopt(doc)
    four = points(40, seed=13, centres=np.array([[0.0] * D, [4.0] * D, [8.0] * D, [12.0] * D]))
    d = delta_from(m, four[:60])
    merged, events = merge(doc, d, None, due, 6)  # due, but no snapshot to fit on
    assert events == [] and merged.k == 3 and refit_due(merged, due)
    off = replace(due, refit_updates=0)
    merged, events = merge(doc, d, four, off, 6, watermark_ms=10**13)
    assert events == [] and merged.k == 3 and not refit_due(merged, off, pending=10**9)


def test_a_refit_is_due_by_event_time_since_the_last_fit() -> None:
    week = 7 * 86_400_000
    t0 = 1_700_000_000_000
    p = replace(P, refit_updates=0, refit_interval_ms=week, refit_gain=0.0)
    pts = points(40)
    doc, _ = merge(None, warm_delta(pts), pts, p, now_ms=0, watermark_ms=t0)
    assert doc.fitted_at_event_ms == t0
    assert not refit_due(doc, p, pending=10**6, watermark_ms=t0 + week - 1)
    assert refit_due(doc, p, watermark_ms=t0 + week)
    assert not refit_due(None, p) and not refit_due(empty_checkpoint(), p, watermark_ms=10**13)
    by_updates = replace(p, refit_interval_ms=0, refit_updates=100)
    assert not refit_due(doc, by_updates, pending=99, watermark_ms=10**13)
    assert refit_due(doc, by_updates, pending=100)
    # A merge at a watermark a week on refits, and the next is due a week after that.
    m = SegmentModel(p)
    m.adopt(doc)
    later = points(40, seed=21)
    merged, events = merge(doc, delta_from(m, later[:10]), later, p, 1, watermark_ms=t0 + week)
    assert [e["event"] for e in events] == ["refit"]
    assert merged.fitted_at_event_ms == t0 + week
    assert not refit_due(merged, p, watermark_ms=t0 + 2 * week - 1)
    assert refit_due(merged, p, watermark_ms=t0 + 2 * week)


def test_a_forced_refit_records_its_watermark_and_the_snapshot_statistics() -> None:
    doc = seeded()
    snap = points(40, seed=8)
    new, _ = refit(doc, snap, P, now_ms=9, watermark_ms=123_456)
    assert new.fitted_at_event_ms == 123_456
    assert new.fitted_at_updates == new.updates
    assert new.population is not None
    np.testing.assert_allclose(new.population, population(snap))
    np.testing.assert_allclose(new.scaler.to_scaler().mean, snap.mean(axis=0))


def test_the_warm_start_fits_on_the_snapshot_not_on_the_updates() -> None:
    snapshot = points(40)
    # The updates merged (one busy user's many vectors, say) are far from the snapshot.
    busy = points(10, seed=5) + 100.0
    doc, _ = merge(None, warm_delta(busy), snapshot, P, now_ms=0)
    assert doc.ready and doc.k == 3 and doc.updates == 30
    scaler = doc.scaler.to_scaler()
    assert scaler.count == 120
    np.testing.assert_allclose(scaler.mean, snapshot.mean(axis=0))
    np.testing.assert_allclose(scaler.std, snapshot.std(axis=0))
    assert doc.population is not None
    np.testing.assert_allclose(doc.population, population(snapshot))
    assert doc.rfm == rfm_population(snapshot).to_dict()
    assert (doc.fitted_at_updates, doc.fitted_at_event_ms) == (30, 0)


def test_rfm_population_leaves_out_recency_of_users_who_never_bought() -> None:
    def user(days_without: float, orders: float, spend: float) -> np.ndarray:
        return to_vector(
            {"frequency": orders, "monetary": spend, "days_without_purchase": days_without}
        )

    snapshot = np.stack(
        [user(3.0, 2, 80.0), user(40.0, 1, 20.0), user(400.0, 1, 5.0), user(30.0, 0, 0.0)]
    )
    sk = rfm_population(snapshot)
    # A purchase a year or more ago (capped at 365) and no purchase at all add no recency:
    # for who never bought, days without a purchase are their tenure (30 days here), not
    # a recency.
    assert sk.recency.count == 2.0
    assert sk.recency.quantile(0.0) == pytest.approx(3.0, rel=0.05)
    assert sk.recency.quantile(1.0) == pytest.approx(40.0, rel=0.05)
    assert sk.frequency.count == sk.monetary.count == 4.0


def test_snapshot_scaler_weighs_every_user_once() -> None:
    snap = points(20, seed=3)
    s = snapshot_scaler(snap)
    assert s.count == 60
    np.testing.assert_allclose(s.mean, snap.mean(axis=0))
    np.testing.assert_allclose(s.m2, ((snap - snap.mean(axis=0)) ** 2).sum(axis=0))
    np.testing.assert_allclose(s.m2, stats(snap).m2)


def test_the_typical_customer_goes_without_an_order_as_long_as_the_typical_buyer() -> None:
    d = len(MODEL_FEATURES)
    orders, days = MODEL_FEATURES.index("frequency"), MODEL_FEATURES.index("days_without_purchase")
    snap = np.zeros((5, d))
    snap[:, days] = np.log1p([2.0, 4.0, 6.0, 200.0, 300.0])
    snap[:3, orders] = np.log1p(3.0)
    typical = population(snap)
    # Over everyone the median would be 6 days; over the three buyers it is 4.
    assert np.expm1(typical[days]) == pytest.approx(4.0)
    np.testing.assert_array_equal(np.delete(typical, days), np.delete(np.median(snap, 0), days))
    # Nobody bought: the median over everyone.
    snap[:, orders] = 0.0
    assert np.expm1(population(snap)[days]) == pytest.approx(6.0)


# -- the checkpoint as plain values (what Redis holds) ---------------------------------------

#: The keys of a fresh checkpoint, in the order it is written with.
FRESH_KEYS = [
    "format",
    "features",
    "merges",
    "version",
    "published",
    "epoch",
    "ready",
    "k",
    "ids",
    "next_id",
    "centres",
    "counts",
    "recent_wins",
    "scaler",
    "updates",
    "k_choice",
    "events",
]
#: The keys a fit adds, in the order it adds them.
FIT_KEYS = ["population", "rfm", "fitted_at_updates", "fitted_at_event_ms"]


def steps() -> dict[str, Checkpoint]:
    """The checkpoint after a warm start, a merge, a refit and a rollback."""
    warm = seeded()
    m = SegmentModel(P)
    m.adopt(warm)
    merged, _ = merge(warm, delta_from(m, points(5, seed=3)), None, P, 10_000)
    refitted, _ = refit(merged, points(40, seed=8), P, now_ms=11_000, watermark_ms=123_456)
    rolled, _ = rollback(refitted, warm, now_ms=12_000)
    return {"warm start": warm, "merge": merged, "refit": refitted, "rollback": rolled}


def json_only(value: Any) -> bool:
    """Whether ``value`` is made of what JSON decodes to (dicts, lists, str, numbers,
    bools, None), as the checkpoint's dicts always were: no tuples or arrays."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and json_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(json_only(v) for v in value)
    return value is None or isinstance(value, str | int | float)


@pytest.mark.parametrize("step", ["warm start", "merge", "refit", "rollback"])
def test_the_checkpoint_round_trips_through_plain_values_and_json(step: str) -> None:
    c = steps()[step]
    d = c.to_dict()
    assert json_only(d)
    assert Checkpoint.from_dict(d) == c
    blob = orjson.dumps(d, option=orjson.OPT_SERIALIZE_NUMPY)
    back = Checkpoint.from_dict(orjson.loads(blob))
    assert back == c
    # Byte for byte through JSON.
    assert orjson.dumps(back.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY) == blob
    # The published model is the learning state as it was published.
    assert c.published is not None
    assert d["published"] == {
        "at_ms": c.published.at_ms,
        "updates": c.published.updates,
        "centres": [list(r) for r in c.published.centres],
        "scaler": c.published.scaler.to_dict(),
    }
    assert d["scaler"] == c.scaler.to_scaler().to_dict()
    assert c.k_choice is not None
    assert d["k_choice"]["scores"] == {str(k): v for k, v in c.k_choice.scores}


def test_keys_are_written_in_one_order_whatever_order_they_were_read_in() -> None:
    s = steps()
    for step in ("warm start", "merge", "refit"):
        assert list(s[step].to_dict()) == FRESH_KEYS + FIT_KEYS, step
    assert list(s["rollback"].to_dict()) == [*FRESH_KEYS, *FIT_KEYS, "rolled_back_from"]
    m = SegmentModel(P)
    m.adopt(s["rollback"])
    after, _ = merge(s["rollback"], delta_from(m, points(3, seed=5)), None, P, 30_000)
    assert after.version == s["rollback"].version + 1 and after.rolled_back_from is None
    assert list(after.to_dict()) == FRESH_KEYS + FIT_KEYS
    # As the store holds it (merges first, its stamps last), read back and fitted: the
    # store's stamps go after the fit's keys.
    early, _ = merge(None, warm_delta(points(5)), None, P, 0)
    stamped = replace(early, saved_at_ms=1, history_at_ms=0)
    stored = {"merges": stamped.merges, **stamped.to_dict()}
    pts = points(40)
    fitted, _ = merge(Checkpoint.from_dict(stored), warm_delta(pts), pts, P, 2)
    assert fitted.ready
    assert list(fitted.to_dict()) == [*FRESH_KEYS, *FIT_KEYS, "saved_at_ms", "history_at_ms"]


def test_older_and_newer_checkpoints_are_read_and_written_back_as_they_were() -> None:
    d = seeded().to_dict()
    # As an older release wrote it: no population, RFM sketches or fit watermark,
    # fitted_at_updates right after the events, a publication without its update count;
    # and with a key of a newer release.
    legacy: dict[str, Any] = {}
    for k, v in d.items():
        if k not in FIT_KEYS:
            legacy[k] = v
        if k == "events":
            legacy["fitted_at_updates"] = d["fitted_at_updates"]
            legacy["added_by_a_newer_release"] = {"x": [1, 2.5]}
    legacy["published"] = {k: v for k, v in d["published"].items() if k != "updates"}
    c = Checkpoint.from_dict(legacy)
    assert (c.population, c.rfm, c.fitted_at_event_ms) == (None, None, None)
    assert c.published is not None and c.published.updates is None
    assert c.fitted_at_updates == d["fitted_at_updates"]
    assert c.to_dict() == legacy  # every key and value, in the one order
    m = SegmentModel(P)
    m.adopt(c)
    assert m.ready and m.population is None and m.rfm is None
    # A merge keeps the newer release's key; the refit it makes adds the fit's keys.
    pts = points(40, seed=8)
    refitted, _ = merge(c, delta_from(m, pts[:5]), pts, P, 1, refit=True)
    assert list(refitted.to_dict()) == [*FRESH_KEYS, *FIT_KEYS, "added_by_a_newer_release"]
    assert refitted.to_dict()["added_by_a_newer_release"] == {"x": [1, 2.5]}


def test_users_that_all_look_alike_leave_the_model_warming_up() -> None:
    same = np.zeros((80, D))  # 80 users, one vector: nothing to split into segments
    doc, events = merge(None, warm_delta(same), same, P, now_ms=0)
    assert not doc.ready and events == []
    few = np.concatenate([same[:78], np.ones((2, D))])  # two distinct vectors, k_min is 2
    doc, events = merge(doc, warm_delta(few), few, P, now_ms=0)
    assert not doc.ready and events == []
    pts = points(30)
    doc, events = merge(doc, warm_delta(pts), pts, P, now_ms=0)
    assert doc.ready and [e["event"] for e in events] == ["born"] * doc.k
