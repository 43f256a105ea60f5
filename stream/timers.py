"""Event-time timers: when time alone can move a customer to another segment.

A customer who stops buying changes with no event of their own: their recency grows and
their windows empty as the group's watermark moves on. Each user therefore has a next
*due* time, the next event time at which one of those thresholds is crossed; when the
watermark passes it, the user is re-decided as if an event had come (the sweep in
:mod:`consumers.app`). The owner of the user's input partitions keeps the timer in Redis
(:mod:`state.timers`: small sorted sets by due time), and a change the sweep makes is
published exactly once like any other: it is stored at a mark the sweep's transaction
commits (:func:`stream.batch.process_batch`).

Examples
--------
>>> from stream.feature_registry import DAY_MS
>>> st = UserState(first_seen_ms=0, last_event_ms=10 * DAY_MS, last_purchase_ms=3 * DAY_MS)
>>> next_due(st, now_ms=9 * DAY_MS) // DAY_MS  # a week after the last purchase
10
>>> next_due(st, now_ms=10 * DAY_MS) // DAY_MS  # a week after the last event
17
>>> quiet_reason({"days_since_last_purchase": 45.2, "days_since_last_event": 45.2})
'no purchase for 45 days'
>>> quiet_reason({"days_since_last_purchase": 3.0, "days_since_last_event": 1.0}, 12)
'segments changed at model version 12'
"""

from __future__ import annotations

from collections.abc import Mapping

from stream.feature_registry import DAY_MS
from stream.features import UserState

#: Change-id key prefix of a change made because time passed, with no event of the user's.
TIMER_POS = "timer"

#: Days of quiet at which a customer is looked at again: when the 7 d and 30 d windows
#: empty, when recency passes a fortnight, two and three months, half a year, a year.
THRESHOLDS_DAYS: tuple[int, ...] = (7, 14, 30, 45, 60, 91, 182, 364)


#: The due time of a customer past every threshold: no watermark reaches it, but the user
#: keeps a timer, so that when the segments themselves change every timer brought forward
#: is every user (a customer quiet for years is re-decided too).
NEVER_MS = 2**62


def next_due(state: UserState, now_ms: int) -> int:
    """The first event time after ``now_ms`` at which a threshold of quiet is crossed,
    counted from the user's last event and from their last purchase; :data:`NEVER_MS` once
    a year of quiet has passed (nothing that time alone changes is left)."""
    starts = [state.last_event_ms]
    if state.last_purchase_ms is not None:
        starts.append(state.last_purchase_ms)
    due = [s + d * DAY_MS for s in starts for d in THRESHOLDS_DAYS if s + d * DAY_MS > now_ms]
    return min(due) if due else NEVER_MS


def quiet_reason(features: Mapping[str, float | None], model_version: int = 0) -> str:
    """Why a customer was re-decided with no event of theirs, in words: how long they have
    been quiet, or, for a customer active within the shortest threshold, that the model's
    segments changed (at ``model_version``)."""
    purchase = features.get("days_since_last_purchase")
    event = features.get("days_since_last_event") or 0.0
    if event < THRESHOLDS_DAYS[0] and model_version:
        return f"segments changed at model version {model_version}"
    if purchase is not None and purchase >= 1:
        return f"no purchase for {_days(purchase)}"
    return f"no activity for {_days(event)}"


def _days(n: float) -> str:
    return "1 day" if int(n) == 1 else f"{int(n)} days"
