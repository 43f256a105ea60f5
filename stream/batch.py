"""One micro-batch through the logic: events -> features -> segment -> changes.

:func:`process_batch` takes the batch's events grouped by user and those users' stored
states, and returns the new states and the segment changes to publish. It does no I/O;
the only thing it changes in place is the learning model it is handed.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from stream.decision import Decision
from stream.events import Event
from stream.feature_registry import MESSAGE_FEATURES
from stream.features import UserState, apply_events, compute_features
from stream.messages import SegmentChange, change_id
from stream.model import SegmentModel
from stream.naming import profiles
from stream.quiet_drift import next_moves
from stream.reassessment import ASSIGN_POS, QueueEntry, settlement
from stream.rfm import RFMScores, rfm_scores
from stream.scaling import to_vector
from stream.stored_change import StoredChange
from stream.timers import TIMER_POS, next_due, quiet_reason


@dataclass(frozen=True, slots=True)
class UserUpdate:
    """A user's new state, to be written, and the change to publish, if any."""

    user_id: str
    state: UserState
    features: dict[str, float | None]
    previous_segment: int | None
    change: SegmentChange | None
    decision: Decision | None
    #: A change published before whose commit is in doubt, to publish again as it was,
    #: and the segment it moved the user into (membership is re-applied with it).
    republish: bytes | None = None
    republish_segment: int | None = None
    #: False when only ``republish`` is to be done: the stored state is already current.
    write: bool = True
    #: The user's RFM quintile scores against the population (``None`` before a fit).
    rfm: RFMScores | None = None


@dataclass
class BatchResult:
    """Everything a batch produced, plus counts for metrics."""

    updates: list[UserUpdate] = field(default_factory=list)
    applied: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, type) -> n
    replayed: int = 0
    duplicates: int = 0
    late: int = 0
    #: Queue entries this batch dealt with, and up to which model version each may leave
    #: the queue once the batch committed (``-1``: it stays, with a fresh token).
    settle: dict[str, tuple[QueueEntry, int]] = field(default_factory=dict)
    #: Every user this batch wrote or swept: their input partition and next due time
    #: (``None``: no timer), to set once the batch committed.
    timers: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    #: User updates the model learned from, and those left out by the learning budget.
    learned: int = 0
    sampled_out: int = 0

    @property
    def republished(self) -> int:
        """Changes whose commit was in doubt, published again (every path counts)."""
        return sum(1 for u in self.updates if u.republish is not None)

    @property
    def changes(self) -> int:
        """Segment changes this batch publishes (first segments included)."""
        return sum(1 for u in self.updates if u.change is not None)

    @property
    def moves(self) -> int:
        """Changes of users who already had a segment."""
        return sum(
            1 for u in self.updates if u.change is not None and u.previous_segment is not None
        )


@dataclass
class SegmentNames:
    """Current segment names, refreshed from the model's profiles when asked."""

    names: dict[int, str] = field(default_factory=dict)

    def refresh(self, model: SegmentModel) -> None:
        if model.ready:
            profs = profiles(model.centres(), model.scaler, model.ids, population=model.population)
            self.names = {p.segment: p.name for p in profs}

    def get(self, segment: int) -> str:
        return self.names.get(segment, f"segment_{segment}")


def _in_doubt_change(
    before: UserState | None, events: Sequence[Event]
) -> tuple[int | None, int, bytes] | None:
    """The stored last change, if this batch replays the event that triggered it.

    Offsets are committed only after a batch's changes are; so seeing the triggering event
    again means that commit did not happen, and readers may never have seen the change.
    """
    if before is None or before.last_change is None:
        return None
    lc = before.last_change
    pos, offset = lc.pos, lc.offset
    if not any(e.offset == offset and f"{e.topic}:{e.partition}" == pos for e in events):
        return None
    return *lc.segments(), lc.value()


def _delivered(lc: StoredChange | None, committed: Mapping[str, int]) -> bool:
    """Whether a stored last change is known committed, so no replay can need it again."""
    return lc is not None and lc.offset < committed.get(lc.pos, -1)


def _mark_in_doubt(lc: StoredChange | None, mark_topic: str, committed: Mapping[str, int]) -> bool:
    """Whether ``lc`` is a change made without an event (at a mark position) whose
    transaction is not known committed: the group's committed mark is not past it."""
    return (
        lc is not None
        and bool(mark_topic)
        and lc.pos.rpartition(":")[0] == mark_topic
        and lc.offset >= committed.get(lc.pos, 0)
    )


