"""How a quiet customer drifts: their model vector as time passes with no event of theirs,
and the first time the current centres would move them to another segment.

The fixed thresholds of :func:`stream.timers.next_due` are where windows empty; between
them a quiet customer drifts all the same (days without an order grow every day) and
crosses into another segment at a time of their own. :func:`next_moves` finds that time,
a day at a time and then to the hour, for every user of a batch at once, so that the sweep
re-decides a lapsing customer within an hour of event time of the crossing, with the same
hysteresis an event would meet, rather than at the next threshold, up to weeks later.

Everything here is columnar: one array operation per step for the whole batch, since a
per-user loop of small array operations would cost more than deciding the user.

Examples
--------
>>> from stream.events import Event
>>> from stream.feature_registry import DAY_MS
>>> from stream.features import apply_events
>>> st = apply_events(None, [Event("a", "u", "purchase", 0, "c", 0, 1, amount=9.0)]).state
>>> v = quiet_vectors([st], np.array([0, 0]), np.array([DAY_MS, 40 * DAY_MS]))
>>> [round(float(x), 2) for x in np.expm1(v[:, MODEL_FEATURES.index("events_30d")])]
[1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np

from stream.events import TYPE_INDEX
from stream.feature_registry import DAY_MS, HOUR_MS, PERIOD_MS, WEEK_MS
from stream.features import CATEGORY_RETENTION_MS, UserState, price_level
from stream.scaling import MODEL_FEATURES, to_vectors
from stream.timers import NEVER_MS

if TYPE_CHECKING:
    from stream.model import SegmentModel

#: The most future times :func:`next_moves` looks at per user before their next
#: threshold: a day apart up to this many days ahead, evenly spread beyond.
MOVE_STEPS = 64

#: Sub-steps per pass when :func:`next_moves` narrows a move down to the hour.
REFINE_STEPS = 24

_PURCHASE = TYPE_INDEX["purchase"]
_VIEW = TYPE_INDEX["view"]
_ADD = TYPE_INDEX["add_to_cart"]
_SPEND = len(TYPE_INDEX)  # the column of a bucket row that holds purchase amounts
_ROW = _SPEND + 1
_HORIZON = {"30d": (DAY_MS, 30), "90d": (WEEK_MS, 13), "365d": (PERIOD_MS, 13)}
# Owner and key packed into one sortable integer: keys (bucket indexes, or milliseconds
# after the batch's earliest time) stay below 2**40, about 35 years of milliseconds.
_SHIFT = 1 << 40


class _Packed:
    """Sorted ``(owner, key)`` entries of many users, each with a row of values, and
    running totals of the rows: a sum over one owner's keys from a bound up is two
    lookups."""

    def __init__(self, owners: list[int], keys: list[int], rows: list[list[float]], n: int):
        if not rows:  # one entry of an owner no query asks about (``n``)
            owners, keys, rows = [n], [0], [[0.0] * _ROW]
        k = np.fromiter(keys, dtype=np.int64, count=len(keys))
        self.base = int(k.min()) if len(k) else 0
        packed = np.fromiter(owners, dtype=np.int64, count=len(owners)) * _SHIFT + (k - self.base)
        order = np.argsort(packed, kind="stable")
        self.packed = packed[order]
        # Flattened first: far cheaper than an array of many short lists.
        flat = np.fromiter(chain.from_iterable(rows), dtype=float, count=len(rows) * len(rows[0]))
        values = flat.reshape(len(rows), -1)[order]
        self.totals = np.vstack([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
        # Where each owner's entries end.
        self.ends = np.searchsorted(self.packed, np.arange(1, n + 1, dtype=np.int64) * _SHIFT)

    def from_bound(self, owner: np.ndarray, bound: np.ndarray, strict: bool = False) -> np.ndarray:
        """Per query, the sum of the rows of ``owner`` with key ``>= bound`` (``>`` when
        ``strict``): ``(queries, columns)``."""
        b = np.clip(bound - self.base, 0, _SHIFT - 1)
        at = np.searchsorted(self.packed, owner * _SHIFT + b, side="right" if strict else "left")
        return self.totals[self.ends[owner]] - self.totals[at]


def _buckets(states: Sequence[UserState], pick: str) -> _Packed:
    owners: list[int] = []
    keys: list[int] = []
    rows: list[list[float]] = []
    for i, st in enumerate(states):
        b: dict[int, list[float]] = getattr(st, pick)
        owners.extend([i] * len(b))
        keys.extend(b.keys())
        rows.extend(b.values())
    return _Packed(owners, keys, rows, len(states))


class QuietStates:
    """Users' states packed for :meth:`vectors`: their bucket rows, categories and per-user
    values as arrays, built once and asked about at many times (the searches of
    :func:`next_moves` ask several times over the same users)."""

    def __init__(self, states: Sequence[UserState], rfm_horizon: str = "365d") -> None:
        self.rfm_horizon = rfm_horizon
        self.days = _buckets(states, "days")
        self.periods = _buckets(states, "periods")
        self.horizon: _Packed | np.ndarray
        if rfm_horizon == "lifetime":
            self.horizon = np.array([st.lifetime for st in states], dtype=float).reshape(-1, _ROW)
        else:
            grain, _ = _HORIZON[rfm_horizon]
            packed = {DAY_MS: self.days, PERIOD_MS: self.periods}.get(grain)
            self.horizon = _buckets(states, "weeks") if packed is None else packed
        cat_owner: list[int] = []
        cat_seen: list[int] = []
        for i, st in enumerate(states):
            cat_owner.extend([i] * len(st.categories))
            cat_seen.extend(st.categories.values())
        self.categories = _Packed(cat_owner, cat_seen, [[1.0]] * len(cat_seen), len(states))
        self.first = np.array([st.first_seen_ms for st in states], dtype=np.int64)
        self.last = np.array([st.last_event_ms for st in states], dtype=np.int64)
        self.no_order_since = np.array(
            [
                st.first_seen_ms if st.last_purchase_ms is None else st.last_purchase_ms
                for st in states
            ],
            dtype=np.int64,
        )
        self.price_level = np.array([price_level(st) for st in states], dtype=float)

    def vectors(
        self, owner: np.ndarray, times: np.ndarray, used: tuple[str, ...] = MODEL_FEATURES
    ) -> np.ndarray:
        """Row ``i``: the model vector of user ``owner[i]`` as of event time ``times[i]``
        (see :func:`quiet_vectors`)."""
        owner = np.asarray(owner, dtype=np.int64)
        t = np.asarray(times, dtype=np.int64)
        events_30d = self.days.from_bound(owner, t // DAY_MS - 29)[:, :_SPEND].sum(axis=1)
        year = self.periods.from_bound(owner, t // PERIOD_MS - 12)
        if isinstance(self.horizon, np.ndarray):
            horizon = self.horizon[owner]
        else:
            grain, span = _HORIZON[self.rfm_horizon]
            horizon = self.horizon.from_bound(owner, t // grain - span + 1)
        views, bought, added = year[:, _VIEW], year[:, _PURCHASE], year[:, _ADD]
        with np.errstate(divide="ignore", invalid="ignore"):
            conversion = np.where(
                views > 0, np.minimum(1.0, bought / views), np.where(bought > 0, 1.0, 0.0)
            )
            cart_rate = np.where(
                views > 0, np.minimum(1.0, added / views), np.where(added > 0, 1.0, 0.0)
            )
        diversity = self.categories.from_bound(owner, t - CATEGORY_RETENTION_MS, strict=True)[:, 0]
        first, last = self.first[owner], self.last[owner]
        no_order_since = self.no_order_since[owner]
        columns = {
            "events_30d": events_30d,
            "frequency": horizon[:, _PURCHASE],
            "monetary": np.round(horizon[:, _SPEND], 2),
            "days_without_purchase": np.round((t - no_order_since) / DAY_MS, 3),
            "days_since_last_event": np.round((t - last) / DAY_MS, 3),
            "conversion_rate_365d": np.round(conversion, 4),
            "cart_rate_365d": np.round(cart_rate, 4),
            "price_level": self.price_level[owner],
            "category_diversity_30d": diversity,
            "tenure_days": np.round((t - first) / DAY_MS, 3),
            "active_days": np.round((last - first) / DAY_MS, 3),
        }
        return to_vectors(columns, used)


def quiet_vectors(
    states: Sequence[UserState],
    owner: np.ndarray,
    times: np.ndarray,
    rfm_horizon: str = "365d",
    used: tuple[str, ...] = MODEL_FEATURES,
) -> np.ndarray:
    """The model vectors of users who send nothing more: row ``i`` is user
    ``states[owner[i]]`` as of event time ``times[i]`` (not before their last event), the
    same values as :func:`stream.scaling.to_vector` of
    :func:`stream.features.compute_features` there."""
    return QuietStates(states, rfm_horizon).vectors(owner, times, used)


def next_moves(
    states: Sequence[UserState],
    now_ms: Sequence[int],
    until_ms: Sequence[int],
    model: SegmentModel,
    margin: float,
    rfm_horizon: str = "365d",
) -> list[int | None]:
    """Per user, the first event time in ``(now_ms, until_ms)`` at which the model's
    current centres would move them out of their segment if they sent nothing more, or
    ``None``: no current segment, no model yet, or no move before ``until_ms``.

    The time is looked for a day apart (evenly spread when ``until_ms`` is more than
    :data:`MOVE_STEPS` days away), and the step before the first move is then narrowed
    down to the hour, :data:`REFINE_STEPS` sub-steps a pass, for the users who move only.

    Examples
    --------
    >>> from stream.checkpoint import ModelParams
    >>> from stream.model import SegmentModel
    >>> next_moves([UserState()], [0], [30 * DAY_MS], SegmentModel(ModelParams()), 0.1)
    [None]
    """
    out: list[int | None] = [None] * len(states)
    if not model.ready:
        return out
    rows: list[int] = []
    owners: list[np.ndarray] = []
    grids: list[np.ndarray] = []
    for i, (st, now, until) in enumerate(zip(states, now_ms, until_ms, strict=True)):
        row = model.slot(st.segment)
        span = until - now
        if row is None or until >= NEVER_MS or span <= DAY_MS:
            continue
        if span <= MOVE_STEPS * DAY_MS:
            grid = np.arange(now + DAY_MS, until, DAY_MS, dtype=np.int64)
        else:
            steps = np.arange(1, MOVE_STEPS + 1, dtype=np.int64)
            grid = now + (steps * span) // (MOVE_STEPS + 1)
        owners.append(np.full(len(grid), i, dtype=np.int64))
        grids.append(grid)
        rows.append(row)
    if not grids:
        return out
    owner = np.concatenate(owners)
    times = np.concatenate(grids)
    current = np.repeat(np.array(rows), [len(g) for g in grids])
    # Packed once: every pass below asks about the same users.
    quiet = QuietStates(states, rfm_horizon)
    first = _first_moves(quiet, owner, times, current, model, margin)
    if not len(first):
        return out
    # Between the grid time before the first move (or ``now``) and it, to the hour: the
    # sweep then moves a customer within the hour of event time the centres say, not up
    # to a grid step later.
    at = np.searchsorted(owner, owner[first])  # each hit owner's first grid index
    before = np.where(first > at, times[np.maximum(first - 1, 0)], 0)
    start = np.array([now_ms[u] for u in owner[first].tolist()], dtype=np.int64)
    lo = np.where(first > at, before, start)
    hi = times[first]
    users, rows_hit = owner[first], current[first]
    while True:
        wide = (hi - lo) > HOUR_MS
        if not wide.any():
            break
        n = len(users)
        sub = np.arange(1, REFINE_STEPS + 1, dtype=np.int64)
        grid = lo[:, None] + ((hi - lo)[:, None] * sub[None, :]) // REFINE_STEPS
        grid = np.where(wide[:, None], grid, hi[:, None])
        idx = np.repeat(np.arange(n), REFINE_STEPS)
        hit = _first_moves(quiet, users[idx], grid.ravel(), rows_hit[idx], model, margin, idx)
        # The last sub-step is ``hi`` itself, a move: it stands for a user with no
        # earlier hit (every user has one, but a hot path does not bet on it).
        k = np.full(n, REFINE_STEPS - 1, dtype=np.int64)
        k[idx[hit]] = hit - idx[hit] * REFINE_STEPS
        new_hi = grid[np.arange(n), k]
        lo = np.where(k > 0, grid[np.arange(n), np.maximum(k - 1, 0)], lo)
        hi = new_hi
    for u, t in zip(users.tolist(), hi.tolist(), strict=True):
        out[u] = int(t)
    return out


def _first_moves(
    quiet: QuietStates,
    owner: np.ndarray,
    times: np.ndarray,
    current: np.ndarray,
    model: SegmentModel,
    margin: float,
    group: np.ndarray | None = None,
) -> np.ndarray:
    """Indices into ``times`` of the first time of each ``group`` (default: each owner;
    ascending within a group, groups ascending overall) at which the centres move user
    ``owner[i]`` of ``quiet`` out of segment row ``current[i]``."""
    z = model.scale(quiet.vectors(owner, times, model.params.features))
    d = model.distances(z)
    best = d.argmin(axis=1)
    at = np.arange(len(times))
    # The hysteresis of stream.decision.decide: another centre must win by the margin.
    moved = (best != current) & (d[at, best] < (1.0 - margin) * d[at, current])
    hits = np.flatnonzero(moved)
    keys = owner if group is None else group
    _, first_at = np.unique(keys[hits], return_index=True)
    return hits[first_at]
