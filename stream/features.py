"""Per-user rolling features in event time.

A user's state is a plain, serialisable :class:`UserState`. :func:`apply_events` folds a
batch of that user's events into a copy of it and :func:`compute_features` reads the
features in human units off it. Both are pure.

Windows are kept as sparse count buckets at five grains: minutes for the 1 h window, hours
for 24 h, days for 7 d and 30 d, weeks for 90 d and 28-day periods for 365 d
(:data:`stream.feature_registry.WINDOWS`). A window is exact to its grain. Features are
computed as of a given event time, the group's watermark: a customer who goes quiet ages
with everyone else's clock, not their own. Never the wall clock, so replaying history
yields what the live run did.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from stream.events import EVENT_TYPES, TYPE_INDEX, Event
from stream.feature_registry import (
    COUNT_FEATURES,
    DAY_MS,
    FEATURE_NAMES,
    HOUR_MS,
    LONGEST_WINDOW_MS,
    MINUTE_MS,
    PERIOD_MS,
    PRICE_HALF_LIFE_MS,
    RFM_HORIZONS,
    TYPE_NAMES,
    WEEK_MS,
    WINDOW_NAMES,
    WINDOWS,
)
from stream.stored_change import StoredChange

__all__ = ["DAY_MS", "FEATURE_NAMES", "HOUR_MS", "MINUTE_MS", "PERIOD_MS", "WEEK_MS"]

#: Events older than this, relative to the user's latest event, are late and ignored:
#: the longest window could no longer count them.
RETENTION_MS = LONGEST_WINDOW_MS
#: Categories seen within this long of the latest event are remembered (the 30 d
#: diversity feature).
CATEGORY_RETENTION_MS = 30 * DAY_MS
#: How many distinct categories a user's state remembers (oldest seen are evicted).
MAX_CATEGORIES = 32

_N_TYPES = len(EVENT_TYPES)
_SPEND = _N_TYPES  # column of a bucket row that holds purchase amounts
_ROW = _N_TYPES + 1
_PURCHASE = TYPE_INDEX["purchase"]
_VIEW = TYPE_INDEX["view"]
_ADD = TYPE_INDEX["add_to_cart"]

#: The bucket grains, finest first, and how many buckets of each the windows need.
GRAINS: tuple[int, ...] = (MINUTE_MS, HOUR_MS, DAY_MS, WEEK_MS, PERIOD_MS)
KEEP: dict[int, int] = {g: max(w.span for w in WINDOWS if w.grain_ms == g) for g in GRAINS}


def event_key(event_id: str) -> int:
    """A stable 48-bit digest of an event id, for the bounded de-duplication ring.

    48 bits keep the ring at six bytes a key; with 32 keys a user, a new event is taken
    for a duplicate by chance once in about 2**43 (nine trillion) events.
    """
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest()) >> 16


@dataclass
class UserState:
    """Everything the segmenter keeps about one user, as plain values.

    Bucket maps go from bucket index (``ts // grain``) to a row of per-type counts followed
    by the purchase amount total.
    """

    first_seen_ms: int = 0
    last_event_ms: int = 0
    minutes: dict[int, list[float]] = field(default_factory=dict)
    hours: dict[int, list[float]] = field(default_factory=dict)
    days: dict[int, list[float]] = field(default_factory=dict)
    weeks: dict[int, list[float]] = field(default_factory=dict)
    periods: dict[int, list[float]] = field(default_factory=dict)
    lifetime: list[float] = field(default_factory=lambda: [0.0] * _ROW)
    last_purchase_ms: int | None = None
    categories: dict[str, int] = field(default_factory=dict)
    recent_events: list[int] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    segment: int | None = None
    segment_name: str | None = None
    segment_since_ms: int | None = None
    #: The last segment change published for this user and the input position of the
    #: event that triggered it. A replay of that very event means the change may not have
    #: been committed, so it is published again, byte for byte.
    last_change: StoredChange | None = None
    #: The state was rebuilt after Redis lost writes that Kafka no longer retained
    #: (``SEGMENTER_ON_LOST_HISTORY=continue``): it may lack some of the user's events.
    incomplete: bool = False
    #: ``price_level``: the sum of ``log1p(price)`` over the events that carry a price, and
    #: the sum of their weights, each weight relative to the half-life in which the user's
    #: latest event falls (see :func:`_price_weight`).
    price_sum: float = 0.0
    price_weight: float = 0.0

    def buckets(self) -> tuple[dict[int, list[float]], ...]:
        """The bucket maps, in :data:`GRAINS` order."""
        return (self.minutes, self.hours, self.days, self.weeks, self.periods)

    def to_dict(self) -> dict[str, object]:
        """The state as JSON-ready plain values (the inverse of :meth:`from_dict`)."""
        return {
            "f": self.first_seen_ms,
            "l": self.last_event_ms,
            "m": [[k, *v] for k, v in self.minutes.items()],
            "h": [[k, *v] for k, v in self.hours.items()],
            "d": [[k, *v] for k, v in self.days.items()],
            "w": [[k, *v] for k, v in self.weeks.items()],
            "q": [[k, *v] for k, v in self.periods.items()],
            "t": self.lifetime,
            "p": self.last_purchase_ms,
            "c": self.categories,
            "r": self.recent_events,
            "o": self.offsets,
            "s": self.segment,
            "sn": self.segment_name,
            "ss": self.segment_since_ms,
            "lc": None
            if self.last_change is None
            else {
                "pos": self.last_change.pos,
                "offset": self.last_change.offset,
                "value": self.last_change.value().decode(),
            },
            **({"x": 1} if self.incomplete else {}),
            **({"pr": [self.price_sum, self.price_weight]} if self.price_weight else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UserState:
        """Rebuild a state from :meth:`to_dict` output."""

        def rows(raw: list[list[float]]) -> dict[int, list[float]]:
            return {int(r[0]): list(r[1:]) for r in raw}

        return cls(
            first_seen_ms=int(d["f"]),
            last_event_ms=int(d["l"]),
            minutes=rows(d["m"]),
            hours=rows(d["h"]),
            days=rows(d["d"]),
            weeks=rows(d.get("w", [])),
            periods=rows(d.get("q", [])),
            lifetime=list(d["t"]),
            last_purchase_ms=d["p"],
            categories=dict(d["c"]),
            recent_events=list(d["r"]),
            offsets=dict(d["o"]),
            segment=d.get("s"),
            segment_name=d.get("sn"),
            segment_since_ms=d.get("ss"),
            last_change=_stored_change(d.get("lc")),
            incomplete=bool(d.get("x", 0)),
            price_sum=float(d.get("pr", (0.0, 0.0))[0]),
            price_weight=float(d.get("pr", (0.0, 0.0))[1]),
        )

    def copy(self) -> UserState:
        """A deep copy, so that callers' states are never mutated."""
        return UserState(
            first_seen_ms=self.first_seen_ms,
            last_event_ms=self.last_event_ms,
            minutes={k: list(v) for k, v in self.minutes.items()},
            hours={k: list(v) for k, v in self.hours.items()},
            days={k: list(v) for k, v in self.days.items()},
            weeks={k: list(v) for k, v in self.weeks.items()},
            periods={k: list(v) for k, v in self.periods.items()},
            lifetime=list(self.lifetime),
            last_purchase_ms=self.last_purchase_ms,
            categories=dict(self.categories),
            recent_events=list(self.recent_events),
            offsets=dict(self.offsets),
            segment=self.segment,
            segment_name=self.segment_name,
            segment_since_ms=self.segment_since_ms,
            last_change=self.last_change,  # frozen: shared, not copied
            incomplete=self.incomplete,
            price_sum=self.price_sum,
            price_weight=self.price_weight,
        )


def _stored_change(lc: dict[str, Any] | None) -> StoredChange | None:
    return None if lc is None else StoredChange.from_json(lc["pos"], lc["offset"], lc["value"])


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What :func:`apply_events` did with a user's events."""

    state: UserState
    applied: tuple[Event, ...]
    replayed: int
    duplicates: int
    late: int


def _add(buckets: dict[int, list[float]], index: int, type_idx: int, spend: float) -> None:
    row = buckets.get(index)
    if row is None:
        row = [0, 0, 0, 0, 0, 0, 0.0]  # counts stay integers; the spend is a float
        buckets[index] = row
    row[type_idx] += 1
    if spend:
        row[_SPEND] += spend


def _prune(state: UserState) -> None:
    # Windows only move forward: what no window counts as of the user's latest event,
    # none will count later.
    now = state.last_event_ms
    for buckets, grain in zip(state.buckets(), GRAINS, strict=True):
        oldest = now // grain - KEEP[grain] + 1
        for k in [k for k in buckets if k < oldest]:
            del buckets[k]
    cutoff = now - CATEGORY_RETENTION_MS
    cats = state.categories
    for c in [c for c, seen in cats.items() if seen <= cutoff]:
        del cats[c]


def apply_events(
    state: UserState | None, events: Iterable[Event], dedupe_window: int = 32
) -> ApplyResult:
    """Fold one user's events into a copy of their state.

    An event is skipped as *replayed* when its Kafka offset is at or below the offset
    already applied for its topic-partition (the state records it), as a *duplicate* when
    its ``event_id`` is among the user's last ``dedupe_window`` applied events, and as
    *late* when it is older than the longest window (364 days) relative to the user's
    latest event.

    Examples
    --------
    >>> from stream.events import Event
    >>> e = Event("e1", "u1", "purchase", 1_700_000_000_000, "shop.purchases", 0, 5, amount=20.0)
    >>> r = apply_events(None, [e, e])
    >>> (len(r.applied), r.replayed, r.state.lifetime[4], r.state.lifetime[6])
    (1, 1, 1.0, 20.0)
    """
    s = UserState() if state is None else state.copy()
    applied: list[Event] = []
    replayed = duplicates = late = 0
    recent = s.recent_events
    seen = set(recent)
    offsets = s.offsets
    first, last = s.first_seen_ms, s.last_event_ms
    for ev in events:
        pos = f"{ev.topic}:{ev.partition}"
        if ev.offset <= offsets.get(pos, -1):
            replayed += 1
            continue
        offsets[pos] = ev.offset
        key = event_key(ev.event_id)
        if key in seen:
            duplicates += 1
            continue
        ts = ev.ts_ms
        if last and ts <= last - RETENTION_MS:
            late += 1
            continue
        seen.add(key)
        recent.append(key)
        if first == 0 or ts < first:
            first = ts
        if ts > last:
            last = ts
        applied.append(ev)
    previous_last = s.last_event_ms
    s.first_seen_ms, s.last_event_ms = first, last
    # Buckets only for what the windows keep as of the latest event: a backlog user's
    # older events need no minute or hour rows, which pruning would drop at once.
    minute_from = last // MINUTE_MS - 59
    hour_from = last // HOUR_MS - 23
    lifetime, cats = s.lifetime, s.categories
    half_life = last // PRICE_HALF_LIFE_MS
    if s.price_weight and half_life != previous_last // PRICE_HALF_LIFE_MS:
        _rebase_prices(s, half_life - previous_last // PRICE_HALF_LIFE_MS)
    for ev in applied:
        ts = ev.ts_ms
        t = TYPE_INDEX[ev.type]
        spend = (ev.amount or 0.0) if t == _PURCHASE else 0.0
        if ts // MINUTE_MS >= minute_from:
            _add(s.minutes, ts // MINUTE_MS, t, spend)
        if ts // HOUR_MS >= hour_from:
            _add(s.hours, ts // HOUR_MS, t, spend)
        _add(s.days, ts // DAY_MS, t, spend)
        _add(s.weeks, ts // WEEK_MS, t, spend)
        _add(s.periods, ts // PERIOD_MS, t, spend)
        lifetime[t] += 1
        lifetime[_SPEND] += spend
        if t == _PURCHASE and (s.last_purchase_ms is None or ts > s.last_purchase_ms):
            s.last_purchase_ms = ts
        if ev.price is not None:
            w = _price_weight(ts, half_life)
            s.price_sum += w * math.log1p(ev.price)
            s.price_weight += w
        category = ev.category
        if category:
            if ts > cats.get(category, -1):
                cats[category] = ts
            if len(cats) > MAX_CATEGORIES:
                del cats[min(cats, key=cats.__getitem__)]
    if len(recent) > dedupe_window:
        del recent[: len(recent) - dedupe_window]
    if applied:
        _prune(s)
    return ApplyResult(s, tuple(applied), replayed, duplicates, late)


def _price_weight(ts_ms: int, half_life: int) -> float:
    """The weight of a price seen at ``ts_ms``, relative to half-life number ``half_life``.

    An event weighs ``2 ** (ts_ms / PRICE_HALF_LIFE_MS)``, relative to the start of the
    half-life in which the user's latest event falls. The weight is split into a power of
    two, exact under ``ldexp``, and a fraction that depends on ``ts_ms`` alone, so a state
    is bit for bit the same whichever batches its events came in: moving the reference
    (:func:`_rebase_prices`) only multiplies by powers of two.
    """
    n, r = divmod(ts_ms, PRICE_HALF_LIFE_MS)
    return math.ldexp(2.0 ** (r / PRICE_HALF_LIFE_MS), n - half_life)


def _rebase_prices(s: UserState, half_lives: int) -> None:
    # Prices older than 60 half-lives (five years) weigh under 1e-18 of a new one: dropped,
    # rather than carried as denormal floats that lose their precision.
    if half_lives > 60:
        s.price_sum = s.price_weight = 0.0
    else:
        s.price_sum = math.ldexp(s.price_sum, -half_lives)
        s.price_weight = math.ldexp(s.price_weight, -half_lives)


def _window_sum(buckets: dict[int, list[float]], now_index: int, span: int) -> list[float]:
    oldest = now_index - span + 1
    rows = [row for k, row in buckets.items() if oldest <= k <= now_index]
    # Column sums by transposing: the additions run in C, in the rows' order.
    return [float(sum(col)) for col in zip(*rows, strict=True)] if rows else [0.0] * _ROW


_COUNTS = frozenset(COUNT_FEATURES)
_TYPES_PLUS_ALL = len(EVENT_TYPES) + 1
# Per window: its type-count names, then its events name.
_WINDOW_NAMES = tuple(
    COUNT_FEATURES[i * _TYPES_PLUS_ALL : (i + 1) * _TYPES_PLUS_ALL] for i in range(len(WINDOWS))
)
_GRAIN_INDEX = {g: i for i, g in enumerate(GRAINS)}


#: The key of the per-type window counts in the stored features.
COUNTS_KEY = "counts"
# Count names by type (and "events", all types), each in window order.
_BY_TYPE: dict[str, tuple[str, ...]] = {
    t: tuple(f"{t}_{w}" for w in WINDOW_NAMES) for t in (*TYPE_NAMES, "events")
}
_KINDS = tuple(_BY_TYPE.items())


def stored_features(features: dict[str, float | None]) -> dict[str, Any]:
    """The features as the user hash keeps them: small, every value still in human units.

    Window counts go under ``"counts"``, one list per event type (and ``"events"``, all
    types), in window order (``1h``, ``24h``, ``7d``, ``30d``, ``90d``, ``365d``:
    :data:`~stream.feature_registry.WINDOW_NAMES`), as integers, and only for types with
    a count in some window. Every other feature of zero is left out; a null (a customer
    who never bought has no days since their last purchase) stays, as it is not a zero.
    Most users are quiet in most windows and never bought, and the hash is kept per user:
    this keeps a light user's features at about a fifth of the flat JSON.
    :func:`full_features` gives back the flat features.

    >>> stored_features({"views_1h": 0.0, "views_30d": 3.0, "spend_30d": 0.0,
    ...                  "days_since_last_purchase": None})
    {'counts': {'views': [0, 0, 0, 3, 0, 0]}, 'days_since_last_purchase': None}
    """
    # Written for speed (it runs for every user written): the lookups go through map().
    get = features.get
    counts: dict[str, list[int]] = {}
    for kind, names in _KINDS:
        values = list(map(get, names))
        if any(values):
            counts[kind] = [int(v or 0) for v in values]
    out: dict[str, Any] = {COUNTS_KEY: counts} if counts else {}
    for k, v in features.items():
        if (v or v is None) and k not in _COUNTS:
            out[k] = v
    return out


#: Every feature at zero, as :func:`full_features` puts back what the hash leaves out.
_ZEROS: dict[str, float | None] = {name: (0 if name in _COUNTS else 0.0) for name in FEATURE_NAMES}


def full_features(stored: dict[str, Any]) -> dict[str, float | None]:
    """The flat features (``views_1h`` ... ``tenure_days``) of a user hash's ``features``
    (:func:`stored_features`), with the zeros it leaves out put back.

    >>> f = full_features({"counts": {"views": [0, 0, 1, 3, 3, 9]},
    ...                    "days_since_last_purchase": None})
    >>> f["views_30d"], f["views_365d"], f["events_30d"], f["spend_30d"]
    (3, 9, 0, 0.0)
    >>> f["days_since_last_purchase"] is None
    True
    """
    out = {**_ZEROS, **{k: v for k, v in stored.items() if k != COUNTS_KEY}}
    for kind, values in (stored.get(COUNTS_KEY) or {}).items():
        out.update(zip(_BY_TYPE[kind], values, strict=True))
    return out


def price_level(state: UserState) -> float:
    """The ``price_level`` feature: the weighted geometric mean of the prices the user's
    events carried, in currency (0.0 when none carried one). The mean is of
    ``log1p(price)``, so that a free item counts: the geometric mean of price + 1, less 1.

    >>> from stream.events import Event
    >>> evs = [Event(str(i), "u", "view", i, "c", 0, i, price=p) for i, p in enumerate((3.0, 48.0))]
    >>> price_level(apply_events(None, evs).state)
    13.0
    """
    if not state.price_weight:
        return 0.0
    return round(math.expm1(state.price_sum / state.price_weight), 2)


def compute_features(
    state: UserState, now_ms: int | None = None, rfm_horizon: str = "365d"
) -> dict[str, float | None]:
    """The user's features in human units, as of event time ``now_ms``.

    ``now_ms`` is the group's watermark; the user's own latest event is used when it is
    later (or when ``now_ms`` is not given), as a user's features never leave out their
    own events. Counts per event type per window (``views_1h`` ... ``searches_365d``),
    spend per window, lifetime totals, RFM frequency and monetary over ``rfm_horizon``,
    and the derived behaviour features (:mod:`stream.feature_registry` describes each).

    Examples
    --------
    >>> from stream.events import Event
    >>> evs = [Event("a", "u", "view", 0 + 1_700_000_000_000, "c", 0, 1),
    ...        Event("b", "u", "purchase", 1_700_000_060_000, "p", 0, 1, amount=30.0)]
    >>> st = apply_events(None, evs).state
    >>> f = compute_features(st)
    >>> (f["views_1h"], f["purchases_30d"], f["conversion_rate_30d"], f["avg_order_value"])
    (1.0, 1.0, 1.0, 30.0)

    Forty days later on the group's clock, with no event of the user's own:

    >>> g = compute_features(st, now_ms=1_700_000_060_000 + 40 * DAY_MS)
    >>> g["purchases_30d"], g["frequency"], g["days_since_last_purchase"]
    (0.0, 1.0, 40.0)
    """
    if rfm_horizon not in RFM_HORIZONS:
        raise ValueError(f"rfm_horizon must be one of {', '.join(RFM_HORIZONS)}, got {rfm_horizon}")
    now = state.last_event_ms if now_ms is None else max(now_ms, state.last_event_ms)
    out: dict[str, float | None] = {}
    sums: dict[str, list[float]] = {}
    grains = state.buckets()
    for w, names in zip(WINDOWS, _WINDOW_NAMES, strict=True):
        row = _window_sum(grains[_GRAIN_INDEX[w.grain_ms]], now // w.grain_ms, w.span)
        sums[w.name] = row
        out.update(zip(names[:-1], row, strict=False))  # the type counts (not the spend)
        out[names[-1]] = sum(row[:_N_TYPES])
    m = sums["30d"]
    for name in ("7d", "30d", "90d", "365d"):
        out[f"spend_{name}"] = round(sums[name][_SPEND], 2)
    life = state.lifetime
    out["purchases_lifetime"] = float(life[_PURCHASE])
    out["spend_lifetime"] = round(life[_SPEND], 2)
    horizon = life if rfm_horizon == "lifetime" else sums[rfm_horizon]
    out["frequency"] = float(horizon[_PURCHASE])
    out["monetary"] = round(horizon[_SPEND], 2)
    life_purchases = life[_PURCHASE]
    out["avg_order_value"] = round(life[_SPEND] / life_purchases, 2) if life_purchases else 0.0
    out["days_since_last_purchase"] = (
        None
        if state.last_purchase_ms is None
        else round((now - state.last_purchase_ms) / DAY_MS, 3)
    )
    # Who never bought has gone without an order since their first event.
    no_order_since = state.last_purchase_ms
    if no_order_since is None:
        no_order_since = state.first_seen_ms
    out["days_without_purchase"] = round((now - no_order_since) / DAY_MS, 3)
    out["days_since_last_event"] = round((now - state.last_event_ms) / DAY_MS, 3)
    views, purchases, adds = m[_VIEW], m[_PURCHASE], m[_ADD]
    # Rates to four decimals: finer steps mean nothing to a reader or to the model.
    if views:
        out["conversion_rate_30d"] = round(min(1.0, purchases / views), 4)
    else:
        out["conversion_rate_30d"] = 1.0 if purchases else 0.0
    year = sums["365d"]
    if year[_VIEW]:
        out["conversion_rate_365d"] = round(min(1.0, year[_PURCHASE] / year[_VIEW]), 4)
    else:
        out["conversion_rate_365d"] = 1.0 if year[_PURCHASE] else 0.0
    if year[_VIEW]:
        out["cart_rate_365d"] = round(min(1.0, year[_ADD] / year[_VIEW]), 4)
    else:
        out["cart_rate_365d"] = 1.0 if year[_ADD] else 0.0
    out["price_level"] = price_level(state)
    out["cart_abandonment_30d"] = round(max(0.0, 1.0 - purchases / adds), 4) if adds else 0.0
    cutoff = now - CATEGORY_RETENTION_MS
    out["category_diversity_30d"] = float(sum(1 for t in state.categories.values() if t > cutoff))
    out["tenure_days"] = round((now - state.first_seen_ms) / DAY_MS, 3)
    out["active_days"] = round((state.last_event_ms - state.first_seen_ms) / DAY_MS, 3)
    return out