def partition_of(state: UserState) -> int:
    """The input partition of a user (their topics are co-partitioned, so one number)."""
    pos = next(iter(state.offsets))
    return int(pos.rpartition(":")[2])


@dataclass(frozen=True, slots=True)
class Clock:
    """What a batch is decided as of: the group's watermark and the RFM horizon."""

    watermark_ms: int = 0
    rfm_horizon: str = "365d"


@dataclass(frozen=True, slots=True)
class _Pending:
    """A user awaiting a decision in this batch, and what triggered it."""

    user_id: str
    state: UserState
    features: dict[str, float | None]
    raw: np.ndarray
    previous: int | None
    trigger_key: str  # event id, or a stable key for a warm-up assignment
    trigger_pos: str  # "topic:partition" of the event, or of the batch's mark
    trigger_offset: int
    trigger_ts: int
    learn: bool
    reason: str | None = None


def process_batch(
    events_by_user: Mapping[str, Sequence[Event]],
    states: Mapping[str, UserState | None],
    model: SegmentModel,
    names: SegmentNames,
    margin: float,
    dedupe_window: int,
    emitted_at_ms: int,
    reassess: Sequence[str] = (),
    queued: Mapping[str, QueueEntry] | None = None,
    committed: Mapping[str, int] | None = None,
    *,
    clock: Clock | None = None,
    sweep: Sequence[str] = (),
    timers: Mapping[str, int] | None = None,
    marks: Mapping[str, tuple[str, int]] | None = None,
    mark_topic: str = "",
    learn_budget: int = 0,
) -> BatchResult:
    """Fold a batch into user states, assign segments, and learn.

    Features are taken as of ``clock.watermark_ms``, the group's event-time watermark
    (or a user's own latest event, when later). Users are learned from once per batch,
    however many events they sent, so very active users do not dominate the centres.
    Decisions use the centres as they were before this batch's learning (predict, then
    learn). Users seen before the model was ready are remembered in ``model.unassigned``;
    pass them as ``reassess`` (with their states and no events) once it is, and they get
    their first segment without being learned twice. Users whose segment was retired are
    reassessed the same way: they move to the nearest current segment.

    ``queued`` holds the queue entries (:mod:`stream.reassessment`) of the ``reassess``
    users; a ``reassess`` user whose entry is for a newer model version than ``model``'s
    is left for later. What each entry needs once the batch committed is in
    :attr:`BatchResult.settle`. ``sweep`` names users whose timer (:mod:`stream.timers`)
    the watermark passed, with their due times in ``timers``: they are re-decided as of
    the watermark, and a change says why. The next due time of every user written is in
    :attr:`BatchResult.timers`.

    A change made without an event is stored with the user's state at a *mark*: position
    ``mark_topic:partition`` and a sequence number, given per user in ``marks``. The
    batch's transaction commits the mark past that number in the consumer group, with
    everything else. So a stored change at a mark the group's committed offset has not
    passed (in ``committed``) was never committed: it is published again, byte for byte,
    before anything else the batch does for the user, on any path.

    ``committed`` maps input and mark positions (``topic:partition``) to the offset below
    which their batches are known committed. A stored change below it is dropped from the
    state written, which keeps a user's state small once their change is delivered.

    The model learns once from each user with events (one vector per user, not per
    event); when more users than ``learn_budget`` (0: no limit) have events, it learns
    from a uniform sample of ``learn_budget`` of them, so that a batch of live traffic,
    one event per user, costs a bounded amount of learning. Decisions are unaffected.
    """
    committed = committed or {}
    queued = queued or {}
    timers = timers or {}
    marks = marks or {}
    clock = clock or Clock()
    wm = clock.watermark_ms
    result = BatchResult()
    pending: list[_Pending] = []
    # Users this batch published an in-doubt change of again.
    republished: set[str] = set()

    def in_doubt(lc: StoredChange | None) -> bool:
        return _mark_in_doubt(lc, mark_topic, committed)

    def features_of(state: UserState) -> dict[str, float | None]:
        return compute_features(state, wm, clock.rfm_horizon)

    for user_id, events in events_by_user.items():
        before = states.get(user_id)
        applied = apply_events(before, events, dedupe_window)
        result.replayed += applied.replayed
        result.duplicates += applied.duplicates
        result.late += applied.late
        for ev in applied.applied:
            result.applied[(ev.topic, ev.type)] += 1
        republish = _in_doubt_change(before, events)
        if republish is None and before is not None and in_doubt(before.last_change):
            republish = _stored(before.last_change)
            republished.add(user_id)
        if republish is None and _delivered(applied.state.last_change, committed):
            applied.state.last_change = None
        if republish is not None:
            prev, seg, value = republish
            result.updates.append(
                UserUpdate(user_id, applied.state, {}, prev, None, None, value, seg, write=False)
            )
        if not applied.applied:
            if applied.duplicates or applied.late:
                # Offsets moved: the state must still be written so a replay skips them.
                features = features_of(applied.state)
                result.updates.append(
                    UserUpdate(user_id, applied.state, features, applied.state.segment, None, None)
                )
            continue
        features = features_of(applied.state)
        raw = to_vector(features, model.params.features)
        model.observe(raw)
        t = applied.applied[-1]
        pending.append(
            _Pending(
                user_id,
                applied.state,
                features,
                raw,
                applied.state.segment,
                t.event_id,
                f"{t.topic}:{t.partition}",
                t.offset,
                t.ts_ms,
                learn=True,
            )
        )
    for user_id in reassess:
        state, entry, mark = states.get(user_id), queued.get(user_id), marks.get(user_id)
        if state is None or entry is None or mark is None or user_id in events_by_user:
            continue
        if in_doubt(state.last_change):
            # Decided before without an event, but that transaction never committed.
            result.updates.append(_again(user_id, state))
            republished.add(user_id)
        if model.version < entry.version or model.slot(state.segment) is not None:
            # Too old a model to judge the entry, or nothing to move: no decision here.
            continue
        pending.append(
            _without_event(
                user_id,
                state,
                features_of(state),
                (f"{ASSIGN_POS}:{model.epoch}:{entry.token}", *mark),
                max(wm, state.last_event_ms),
                None
                if state.segment is None
                else f"segment {state.segment} retired at model version {entry.version}",
                model.params.features,
                _delivered(state.last_change, committed),
            )
        )
    for user_id in sweep:
        state, due, mark = states.get(user_id), timers.get(user_id), marks.get(user_id)
        if state is None or due is None or mark is None:
            continue
        if user_id in events_by_user or user_id in queued:
            continue
        if in_doubt(state.last_change):
            # Decided before without an event, but that transaction never committed:
            # published again, and the user is looked at afresh below.
            result.updates.append(_again(user_id, state))
            republished.add(user_id)
        if state.segment is None:
            # Waits in the queue for its first segment; the timer moves on meanwhile, so
            # it does not keep the head of the due list.
            result.timers[user_id] = (partition_of(state), next_due(state, max(wm, due)))
            continue
        features = features_of(state)
        pending.append(
            _without_event(
                user_id,
                state,
                features,
                # The model version too: after a change of the segments every timer is
                # brought to the same watermark, and a user moved back and forth by two
                # versions at one due time makes two changes, never one id twice.
                (f"{TIMER_POS}:{model.version}:{due}", *mark),
                due,
                quiet_reason(features, model.version),
                model.params.features,
                _delivered(state.last_change, committed),
            )
        )

    if pending and not model.ready:
        for p in pending:
            if p.user_id not in model.unassigned:
                model.unassigned.append(p.user_id)
            result.updates.append(
                UserUpdate(p.user_id, p.state, p.features, p.previous, None, None)
            )
        pending = []
    if pending:
        _decide(pending, model, names, margin, emitted_at_ms, wm, result, learn_budget)
    _settle(queued, states, republished, model, result)
    timed = [u for u in result.updates if u.write and u.state.offsets]
    dues = [next_due(u.state, wm) for u in timed]
    # Sooner when the current centres move a quiet user before their next threshold.
    moves = next_moves(
        [u.state for u in timed],
        [max(wm, u.state.last_event_ms) for u in timed],
        dues,
        model,
        margin,
        clock.rfm_horizon,
    )
    for u, due, move in zip(timed, dues, moves, strict=True):
        result.timers[u.user_id] = (partition_of(u.state), due if move is None else move)
    return result


