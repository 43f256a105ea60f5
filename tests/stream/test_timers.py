"""Event-time timers: when quiet alone re-decides a customer, and how the change says why."""

from __future__ import annotations

import pytest

from stream.events import Event
from stream.feature_registry import DAY_MS, WINDOWS
from stream.features import UserState, apply_events, compute_features
from stream.timers import NEVER_MS, THRESHOLDS_DAYS, TIMER_POS, next_due, quiet_reason

E = 1_700_000_000_000  # the last event


def dues(state: UserState, start: int) -> list[int]:
    """Every due time from ``start`` on, in days after ``E``, until none is left."""
    out = []
    due = next_due(state, start)
    while due != NEVER_MS:
        out.append(due)
        due = next_due(state, due)
    return [(d - E) / DAY_MS for d in out]


def test_thresholds() -> None:
    assert THRESHOLDS_DAYS == (7, 14, 30, 45, 60, 91, 182, 364)
    assert list(THRESHOLDS_DAYS) == sorted(set(THRESHOLDS_DAYS))
    assert TIMER_POS == "timer"


def test_every_day_grained_window_empties_at_a_threshold() -> None:
    # The 7 d, 30 d, 90 d and 365 d windows reach back 7, 30, 91 and 364 days.
    reach = {w.grain_ms * w.span // DAY_MS for w in WINDOWS if w.grain_ms >= DAY_MS}
    assert reach == {7, 30, 91, 364}
    assert reach <= set(THRESHOLDS_DAYS)


def test_thresholds_from_the_last_event() -> None:
    st = UserState(first_seen_ms=E - 50 * DAY_MS, last_event_ms=E)  # never bought
    assert next_due(st, E) == E + 7 * DAY_MS
    assert next_due(st, E + 7 * DAY_MS - 1) == E + 7 * DAY_MS
    # Strictly after now: a due time the watermark has reached is behind it.
    assert next_due(st, E + 7 * DAY_MS) == E + 14 * DAY_MS
    assert dues(st, E) == [7, 14, 30, 45, 60, 91, 182, 364]


def test_thresholds_from_the_last_purchase_and_the_last_event() -> None:
    st = UserState(first_seen_ms=0, last_event_ms=E, last_purchase_ms=E - 10 * DAY_MS)
    # A week after the purchase came before the last event; a fortnight after it is the
    # next, then a week after the last event, and so on, both merged in order.
    assert next_due(st, E) == E + 4 * DAY_MS
    assert dues(st, E) == [4, 7, 14, 20, 30, 35, 45, 50, 60, 81, 91, 172, 182, 354, 364]


def test_docstring_example() -> None:
    st = UserState(first_seen_ms=0, last_event_ms=10 * DAY_MS, last_purchase_ms=3 * DAY_MS)
    assert next_due(st, now_ms=9 * DAY_MS) == 10 * DAY_MS
    assert next_due(st, now_ms=10 * DAY_MS) == 17 * DAY_MS


def test_after_a_year_of_quiet_the_timer_is_never_due() -> None:
    st = UserState(first_seen_ms=0, last_event_ms=E, last_purchase_ms=E - 30 * DAY_MS)
    assert next_due(st, E + 363 * DAY_MS) == E + 364 * DAY_MS
    assert next_due(st, E + 364 * DAY_MS) == NEVER_MS
    assert next_due(st, E + 1000 * DAY_MS) == NEVER_MS


def test_an_old_purchase_adds_no_due_time_once_past_its_year() -> None:
    st = UserState(first_seen_ms=0, last_event_ms=E, last_purchase_ms=E - 400 * DAY_MS)
    never = UserState(first_seen_ms=0, last_event_ms=E)
    assert dues(st, E) == dues(never, E)


@pytest.mark.parametrize(
    ("window", "threshold", "inside"),
    [("7d", 7, 6), ("30d", 30, 29), ("90d", 91, 84), ("365d", 364, 336)],
)
def test_by_its_threshold_a_window_has_emptied(window: str, threshold: int, inside: int) -> None:
    st = apply_events(None, [Event("v", "u", "view", E, "c", 0, 1)]).state
    assert threshold in THRESHOLDS_DAYS
    assert compute_features(st, E + inside * DAY_MS)[f"events_{window}"] == 1.0
    assert compute_features(st, E + threshold * DAY_MS)[f"events_{window}"] == 0.0


@pytest.mark.parametrize(
    ("purchase", "event", "reason"),
    [
        (45.2, 45.2, "no purchase for 45 days"),
        (90.9, 7.0, "no purchase for 90 days"),
        (2.0, 2.0, "no purchase for 2 days"),
        (None, 30.5, "no activity for 30 days"),
        (0.5, 0.5, "no activity for 0 days"),
        (None, None, "no activity for 0 days"),
    ],
)
def test_quiet_reason(purchase: float | None, event: float | None, reason: str) -> None:
    features = {"days_since_last_purchase": purchase, "days_since_last_event": event}
    assert quiet_reason(features) == reason


def test_quiet_reason_without_the_day_features() -> None:
    assert quiet_reason({}) == "no activity for 0 days"


def test_quiet_reason_of_computed_features() -> None:
    buyer = UserState(first_seen_ms=0, last_event_ms=E, last_purchase_ms=E - 15 * DAY_MS)
    assert quiet_reason(compute_features(buyer, E + 30 * DAY_MS)) == "no purchase for 45 days"
    browser = UserState(first_seen_ms=0, last_event_ms=E)
    assert quiet_reason(compute_features(browser, E + 60 * DAY_MS)) == "no activity for 60 days"
