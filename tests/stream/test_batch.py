"""process_batch: one micro-batch from events to states, segments and changes."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence

import numpy as np
import orjson
import pytest

from stream.batch import (
    MESSAGE_FEATURES,
    BatchResult,
    Clock,
    SegmentNames,
    partition_of,
    process_batch,
)
from stream.checkpoint import ModelParams
from stream.events import Event
from stream.features import DAY_MS, HOUR_MS, MINUTE_MS, UserState, apply_events, compute_features
from stream.messages import change_id
from stream.model import SegmentModel
from stream.reassessment import QueueEntry
from stream.scaling import MODEL_FEATURES, to_vector
from stream.stored_change import StoredChange
from stream.timers import NEVER_MS, next_due, quiet_reason

T = 1_700_000_000_000
EMITTED = T + 5_000
MARGIN = 0.15
WINDOW = 32


class Shop:
    """Hands out events with per-partition offsets, as one consumer would read them."""

    def __init__(self) -> None:
        self.offsets = {"shop.clicks": itertools.count(100), "shop.purchases": itertools.count(500)}
        self.ids = itertools.count(1)

    def ev(
        self, user: str, etype: str, ts: int, event_id: str | None = None, **kw: object
    ) -> Event:
        topic = "shop.purchases" if etype == "purchase" else "shop.clicks"
        if etype == "purchase":
            kw.setdefault("amount", 10.0)
        return Event(
            event_id=event_id or f"{user}-e{next(self.ids)}",
            user_id=user,
            type=etype,
            ts_ms=ts,
            topic=topic,
            partition=0,
            offset=next(self.offsets[topic]),
            **kw,  # type: ignore[arg-type]
        )

    def buyer(self, user: str, amount: float) -> list[Event]:
        evs = [self.ev(user, "view", T - 20 * DAY_MS, category="tv")]
        evs += [self.ev(user, "view", T - d * DAY_MS, category=f"c{d}") for d in (9, 5, 2)]
        evs += [self.ev(user, "add_to_cart", T - d * DAY_MS - HOUR_MS) for d in (9, 5, 2)]
        evs += [self.ev(user, "purchase", T - d * DAY_MS, amount=amount) for d in (9, 5, 2)]
        return evs

    def browser(self, user: str) -> list[Event]:
        evs = [
            self.ev(user, "view", T - d * HOUR_MS - m * MINUTE_MS)
            for d in (3, 30)
            for m in (1, 2, 3)
        ]
        evs.append(self.ev(user, "search", T - 15 * DAY_MS))
        evs.append(self.ev(user, "add_to_cart", T - 2 * HOUR_MS))
        return evs


def run(
    batch: dict[str, Sequence[Event]],
    states: dict[str, UserState | None],
    model: SegmentModel,
    names: SegmentNames,
) -> BatchResult:
    return process_batch(batch, states, model, names, MARGIN, WINDOW, EMITTED)


def small_model() -> SegmentModel:
    return SegmentModel(
        ModelParams(
            k_min=2,
            k_max=2,
            halflife=0.2,
            warmup_users=4,
            reservoir_size=50,
            publish_interval_ms=0,  # every sync publishes: decisions follow the learning
            seed=3,
        )
    )


def observed(model: SegmentModel) -> int:
    """User updates the model observed since it adopted its checkpoint."""
    return model.delta().updates


@pytest.fixture
def world() -> tuple[Shop, SegmentModel, SegmentNames]:
    return Shop(), small_model(), SegmentNames()


def test_before_warmup_no_segments_and_no_changes(world) -> None:
    shop, model, names = world
    batch = {"u1": shop.buyer("u1", 300.0), "u2": shop.browser("u2")}
    r = run(batch, {}, model, names)
    assert not model.ready
    assert observed(model) == 2
    assert [u.user_id for u in r.updates] == ["u1", "u2"]
    for u in r.updates:
        assert u.change is None and u.decision is None
        assert u.previous_segment is None
        assert u.state.segment is None and u.state.segment_name is None
        assert u.write is True and u.republish is None
        assert u.features == compute_features(apply_events(None, batch[u.user_id]).state)
    assert (r.replayed, r.duplicates, r.late) == (0, 0, 0)
    assert r.applied == Counter(
        {
            ("shop.clicks", "view"): 4 + 6,
            ("shop.clicks", "add_to_cart"): 3 + 1,
            ("shop.purchases", "purchase"): 3,
            ("shop.clicks", "search"): 1,
        }
    )
    assert names.names == {}


def warm_up(shop: Shop, model: SegmentModel, names: SegmentNames):
    """Six users arrive before the warm start; the sync seeds the model; four new users
    then arrive and are decided. Returns all states, the last batch and its result."""
    batch1 = {"u1": shop.buyer("u1", 300.0), "u2": shop.browser("u2")}
    r1 = run(batch1, {}, model, names)
    states = {u.user_id: u.state for u in r1.updates}
    batch2 = {"u3": shop.buyer("u3", 250.0), "u4": shop.browser("u4")}
    r2 = run(batch2, states, model, names)
    states.update({u.user_id: u.state for u in r2.updates})
    assert not model.ready
    model.sync_local(now_ms=T)
    assert model.ready
    batch3 = {
        "u5": shop.buyer("u5", 400.0),
        "u6": shop.browser("u6"),
        "u7": shop.buyer("u7", 350.0),
        "u8": shop.browser("u8"),
    }
    r3 = run(batch3, states, model, names)
    states.update({u.user_id: u.state for u in r3.updates})
    return states, batch3, r3


def test_after_warmup_every_user_gets_a_segment_and_a_change(world) -> None:
    shop, model, names = world
    _, batch2, r = warm_up(shop, model, names)
    assert model.ready and model.version == 1
    assert model.updates == 4 and observed(model) == 4
    assert len(names.names) == 2
    assert [u.user_id for u in r.updates] == ["u5", "u6", "u7", "u8"]
    for u in r.updates:
        c, d, s = u.change, u.decision, u.state
        assert c is not None and d is not None
        trigger = batch2[u.user_id][-1]
        assert u.previous_segment is None and c.previous_segment is None
        assert c.previous_segment_name is None
        assert s.segment == c.segment == d.segment in (0, 1)
        assert s.segment_name == c.segment_name == names.get(c.segment)
        assert s.segment_since_ms == s.last_event_ms
        assert c.change_id == change_id(u.user_id, trigger.event_id, None, c.segment)
        assert c.user_id == u.user_id
        assert c.event_time_ms == trigger.ts_ms
        assert c.emitted_at_ms == EMITTED
        assert c.model_version == 1
        assert c.runner_up_segment == 1 - c.segment  # ids 0 and 1, born at the warm start
        assert c.distance_margin == d.margin >= 0
        assert c.top_features == d.top_features
        assert c.features == {k: u.features[k] for k in MESSAGE_FEATURES}
        assert s.last_change is not None
        assert s.last_change.pos == f"{trigger.topic}:{trigger.partition}"
        assert s.last_change.offset == trigger.offset
        assert s.last_change.value() == c.to_json()
        assert u.write is True and u.republish is None
    # Buyers and browsers are told apart.
    seg = {u.user_id: u.state.segment for u in r.updates}
    assert seg["u5"] == seg["u7"] != seg["u6"] == seg["u8"]


def test_replayed_batch_applies_nothing_and_decides_nothing(world) -> None:
    shop, model, names = world
    _, batch2, r2 = warm_up(shop, model, names)
    states = {u.user_id: u.state for u in r2.updates}
    snapshot = {uid: orjson.dumps(s.to_dict()) for uid, s in states.items()}
    centres = model.local_centres().copy()
    updates = observed(model)

    r3 = run(batch2, states, model, names)

    assert r3.replayed == sum(len(evs) for evs in batch2.values())
    assert (r3.duplicates, r3.late, r3.applied) == (0, 0, Counter())
    assert observed(model) == updates
    np.testing.assert_array_equal(model.local_centres(), centres)
    assert {uid: orjson.dumps(s.to_dict()) for uid, s in states.items()} == snapshot
    # No new change, no state to write ...
    assert all(u.change is None and u.decision is None for u in r3.updates)
    assert not [u for u in r3.updates if u.write]
    # ... only the changes whose commit is in doubt, republished byte for byte.
    first = {u.user_id: u.change for u in r2.updates}
    assert [u.user_id for u in r3.updates] == ["u5", "u6", "u7", "u8"]
    for u in r3.updates:
        c = first[u.user_id]
        assert c is not None
        assert u.republish == c.to_json()
        assert u.republish_segment == c.segment
        assert u.previous_segment is None


def test_replay_of_events_other_than_the_trigger_publishes_nothing(world) -> None:
    shop, model, names = world
    _, batch2, r2 = warm_up(shop, model, names)
    states = {u.user_id: u.state for u in r2.updates}
    without_trigger = {uid: evs[:-1] for uid, evs in batch2.items()}
    r = run(without_trigger, states, model, names)
    assert r.updates == []
    assert r.replayed == sum(len(evs) for evs in without_trigger.values())


def test_duplicates_by_event_id_are_counted_and_written_without_learning(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    # u1's first two events (ids u1-e1, u1-e2) delivered again at new offsets.
    again = [shop.ev("u1", "view", T, event_id="u1-e1"), shop.ev("u1", "view", T, event_id="u1-e2")]
    updates = observed(model)
    r = run({"u1": again}, states, model, names)
    assert (r.duplicates, r.replayed, r.late) == (2, 0, 0)
    assert observed(model) == updates
    (u,) = r.updates
    assert u.change is None and u.decision is None and u.write
    assert u.state.offsets["shop.clicks:0"] == again[-1].offset
    assert u.features == compute_features(states["u1"])  # type: ignore[arg-type]


def test_late_only_users_are_written_without_learning(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    updates = observed(model)
    # Late: older than the longest window (364 days) before u2's latest event.
    r = run({"u2": [shop.ev("u2", "click", T - 400 * DAY_MS)]}, states, model, names)
    assert r.late == 1
    assert observed(model) == updates
    (u,) = r.updates
    assert u.change is None and u.write


def test_learning_is_once_per_user_and_after_deciding(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    batch = {
        "u1": [shop.ev("u1", "purchase", T + i * MINUTE_MS, amount=90.0) for i in range(5)],
        "u2": [shop.ev("u2", "view", T + i * MINUTE_MS) for i in range(3)],
    }
    model.sync_local(now_ms=T)  # adopt what the warm-up batches learned
    before = model.centres().copy()
    counts = np.array(model.checkpoint.counts, float)
    updates = observed(model)
    np.testing.assert_array_equal(model.local_centres(), before)  # nothing learned since
    r = run(batch, states, model, names)
    assert observed(model) == updates + 2  # two users, eight events
    assert sum(r.applied.values()) == 8
    # Decisions used the centres from before the batch's learning.
    raws = np.stack([to_vector(u.features) for u in r.updates])
    zs = model.scale(raws)
    for u, z in zip(r.updates, zs, strict=True):
        assert u.decision is not None
        assert u.decision.segment == int(np.argmin(np.linalg.norm(before - z, axis=1)))
        assert u.previous_segment is None  # they arrived before the warm start
        assert u.change is not None and u.change.previous_segment is None
    # Then each user moved its nearest local centre once, in order, by the counted step;
    # the centres decisions use stay as adopted until the next sync.
    expected = before.copy()
    for z in zs:
        j = int(np.argmin(np.linalg.norm(expected - z, axis=1)))
        step = max(1.0 / (counts[j] + 1.0), model.params.halflife)
        expected[j] += step * (z - expected[j])
        counts[j] += 1
    np.testing.assert_allclose(model.local_centres(), expected, rtol=1e-12)
    np.testing.assert_array_equal(model.centres(), before)


def test_a_user_with_a_segment_keeps_it_under_hysteresis(world) -> None:
    shop, model, names = world
    _, _, r2 = warm_up(shop, model, names)
    states = {u.user_id: u.state for u in r2.updates}
    seg = states["u5"].segment
    r = run({"u5": [shop.ev("u5", "view", T + MINUTE_MS)]}, states, model, names)
    (u,) = r.updates
    assert u.previous_segment == seg
    assert u.decision is not None and not u.decision.changed
    assert u.change is None
    assert u.state.segment == seg
    assert u.state.segment_name == names.get(seg)  # type: ignore[arg-type]
    assert u.state.last_change == states["u5"].last_change


def test_input_states_are_not_mutated(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    snapshot = {uid: orjson.dumps(s.to_dict()) for uid, s in states.items()}
    run({"u1": [shop.ev("u1", "purchase", T + HOUR_MS)]}, states, model, names)
    assert {uid: orjson.dumps(s.to_dict()) for uid, s in states.items()} == snapshot


def test_empty_batch() -> None:
    model = small_model()
    r = run({}, {}, model, SegmentNames())
    assert r.updates == [] and observed(model) == 0


def test_segment_names_fall_back_and_refresh() -> None:
    names = SegmentNames()
    assert names.get(3) == "segment_3"
    model = small_model()
    names.refresh(model)  # not ready: nothing to name
    assert names.names == {}
    for v in np.random.default_rng(0).normal(size=(4, len(MODEL_FEATURES))):
        model.observe(v)
    model.sync_local(now_ms=T)
    names.refresh(model)
    assert set(names.names) == {0, 1}
    assert all(isinstance(n, str) and n for n in names.names.values())


def test_users_seen_before_warmup_are_remembered(world) -> None:
    shop, model, names = world
    warm_up(shop, model, names)
    # u1..u4 arrived before the warm start; u5..u8 were decided after it.
    assert model.unassigned == ["u1", "u2", "u3", "u4"]


#: Where changes made without an event are stored (the Shop's users are on partition 0).
MARK_TOPIC = "segments.marks"
MARK_POS = "segments.marks:0"
SEQ = 5  # the mark this batch commits past


def entries(*users: str, version: int = 0) -> dict[str, QueueEntry]:
    """Queue entries for ``users``, with distinct tokens."""
    return {u: QueueEntry(version, 1000 + i) for i, u in enumerate(users)}


def marks_of(users: Sequence[str], seq: int = SEQ) -> dict[str, tuple[str, int]]:
    return {u: (MARK_POS, seq) for u in users}


def reassess(
    states: dict[str, UserState | None],
    model: SegmentModel,
    names: SegmentNames,
    queued: dict[str, QueueEntry],
    committed: dict[str, int] | None = None,
    events: dict[str, Sequence[Event]] | None = None,
) -> BatchResult:
    """A batch without input for the ``queued`` users, at mark ``SEQ``."""
    return process_batch(
        events or {},
        states,
        model,
        names,
        MARGIN,
        WINDOW,
        EMITTED,
        reassess=list(queued),
        queued=queued,
        committed={MARK_POS: SEQ} if committed is None else committed,
        marks=marks_of(list(queued)),
        mark_topic=MARK_TOPIC,
    )


def assign_u1(shop: Shop, model: SegmentModel, names: SegmentNames):
    """After the warm start, u1 gets its first segment from the queue: the states, u1's
    queue entry and its update."""
    states, _, _ = warm_up(shop, model, names)
    queued = entries("u1")
    assigned = reassess(states, model, names, queued).updates[0]
    return states, queued, assigned


def test_reassess_gives_a_first_segment_without_learning(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    snapshot = {uid: orjson.dumps(s.to_dict()) for uid, s in states.items()}
    centres = model.local_centres().copy()
    updates = observed(model)
    queued = entries("u1", "u2", "nobody")
    r = reassess(states, model, names, queued)
    assert observed(model) == updates
    np.testing.assert_array_equal(model.local_centres(), centres)
    assert {uid: orjson.dumps(s.to_dict()) for uid, s in states.items()} == snapshot
    assert [u.user_id for u in r.updates] == ["u1", "u2"]
    for u in r.updates:
        c, s = u.change, u.state
        assert c is not None and u.decision is not None
        last = states[u.user_id].last_event_ms  # type: ignore[union-attr]
        token = queued[u.user_id].token
        assert c.previous_segment is None
        assert s.segment == c.segment
        key = f"assign:{model.epoch}:{token}"
        assert c.change_id == change_id(u.user_id, key, None, c.segment)
        assert c.event_time_ms == last
        # Stored at the batch's mark: in doubt until the group's mark is past it.
        assert s.last_change == StoredChange.of(MARK_POS, SEQ, c)
        assert s.last_change.value() == c.to_json()
    # Both leave the queue once the batch committed; the unknown user's entry stays.
    assert r.settle == {u: (queued[u], model.version) for u in ("u1", "u2")}
    assert r.republished == 0
    # Read again while the group's mark is still at SEQ (that transaction never
    # committed): published again as they were.
    assigned = {u.user_id: u.state for u in r.updates}
    again = reassess(assigned, model, names, {u: queued[u] for u in ("u1", "u2")})
    first = {u.user_id: u.change for u in r.updates}
    assert [(u.user_id, u.write, u.change) for u in again.updates] == [
        ("u1", False, None),
        ("u2", False, None),
    ]
    for u in again.updates:
        c = first[u.user_id]
        assert c is not None
        assert u.republish == c.to_json()
        assert u.republish_segment == c.segment
    assert again.republished == 2
    assert again.settle == {u: (queued[u], model.version) for u in ("u1", "u2")}
    # Once the mark is past SEQ, they were delivered: nothing goes out again.
    after = reassess(
        assigned, model, names, {u: queued[u] for u in ("u1", "u2")}, {MARK_POS: SEQ + 1}
    )
    assert after.updates == [] and after.republished == 0


def test_reassess_skips_users_with_events_in_the_batch(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    updates = observed(model)
    batch = {"u1": [shop.ev("u1", "view", T + MINUTE_MS)]}
    queued = entries("u1")
    r = reassess(states, model, names, queued, events=batch)
    assert [u.user_id for u in r.updates] == ["u1"]
    assert observed(model) == updates + 1  # learned once, from its events
    (u,) = r.updates
    assert u.change is not None
    assert u.state.last_change is not None and u.state.last_change.pos == "shop.clicks:0"
    assert r.settle == {"u1": (queued["u1"], model.version)}  # it has a segment now


def test_an_in_doubt_assignment_is_published_again_before_the_users_event(world) -> None:
    shop, model, names = world
    states, _queued, assigned = assign_u1(shop, model, names)
    assert assigned.change is not None
    states["u1"] = assigned.state
    batch = {"u1": [shop.ev("u1", "view", T + MINUTE_MS)]}

    def with_event(committed_mark: int) -> BatchResult:
        return process_batch(
            batch,
            states,
            model,
            names,
            MARGIN,
            WINDOW,
            EMITTED,
            committed={MARK_POS: committed_mark},
            mark_topic=MARK_TOPIC,
        )

    # The group's mark not past the assignment's: never committed, so it goes out again,
    # first, whatever queue the user is in.
    r = with_event(SEQ)
    first, *rest = r.updates
    assert first.republish == assigned.change.to_json() and not first.write
    assert [u.user_id for u in rest] == ["u1"] and rest[0].write
    assert r.republished == 1
    # Past it: committed. Nothing is published again, and the delivered assignment is
    # dropped from the state written.
    r = with_event(SEQ + 1)
    assert all(u.republish is None for u in r.updates) and r.republished == 0
    (u,) = [u for u in r.updates if u.write]
    assert u.state.last_change is None


def test_queued_again_a_committed_assignment_is_not_published_again(world) -> None:
    shop, model, names = world
    states, _queued, assigned = assign_u1(shop, model, names)
    states["u1"] = assigned.state
    # The assignment committed (the mark moved on); later the user is queued again (their
    # segment retired, say): nothing is published again, the entry simply resolved.
    requeued = {"u1": QueueEntry(model.version, 555)}
    r = reassess(states, model, names, requeued, {MARK_POS: SEQ + 1})
    assert r.updates == [] and r.settle == {"u1": (requeued["u1"], model.version)}


def test_an_entry_for_a_newer_model_version_waits(world) -> None:
    shop, model, names = world
    states, _queued, assigned = assign_u1(shop, model, names)
    states["u1"] = assigned.state
    # Queued to move by a newer version than this model's (which still has the segment).
    newer = {"u1": QueueEntry(model.version + 1, 777)}
    r = reassess(states, model, names, newer, {MARK_POS: SEQ + 1})
    assert r.updates == [] and r.settle == {}  # left queued, for a newer model
    # With its assignment in doubt: published again, and the entry left (given a fresh
    # token) for the newer model.
    r = reassess(states, model, names, newer, {MARK_POS: SEQ})
    assert r.republished == 1 and r.settle == {"u1": (newer["u1"], -1)}


def test_members_of_a_retired_segment_move_to_a_current_one(world) -> None:
    shop, model, names = world
    _states, _queued, assigned = assign_u1(shop, model, names)
    gone = max(model.ids) + 5  # a segment this model does not have
    st = assigned.state.copy()
    st.segment, st.last_change = gone, None
    retired = {"u1": QueueEntry(model.version, 9)}
    r = reassess({"u1": st}, model, names, retired)
    (u,) = r.updates
    assert u.change is not None and u.change.previous_segment == gone
    assert u.change.reason == f"segment {gone} retired at model version {model.version}"
    assert u.state.segment in model.ids
    assert u.state.last_change == StoredChange.of(MARK_POS, SEQ, u.change)
    assert r.settle == {"u1": (retired["u1"], model.version)}


def test_a_stored_change_is_kept_until_its_batch_is_known_committed(world) -> None:
    shop, model, names = world
    _, _, r2 = warm_up(shop, model, names)
    states = {u.user_id: u.state for u in r2.updates}
    lc = states["u5"].last_change
    assert lc is not None and lc.pos == "shop.purchases:0"
    batch = {"u5": [shop.ev("u5", "view", T + MINUTE_MS)]}

    def written(committed: dict[str, int]) -> UserState:
        r = process_batch(batch, states, model, names, MARGIN, WINDOW, EMITTED, committed=committed)
        (u,) = r.updates
        return u.state

    # Not known committed (another partition, or not past the trigger): kept for a replay.
    assert written({}).last_change == lc
    assert written({"shop.clicks:0": 10**9}).last_change == lc
    assert written({"shop.purchases:0": lc.offset}).last_change == lc
    # Committed past the trigger: no replay can need it, so it is dropped.
    assert written({"shop.purchases:0": lc.offset + 1}).last_change is None
    assert states["u5"].last_change == lc  # the input state is not changed


# -- event time: the clock, the sweep and its timers ---------------------------------------


def test_features_are_computed_as_of_the_clocks_watermark(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    wm = T + 10 * DAY_MS
    batch = {"u9": shop.buyer("u9", 120.0)}  # a new user: last event two days before T
    r = process_batch(
        batch, states, model, names, MARGIN, WINDOW, EMITTED, clock=Clock(wm, "lifetime")
    )
    (u,) = r.updates
    assert u.features == compute_features(u.state, wm, "lifetime")
    assert u.features != compute_features(u.state)
    # As of the watermark, not the user's own last event: twelve days of quiet.
    assert u.features["days_since_last_event"] == 12.0
    assert u.features["days_since_last_purchase"] == 12.0
    assert u.features["events_7d"] == 0.0
    assert (u.features["frequency"], u.features["monetary"]) == (3.0, 360.0)
    c = u.change
    assert c is not None and c.previous_segment is None and c.reason is None
    assert c.watermark_ms == wm
    assert c.event_time_ms == batch["u9"][-1].ts_ms
    assert c.features == {k: u.features[k] for k in MESSAGE_FEATURES}
    assert orjson.loads(c.to_json())["watermark"] == "2023-11-24T22:13:20.000Z"
    # The decision used the vector of those features.
    z = model.scale(to_vector(u.features))
    assert u.decision is not None
    np.testing.assert_allclose(
        u.decision.margin, model.decide(None, z, model.distances(z), MARGIN).margin
    )


def test_a_watermark_behind_the_users_events_changes_nothing(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    batch = {"u5": [shop.ev("u5", "view", T + MINUTE_MS)]}
    behind = process_batch(
        batch, states, model, names, MARGIN, WINDOW, EMITTED, clock=Clock(T - DAY_MS)
    )
    none = process_batch(batch, states, model, names, MARGIN, WINDOW, EMITTED)
    assert behind.updates[0].features == none.updates[0].features
    assert none.updates[0].features == compute_features(behind.updates[0].state)


def sweep(
    states: dict[str, UserState | None],
    model: SegmentModel,
    names: SegmentNames,
    users: Sequence[str],
    due: int,
    wm: int,
    timers: dict[str, int] | None = None,
    events: dict[str, Sequence[Event]] | None = None,
    committed_mark: int = SEQ + 1,
    committed: dict[str, int] | None = None,
    margin: float = 0.0,
) -> BatchResult:
    """Sweep ``users`` whose timers stand at ``due`` (unless ``timers`` says otherwise),
    with no hysteresis (unless ``margin``), so a user nearer another centre moves; at mark
    ``SEQ + 1`` (the group's mark at ``committed_mark``; other positions at
    ``committed``)."""
    return process_batch(
        events or {},
        states,
        model,
        names,
        margin,
        WINDOW,
        EMITTED,
        committed={MARK_POS: committed_mark, **(committed or {})},
        clock=Clock(wm),
        sweep=users,
        timers={u: due for u in users} if timers is None else timers,
        marks=marks_of(users, SEQ + 1),
        mark_topic=MARK_TOPIC,
    )


#: A month of quiet after the warm-up: buyers u5 and u7 last bought two days before T.
DUE = T + 31 * DAY_MS - 1_000
WM = T + 31 * DAY_MS


def test_a_swept_user_moves_with_the_reason(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    before = states["u5"]
    assert before is not None and before.segment is not None
    as_read = before.copy()
    updates, centres = observed(model), model.local_centres().copy()
    r = sweep(states, model, names, ["u5"], DUE, WM)
    (u,) = r.updates
    c = u.change
    assert c is not None and u.decision is not None and u.write
    assert c.previous_segment == u.previous_segment == before.segment != c.segment
    assert u.features == compute_features(before, WM)
    assert c.reason == quiet_reason(u.features) == "no purchase for 33 days"
    assert c.change_id == change_id("u5", f"timer:{model.version}:{DUE}", before.segment, c.segment)
    assert c.event_time_ms == DUE and c.watermark_ms == WM
    assert u.state.segment == c.segment and u.state.segment_since_ms == DUE
    assert u.state.last_change == StoredChange.of(MARK_POS, SEQ + 1, c)
    doc = orjson.loads(c.to_json())
    assert doc["explanation"]["reason"] == "no purchase for 33 days"
    # Nothing learned from a sweep, and the input state is left as it was.
    assert observed(model) == updates
    np.testing.assert_array_equal(model.local_centres(), centres)
    assert states["u5"] is before and before == as_read
    assert before.segment == c.previous_segment
    # The timer moves on to the next threshold after the watermark.
    assert r.timers == {"u5": (0, next_due(u.state, WM))}
    assert r.timers["u5"][1] == before.last_purchase_ms + 45 * DAY_MS  # type: ignore[operator]


def test_a_swept_user_who_stays_is_written_without_a_change(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    st = states["u6"]
    assert st is not None
    r = sweep(states, model, names, ["u6"], DUE, WM)
    (u,) = r.updates
    assert u.change is None and u.decision is not None and not u.decision.changed
    assert u.write and u.state.segment == st.segment
    assert u.features == compute_features(st, WM)
    assert r.timers == {"u6": (0, next_due(st, WM))}
    assert r.timers["u6"][1] == st.last_event_ms + 45 * DAY_MS


def test_a_sweep_change_id_is_stable_for_the_same_due_time(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    first = sweep(states, model, names, ["u5"], DUE, WM).updates[0].change
    again = sweep(states, model, names, ["u5"], DUE, WM + HOUR_MS).updates[0].change
    other = sweep(states, model, names, ["u5"], DUE + 1, WM).updates[0].change
    assert first is not None and again is not None and other is not None
    assert first.change_id == again.change_id != other.change_id


def test_an_in_doubt_sweep_change_is_published_again(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    moved = sweep(states, model, names, ["u5"], DUE, WM).updates[0]
    assert moved.change is not None
    states["u5"] = moved.state
    # The group's mark is not past the sweep's (its transaction never committed): the
    # change goes out again byte for byte, then the user is looked at afresh (no move:
    # they are where the change put them).
    r = sweep(states, model, names, ["u5"], DUE, WM + HOUR_MS, committed_mark=SEQ + 1)
    first, *rest = r.updates
    assert not first.write and first.change is None
    assert first.republish == moved.change.to_json()
    assert first.republish_segment == moved.change.segment
    assert r.republished == 1
    assert [x.change for x in rest] == [None]
    # The same when an event of the user's comes first: republished, then decided.
    ev = shop.ev("u5", "view", WM)
    r = sweep(states, model, names, [], DUE, WM, events={"u5": [ev]}, committed_mark=SEQ + 1)
    first, *rest = r.updates
    assert first.republish == moved.change.to_json() and not first.write
    assert [x.user_id for x in rest] == ["u5"] and rest[0].write


def test_a_committed_sweep_change_is_not_published_again(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    moved = sweep(states, model, names, ["u5"], DUE, WM).updates[0]
    assert moved.change is not None
    states["u5"] = moved.state
    # The group's mark moved past it: the user is decided again at the new due time, and
    # the stored change is not taken for one in doubt.
    later = next_due(moved.state, WM)
    assert later is not None
    r = sweep(states, model, names, ["u5"], later, later, committed_mark=SEQ + 2)
    assert r.republished == 0 and all(x.republish is None for x in r.updates)
    (u,) = r.updates
    assert u.write and u.decision is not None
    # An event (hysteresis keeping the segment): no republish, and the delivered sweep
    # change is dropped from the state written.
    ev = shop.ev("u5", "view", WM)
    r = process_batch(
        {"u5": [ev]},
        states,
        model,
        names,
        0.99,
        WINDOW,
        EMITTED,
        committed={MARK_POS: SEQ + 2},
        mark_topic=MARK_TOPIC,
    )
    (u,) = r.updates
    assert u.republish is None and u.write and u.change is None
    assert u.state.last_change is None


def test_who_the_sweep_leaves_alone(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    # u1 has no segment yet (seen before the warm start): it waits in the queue, and its
    # timer moves on past the watermark so it does not hold the head of the due list.
    assert states["u1"] is not None and states["u1"].segment is None
    r = sweep(states, model, names, ["u1", "nobody"], DUE, WM)
    assert r.updates == [] and list(r.timers) == ["u1"]
    part, due = r.timers["u1"]
    assert part == 0 and (due is None or due > WM)
    # No timer: nothing is due.
    r = sweep(states, model, names, ["u5"], DUE, WM, timers={})
    assert r.updates == []
    # A queued user is decided by the reassessment, not the sweep.
    r = process_batch(
        {},
        states,
        model,
        names,
        0.0,
        WINDOW,
        EMITTED,
        queued={"u5": QueueEntry(0, 1)},
        clock=Clock(WM),
        sweep=["u5"],
        timers={"u5": DUE},
        marks=marks_of(["u5"]),
        mark_topic=MARK_TOPIC,
    )
    assert r.updates == []
    # A user with events in the batch is decided by them, once, and learned from: swept,
    # u5 would move (no purchase for 33 days); buying again, it stays.
    updates = observed(model)
    ev = shop.ev("u5", "purchase", WM)
    r = sweep(states, model, names, ["u5"], DUE, WM, events={"u5": [ev]})
    (u,) = r.updates
    assert u.decision is not None and u.change is None
    assert observed(model) == updates + 1


def test_batch_result_timers_cover_every_written_user(world) -> None:
    shop, model, names = world
    r1 = run({"u1": shop.buyer("u1", 300.0), "u2": shop.browser("u2")}, {}, model, names)
    # Before the warm start too: their timers are set from their own last events.
    assert r1.timers == {u.user_id: (0, next_due(u.state, 0)) for u in r1.updates}
    st = r1.updates[0].state
    assert r1.timers["u1"][1] == st.last_purchase_ms + 7 * DAY_MS  # type: ignore[operator]
    _, batch3, r3 = warm_up(Shop(), small_model(), SegmentNames())
    assert set(r3.timers) == {"u5", "u6", "u7", "u8"}
    # A republish alone writes nothing, so sets no timer.
    replay = run(batch3, {u.user_id: u.state for u in r3.updates}, small_model(), names)
    assert replay.updates and replay.timers == {}
    # The partition is the user's input partition.
    ev = Event("p3", "u9", "view", T, "shop.clicks", 3, 10)
    r = run({"u9": [ev]}, {}, small_model(), SegmentNames())
    assert r.timers == {"u9": (3, T + 7 * DAY_MS)}
    assert partition_of(r.updates[0].state) == 3


def test_a_year_of_quiet_leaves_a_timer_that_is_never_due(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    st = states["u6"]
    assert st is not None
    wm = st.last_event_ms + 364 * DAY_MS
    r = sweep(states, model, names, ["u6"], wm, wm)
    # Kept, so that a change of the segments themselves brings it forward like any other.
    assert r.timers == {"u6": (0, NEVER_MS)}


def test_the_learning_budget_learns_from_a_uniform_sample_and_decides_everyone(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    model.sync_local(now_ms=T)
    users = [f"n{i}" for i in range(12)]
    batch = {u: [shop.ev(u, "view", T + i * MINUTE_MS)] for i, u in enumerate(users)}

    def learned_with(budget: int) -> tuple[BatchResult, int, np.ndarray]:
        m = small_model()
        m.adopt(model.checkpoint)
        before = m.delta().learned
        r = process_batch(
            batch, dict(states), m, names, MARGIN, WINDOW, EMITTED, learn_budget=budget
        )
        return r, m.delta().learned - before, m.local_centres()

    r, learned, centres = learned_with(5)
    assert (r.learned, r.sampled_out, learned) == (5, 7, 5)
    assert sum(u.decision is not None for u in r.updates) == 12  # decisions are unaffected
    _, _, centres_again = learned_with(5)  # the same batch learns from the same users
    np.testing.assert_array_equal(centres, centres_again)
    r_all, learned_all, _ = learned_with(0)
    assert (r_all.learned, r_all.sampled_out, learned_all) == (12, 0, 12)
    r_wide, _, _ = learned_with(12)
    assert (r_wide.learned, r_wide.sampled_out) == (12, 0)
    assert [u.decision for u in r.updates] == [u.decision for u in r_all.updates]


def test_a_swept_user_drops_a_stored_change_known_committed(world) -> None:
    shop, model, names = world
    states, _, _ = warm_up(shop, model, names)
    st = states["u6"]
    assert st is not None and st.last_change is not None  # their first segment, stored
    pos, offset = st.last_change.pos, st.last_change.offset

    def swept(committed_input: int) -> UserState:
        r = sweep(
            states, model, names, ["u6"], DUE, WM, committed={pos: committed_input}, margin=MARGIN
        )
        (u,) = r.updates
        assert u.write and u.change is None
        return u.state

    assert swept(offset + 1).last_change is None  # its batch committed: not needed again
    assert swept(offset).last_change == st.last_change  # maybe not: kept
    assert states["u6"].last_change is not None  # the input state is not mutated