def _again(user_id: str, state: UserState) -> UserUpdate:
    """The update that publishes ``state``'s stored change again, as it was."""
    prev, seg, value = _stored(state.last_change)
    return UserUpdate(user_id, state, {}, prev, None, None, value, seg, write=False)


def _without_event(
    user_id: str,
    state: UserState,
    features: dict[str, float | None],
    trigger: tuple[str, str, int],
    trigger_ts: int,
    reason: str | None,
    used: tuple[str, ...],
    delivered: bool = False,
) -> _Pending:
    """A user to decide with no event of theirs; ``trigger`` is the change id's key, the
    stored change's position and its offset (the queue token or the due time); ``used``
    the model's features. A stored change known committed (``delivered``) is dropped from
    the state written, as for a user with events."""
    key, pos, offset = trigger
    # A shallow copy: a decision without an event sets only the segment fields and the
    # stored change, so the windows, keys and offsets are shared with ``state``, unchanged.
    copied = copy.copy(state)
    if delivered:
        copied.last_change = None
    return _Pending(
        user_id,
        copied,
        features,
        to_vector(features, used),
        state.segment,
        key,
        pos,
        offset,
        trigger_ts,
        learn=False,
        reason=reason,
    )


def _stored(lc: StoredChange | None) -> tuple[int | None, int, bytes]:
    assert lc is not None
    return *lc.segments(), lc.value()


