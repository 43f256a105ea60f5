"""A quiet customer's drift: vectors as time passes, and the first day they would move."""

from __future__ import annotations

import numpy as np
import pytest

from stream.checkpoint import ModelDelta, ModelParams, merge
from stream.events import Event
from stream.feature_registry import DAY_MS, HOUR_MS
from stream.features import UserState, apply_events, compute_features
from stream.model import SegmentModel
from stream.quiet_drift import MOVE_STEPS, next_moves, quiet_vectors
from stream.scaling import MODEL_FEATURES, OnlineScaler, to_vector
from stream.timers import NEVER_MS, next_due

E = 1_700_000_000_000


def random_state(rng: np.random.Generator, end: int) -> UserState:
    """A user with a random history of up to a year before ``end`` (or none of some kinds)."""
    types = ("view", "click", "add_to_cart", "purchase", "search")
    n = int(rng.integers(1, 40))
    ts = np.sort(end - rng.integers(0, 360 * DAY_MS, n))
    evs = []
    for i, t in enumerate(ts):
        kind = str(rng.choice(types))
        amount = float(rng.integers(1, 200)) if kind == "purchase" else None
        price = float(rng.integers(1, 400)) if kind == "view" else None
        evs.append(
            Event(
                f"e{i}",
                "u",
                kind,
                int(t),
                f"c{rng.integers(0, 6)}",
                0,
                i,
                amount=amount,
                price=price,
            )
        )
    return apply_events(None, evs).state


@pytest.mark.parametrize("horizon", ["30d", "90d", "365d", "lifetime"])
def test_quiet_vectors_are_the_features_as_of_each_time(horizon: str) -> None:
    rng = np.random.default_rng(7)
    states = [random_state(rng, E) for _ in range(40)] + [UserState(E - DAY_MS, E)]
    owner = np.repeat(np.arange(len(states)), 12)
    # Shuffled, so that rows of one user are not together.
    perm = rng.permutation(len(owner))
    owner = owner[perm]
    times = np.array([states[o].last_event_ms for o in owner]) + rng.integers(
        0, 400 * DAY_MS, len(owner)
    )
    got = quiet_vectors(states, owner, times, horizon)
    want = np.stack(
        [
            to_vector(compute_features(states[o], int(t), horizon))
            for o, t in zip(owner, times, strict=True)
        ]
    )
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_quiet_vectors_leave_out_unused_features() -> None:
    st = random_state(np.random.default_rng(3), E)
    used = ("frequency", "monetary", "days_without_purchase")
    got = quiet_vectors([st], np.array([0, 0]), np.array([E, E + 9 * DAY_MS]), used=used)
    want = np.stack([to_vector(compute_features(st, t), used) for t in (E, E + 9 * DAY_MS)])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def buyer(last_purchase_days_ago: float, orders: int, end: int = E) -> UserState:
    times = sorted(end - int((last_purchase_days_ago + 9 * i) * DAY_MS) for i in range(orders))
    evs = [Event(f"p{i}", "u", "purchase", t, "c", 0, i, amount=50.0) for i, t in enumerate(times)]
    return apply_events(None, evs).state


def two_segment_model() -> SegmentModel:
    """Two segments: buyers active this week, and buyers quiet for two to three months."""
    rng = np.random.default_rng(5)
    states = [buyer(float(rng.uniform(0, 5)), int(rng.integers(3, 8))) for _ in range(60)]
    states += [buyer(float(rng.uniform(60, 90)), int(rng.integers(3, 8))) for _ in range(60)]
    pts = np.stack([to_vector(compute_features(s, E)) for s in states])
    params = ModelParams(k_min=2, k_max=2, warmup_users=60, reservoir_size=600, seed=1)
    scaler = OnlineScaler.empty(len(MODEL_FEATURES))
    for x in pts:
        scaler.learn(x)
    delta = ModelDelta(0, 0, None, None, None, 0, scaler, len(pts), pts[:0])
    doc, _ = merge(None, delta, pts, params, 0)
    model = SegmentModel(params)
    model.adopt(doc)
    return model


def decided(st: UserState, model: SegmentModel, margin: float) -> UserState:
    z = model.scale(to_vector(compute_features(st, E)))
    st.segment = model.decide(None, z, model.distances(z), margin).segment
    return st


def moves(st: UserState, model: SegmentModel, t: int, margin: float) -> bool:
    z = model.scale(to_vector(compute_features(st, t)))
    return model.decide(st.segment, z, model.distances(z), margin).changed


def first_move_by_hour(st: UserState, model: SegmentModel, until: int, margin: float) -> int | None:
    """The brute force: decide the user again each day, as a daily sweep would, then each
    hour of the day before the first move."""
    day = E + DAY_MS
    while day < until and not moves(st, model, day, margin):
        day += DAY_MS
    if day >= until:
        return None
    t = day - DAY_MS + HOUR_MS
    while not moves(st, model, t, margin):
        t += HOUR_MS
    return t


def test_a_quiet_buyer_moves_in_the_hour_the_centres_say() -> None:
    model = two_segment_model()
    st = decided(buyer(0.5, 5), model, 0.1)
    assert next_due(st, E) == st.last_event_ms + 7 * DAY_MS
    until = E + 60 * DAY_MS
    (in_a_week,) = next_moves([st], [E], [next_due(st, E)], model, 0.1)
    assert in_a_week is None  # the first week moves nobody
    (found,) = next_moves([st], [E], [until], model, 0.1)
    assert found is not None
    assert found == first_move_by_hour(st, model, until, 0.1)
    assert 10 * DAY_MS < found - (st.last_purchase_ms or 0) < 60 * DAY_MS
    # A wider margin moves them later, never earlier.
    (later,) = next_moves([st], [E], [until], model, 0.3)
    assert later is not None and later > found


def test_a_batch_of_users_gets_what_each_would_alone() -> None:
    model = two_segment_model()
    rng = np.random.default_rng(11)
    states = [
        decided(buyer(float(rng.uniform(0, 40)), int(rng.integers(1, 8))), model, 0.1)
        for _ in range(30)
    ]
    until = [E + int(rng.integers(2, 200)) * DAY_MS for _ in states]
    together = next_moves(states, [E] * len(states), until, model, 0.1)
    alone = [next_moves([s], [E], [u], model, 0.1)[0] for s, u in zip(states, until, strict=True)]
    assert together == alone
    assert sum(m is not None for m in together) >= 5  # some do move
    short = [i for i, u in enumerate(until) if u - E <= MOVE_STEPS * DAY_MS]
    for i in short:  # within MOVE_STEPS days, exactly the brute force's hour
        assert together[i] == first_move_by_hour(states[i], model, until[i], 0.1)


def test_nothing_to_say_without_a_current_segment_or_time() -> None:
    model = two_segment_model()
    st = buyer(0.5, 5)
    far = E + 60 * DAY_MS
    assert next_moves([st], [E], [far], model, 0.1) == [None]  # no segment yet
    st.segment = 99  # retired: the queue moves them, not the sweep
    assert next_moves([st], [E], [far], model, 0.1) == [None]
    st.segment = model.ids[0]
    assert next_moves([st, st], [E, E], [NEVER_MS, E + DAY_MS], model, 0.1) == [None, None]
    assert next_moves([], [], [], model, 0.1) == []