def _decide(
    pending: list[_Pending],
    model: SegmentModel,
    names: SegmentNames,
    margin: float,
    emitted_at_ms: int,
    watermark_ms: int,
    result: BatchResult,
    learn_budget: int = 0,
) -> None:
    """Decide every pending user with the model as it is, then learn from them (from a
    uniform sample of ``learn_budget`` of them when there are more)."""
    if not names.names:
        names.refresh(model)
    zs = model.scale(np.stack([p.raw for p in pending]))
    decisions = model.decide_many([p.previous for p in pending], zs, model.distances(zs), margin)
    for p, decision in zip(pending, decisions, strict=True):
        state, prev = p.state, p.previous
        scores = _rfm(p.features, model)
        change = None
        if decision.changed:
            state.segment = decision.segment
            state.segment_name = names.get(decision.segment)
            state.segment_since_ms = max(p.trigger_ts, state.last_event_ms)
            change = SegmentChange(
                change_id=change_id(p.user_id, p.trigger_key, prev, decision.segment),
                user_id=p.user_id,
                previous_segment=prev,
                previous_segment_name=None if prev is None else names.get(prev),
                segment=decision.segment,
                segment_name=state.segment_name,
                model_version=model.version,
                event_time_ms=p.trigger_ts,
                emitted_at_ms=emitted_at_ms,
                distance_margin=decision.margin,
                runner_up_segment=decision.runner_up,
                top_features=decision.top_features,
                features={k: p.features[k] for k in MESSAGE_FEATURES},
                watermark_ms=watermark_ms,
                reason=p.reason,
                rfm=None if scores is None else (scores.r, scores.f, scores.m),
                state_incomplete=state.incomplete,
            )
            state.last_change = StoredChange.of(p.trigger_pos, p.trigger_offset, change)
        else:
            state.segment_name = names.get(decision.segment)
        result.updates.append(
            UserUpdate(p.user_id, state, p.features, prev, change, decision, rfm=scores)
        )
    learners = [p.raw for p in pending if p.learn]
    if 0 < learn_budget < len(learners):
        # Seeded by the batch's content, so a replayed batch learns from the same users.
        rng = random.Random(f"{pending[0].user_id}:{pending[0].trigger_offset}:{len(pending)}")
        picked = sorted(rng.sample(range(len(learners)), learn_budget))
        result.sampled_out += len(learners) - learn_budget
        learners = [learners[i] for i in picked]
    for raw in learners:
        model.learn(raw)
    result.learned += len(learners)


def _rfm(features: Mapping[str, float | None], model: SegmentModel) -> RFMScores | None:
    if model.rfm is None:
        return None
    return rfm_scores(
        features["days_since_last_purchase"],
        features["frequency"] or 0.0,
        features["monetary"] or 0.0,
        model.rfm,
    )


def _settle(
    queued: Mapping[str, QueueEntry],
    states: Mapping[str, UserState | None],
    republished: Collection[str],
    model: SegmentModel,
    result: BatchResult,
) -> None:
    """Record, for every queue entry of a user this batch touched, what becomes of it."""
    final: dict[str, int | None] = {}
    for u in result.updates:
        final[u.user_id] = u.state.segment if u.write else u.republish_segment
    for user_id, entry in queued.items():
        if user_id not in final:
            st = states.get(user_id)
            if st is None:
                continue
            final[user_id] = st.segment
        current = model.ready and model.slot(final[user_id]) is not None
        upto = settlement(entry, model.version, current)
        if upto >= 0 or user_id in republished:
            result.settle[user_id] = (entry, upto)
