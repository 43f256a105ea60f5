"""The pure parts of the quality run: scores, name matching, moves, time to lapse, report.

No servers and no I/O: every function takes plain values (segment labels, personas,
change messages as dicts) so that :mod:`loadtest.quality` only gathers them and this
module decides what they mean.

Names. A segment name is a naming rule's name (:data:`stream.naming.DEFAULT_RULES`),
possibly followed by qualifier words when two segments fall under one rule
(``window_shopper_more_activity``); :func:`base_name` strips those. A segment's name
*fits* when its base name is one a marketer would give the majority persona of its
members (:data:`ACCEPTED_NAMES`).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from stream.feature_registry import DAY_MS, HOUR_MS
from stream.naming import DEFAULT_RULES
from stream.quiet_drift import quiet_vectors

if TYPE_CHECKING:
    from stream.features import UserState
    from stream.model import SegmentModel

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: The naming rules' names (:data:`stream.naming.DEFAULT_RULES`), longest first so that a
#: prefix match finds the whole rule name.
RULE_NAMES: tuple[str, ...] = tuple(
    sorted((rule.name for rule in DEFAULT_RULES), key=lambda n: (-len(n), n))
)

#: Persona -> the base segment names that fit it.
ACCEPTED_NAMES: dict[str, frozenset[str]] = {
    "loyal_high_spender": frozenset({"high_value", "loyal"}),
    "bargain_hunter": frozenset({"bargain_hunter"}),
    "window_shopper": frozenset({"window_shopper"}),
    "new_user": frozenset({"new", "potential"}),
    "lapsing_customer": frozenset({"at_risk", "dormant"}),
    "dormant_customer": frozenset({"dormant"}),
    "reactivated_customer": frozenset({"potential", "loyal", "high_value", "bargain_hunter"}),
}

#: The personas whose time to lapse is measured, and the names that mean "lapsed".
LAPSING_PERSONAS: tuple[str, ...] = ("lapsing_customer", "dormant_customer")
LAPSE_NAMES: frozenset[str] = frozenset({"at_risk", "dormant"})


@dataclass(frozen=True, slots=True)
class Target:
    """One quality target: a measure, its threshold and how it reads."""

    key: str
    label: str
    threshold: float


TARGETS: dict[str, Target] = {
    t.key: t
    for t in (
        Target("ari_personas", "ARI vs personas, every scenario and mode", 0.85),
        Target("ari_batch", "agreement with batch KMeans (ARI), every scenario and mode", 0.9),
        Target("k_chosen", "true k chosen in every scenario and mode but at most one", 1),
        Target("names_correct", "names correct, every scenario and mode", 0.9),
        Target("ari_batch_rfm", "real data: ARI vs batch RFM k-means", 0.8),
        Target(
            "lapse_within_a_day",
            "lapsed customers moved within a day of crossing into an "
            "at_risk or dormant segment, by the versions in force; every run with such moves",
            0.9,
        ),
    )
}


def ari(truth: Sequence[Hashable], labels: Sequence[Hashable]) -> float:
    """Adjusted Rand index of two labellings of the same items (1 = the same partition).

    >>> ari(["a", "a", "b", "b"], [7, 7, 3, 3]), ari(["a", "a", "b", "b"], [1, 2, 1, 2])
    (1.0, -0.5)
    """
    if len(truth) != len(labels):
        raise ValueError(f"{len(truth)} truths for {len(labels)} labels")
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(list(truth), list(labels)))


def zscore(x: np.ndarray) -> np.ndarray:
    """Each column to mean 0 and standard deviation 1 (a constant column stays 0).

    >>> zscore(np.array([[1.0, 5.0], [3.0, 5.0]])).tolist()
    [[-1.0, 0.0], [1.0, 0.0]]
    """
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def base_name(name: str, rules: Iterable[str] = RULE_NAMES) -> str:
    """The naming rule's name a segment name starts with, qualifier words stripped.

    >>> base_name("window_shopper_more_activity"), base_name("at_risk")
    ('window_shopper', 'at_risk')
    >>> base_name("loyal_less_spend")
    'loyal'
    >>> base_name("mystery")
    'mystery'
    """
    for rule in sorted(rules, key=len, reverse=True):
        if name == rule or name.startswith(rule + "_"):
            return rule
    return name


def name_fits(persona: str, name: str) -> bool:
    """Whether segment ``name`` (qualifiers allowed) is one a marketer would give ``persona``.

    >>> name_fits("lapsing_customer", "dormant_less_orders"), name_fits("new_user", "loyal")
    (True, False)
    """
    return base_name(name) in ACCEPTED_NAMES.get(persona, frozenset())


@dataclass(frozen=True, slots=True)
class SegmentSummary:
    """One segment at the end of a run: its name, members and their personas."""

    segment: int
    name: str
    size: int
    #: Persona -> members, most first.
    mix: tuple[tuple[str, int], ...]

    @property
    def base(self) -> str:
        return base_name(self.name)

    @property
    def majority(self) -> str:
        return self.mix[0][0]

    @property
    def majority_share(self) -> float:
        return self.mix[0][1] / self.size

    @property
    def fits(self) -> bool:
        return name_fits(self.majority, self.name)


def segment_summaries(
    labels: Mapping[str, int], personas: Mapping[str, str], names: Mapping[int, str]
) -> list[SegmentSummary]:
    """Each segment holding one of ``labels``' users: name, size and persona mix.

    Users without a persona are left out; a segment missing from ``names`` is ``?``.

    >>> s = segment_summaries({"a": 1, "b": 1, "c": 2}, {"a": "p", "b": "q", "c": "q"},
    ...                       {1: "loyal"})
    >>> [(x.segment, x.name, x.size, x.mix) for x in s]
    [(1, 'loyal', 2, (('p', 1), ('q', 1))), (2, '?', 1, (('q', 1),))]
    """
    members: dict[int, Counter[str]] = defaultdict(Counter)
    for user, seg in labels.items():
        if user in personas:
            members[seg][personas[user]] += 1
    out = []
    for seg in sorted(members):
        mix = tuple(sorted(members[seg].items(), key=lambda kv: (-kv[1], kv[0])))
        out.append(SegmentSummary(seg, names.get(seg, "?"), sum(members[seg].values()), mix))
    return out


def names_correct(summaries: Sequence[SegmentSummary]) -> float:
    """Share of segments whose name fits the majority persona of their members.

    >>> s = segment_summaries({"a": 1, "b": 2}, {"a": "window_shopper", "b": "new_user"},
    ...                       {1: "window_shopper_more_quiet", 2: "dormant"})
    >>> names_correct(s)
    0.5
    """
    return sum(s.fits for s in summaries) / len(summaries) if summaries else 0.0


def merged_personas(summaries: Sequence[SegmentSummary], min_share: float = 0.2) -> list[str]:
    """Segments where two or more personas each hold at least ``min_share`` of the members.

    >>> s = segment_summaries({"a": 1, "b": 1, "c": 2}, {"a": "p", "b": "q", "c": "q"}, {})
    >>> merged_personas(s)
    ['1: p 1 + q 1']
    """
    out = []
    for s in summaries:
        big = [(p, n) for p, n in s.mix if n >= min_share * s.size]
        if len(big) > 1:
            out.append(f"{s.segment}: " + " + ".join(f"{p} {n}" for p, n in big))
    return out


def event_time_ms(value: object) -> int:
    """Epoch ms of a change message's ``event_time``: ISO-8601 (``Z`` = UTC) or ms.

    >>> event_time_ms("1970-01-01T00:00:01.250Z"), event_time_ms(1250)
    (1250, 1250)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        dt = datetime.fromisoformat(value)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return (dt - _EPOCH) // timedelta(milliseconds=1)
    raise ValueError(f"event_time must be ISO-8601 text or epoch ms, got {value!r}")


def user_histories(changes: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Each user's change messages in the order given (a partition's offset order),
    repeated ``change_id`` values once."""
    seen: set[str] = set()
    out: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for c in changes:
        cid = c.get("change_id")
        if cid is not None:
            if cid in seen:
                continue
            seen.add(cid)
        out[str(c["user_id"])].append(c)
    return dict(out)


@dataclass(frozen=True, slots=True)
class Moves:
    """Segment changes of a run: users with one, moves after the first, moves undone."""

    users: int
    changes: int
    moves: int
    reversals: int

    @property
    def moves_per_user(self) -> float:
        return self.moves / self.users if self.users else 0.0

    @property
    def reversal_rate(self) -> float:
        return self.reversals / self.moves if self.moves else 0.0


def moves_and_reversals(changes: Iterable[Mapping[str, Any]], window_ms: int = DAY_MS) -> Moves:
    """Moves (each user's changes after their first) and reversals: a move back to the
    segment the user left at most ``window_ms`` of event time earlier (A -> B -> A).

    Each user's changes are taken in the order given (the offset order of their
    partition); repeated ``change_id`` values count once.

    >>> c = [
    ...     {"change_id": "a", "user_id": "u", "segment": 1, "event_time": 0},
    ...     {"change_id": "b", "user_id": "u", "segment": 2, "event_time": 1000},
    ...     {"change_id": "c", "user_id": "u", "segment": 1, "event_time": 2000},
    ...     {"change_id": "c", "user_id": "u", "segment": 1, "event_time": 2000},
    ...     {"change_id": "d", "user_id": "v", "segment": 2, "event_time": 0},
    ... ]
    >>> m = moves_and_reversals(c)
    >>> m, m.moves_per_user
    (Moves(users=2, changes=4, moves=2, reversals=1), 1.0)
    """
    users = changes_n = moves = reversals = 0
    for history in user_histories(changes).values():
        users += 1
        changes_n += len(history)
        left: dict[int, int] = {}  # segment -> event time the user left it
        held: int | None = None
        for c in history:
            seg, t = int(c["segment"]), event_time_ms(c["event_time"])
            if held is not None:
                moves += 1
                back = left.get(seg)
                if back is not None and t - back <= window_ms:
                    reversals += 1
                left[held] = t
            held = seg
    return Moves(users, changes_n, moves, reversals)


@dataclass(frozen=True, slots=True)
class InForce:
    """A model version, its segment names, and the event time from which it decided."""

    since_ms: int
    version: int
    model: SegmentModel
    names: Mapping[int, str]


@dataclass(frozen=True, slots=True)
class Lapse:
    """How long lapsing customers took to be named at risk or dormant.

    Attributes
    ----------
    customers
        Customers of the lapsing personas.
    with_purchase
        Of them, those with a purchase in the span (the clock starts at the last).
    hours
        For those moved into a segment named at_risk or dormant at or after their last
        purchase: event-time hours from that purchase to the change; sorted.
    already
        Those in such a segment at their last purchase who never left it.
    entries
        Per customer counted in ``hours``: the user, the event time they got there, the
        segment they left, the one they entered and the model version that put them there
        (for :func:`days_after_crossing`); for one whose segment was renamed, the segment
        left and entered are the same and the version is the renaming one.
    renamed
        Of ``entries``, those whose segment was renamed.
    """

    customers: int
    with_purchase: int
    hours: tuple[float, ...] = field(default=())
    already: int = 0
    entries: tuple[tuple[str, int, int | None, int, int], ...] = field(default=())
    renamed: int = 0

    @property
    def reached(self) -> int:
        return len(self.hours)

    @property
    def median_h(self) -> float | None:
        return float(np.median(self.hours)) if self.hours else None

    @property
    def p90_h(self) -> float | None:
        return float(np.percentile(self.hours, 90)) if self.hours else None


def hours_to_lapse(
    changes: Iterable[Mapping[str, Any]],
    personas: Mapping[str, str],
    last_purchase_ms: Mapping[str, int],
    lapsing: Iterable[str] = LAPSING_PERSONAS,
    in_force: Sequence[InForce] = (),
) -> Lapse:
    """Event-time hours from each lapsing customer's last purchase to the first time they
    are in a segment named at_risk or dormant: moved into one (the name the change message
    gives), or, with ``in_force`` (sorted by :attr:`InForce.since_ms`), left in a segment
    that a newly begun version names so.

    >>> H = HOUR_MS
    >>> c = [
    ...     {"user_id": "a", "segment": 1, "segment_name": "loyal", "event_time": 0},
    ...     {"user_id": "a", "segment": 2, "segment_name": "at_risk_more_orders",
    ...      "event_time": 30 * H},
    ...     {"user_id": "b", "segment": 3, "segment_name": "dormant", "event_time": 5 * H},
    ...     {"user_id": "c", "segment": 1, "segment_name": "loyal", "event_time": 0},
    ... ]
    >>> personas = {"a": "lapsing_customer", "b": "dormant_customer", "c": "lapsing_customer",
    ...             "d": "dormant_customer", "e": "window_shopper"}
    >>> lapse = hours_to_lapse(c, personas, {"a": 10 * H, "b": 5 * H, "c": 0})
    >>> lapse.customers, lapse.with_purchase, lapse.hours, lapse.reached
    (4, 3, (0.0, 20.0), 2)
    """
    wanted = set(lapsing)
    histories = user_histories(changes)
    customers = with_purchase = already = 0
    hours: list[float] = []
    entries: list[tuple[str, int, int | None, int, int]] = []
    renamed = 0
    for user, persona in personas.items():
        if persona not in wanted:
            continue
        customers += 1
        lp = last_purchase_ms.get(user)
        if lp is None:
            continue
        with_purchase += 1
        reached, was_lapsed = _first_lapse(histories.get(user, ()), lp, in_force)
        if reached is not None:
            hours.append((reached[0] - lp) / HOUR_MS)
            entries.append((user, *reached))
            renamed += reached[1] == reached[2]
        elif was_lapsed:
            already += 1
    return Lapse(customers, with_purchase, tuple(sorted(hours)), already, tuple(entries), renamed)


def _first_lapse(
    history: Sequence[Mapping[str, Any]], lp: int, in_force: Sequence[InForce]
) -> tuple[tuple[int, int | None, int, int] | None, bool]:
    """The first time from ``lp`` on that a user goes from a segment not named at_risk or
    dormant into one so named, by a change or by a version that renames their segment,
    as ``(time, left, into, version)``; and whether they were in such a segment at ``lp``
    (and so never went into one)."""
    steps: list[tuple[int, int, Mapping[str, Any] | InForce]] = [
        (event_time_ms(c["event_time"]), 1, c) for c in history
    ]
    steps += [(f.since_ms, 0, f) for f in in_force]  # a version first at a tie
    steps.sort(key=lambda x: (x[0], x[1]))
    held: int | None = None
    lapsed = False
    at_lp: bool | None = None
    for t, _, step in steps:
        if t >= lp and at_lp is None:
            at_lp = lapsed
        if isinstance(step, InForce):
            now = held is not None and base_name(step.names.get(held, "")) in LAPSE_NAMES
            if t >= lp and now and not lapsed and held is not None:
                return (t, held, held, step.version), False
            lapsed = now
            continue
        prev = step.get("previous_segment")
        held = int(step["segment"])
        now = base_name(str(step.get("segment_name", ""))) in LAPSE_NAMES
        if t >= lp and now and not lapsed:
            left = None if prev is None else int(prev)
            return (t, left, held, int(step.get("model_version", -1))), False
        lapsed = now
    # Not reached: in such a segment at ``lp`` and never out of one since, or never in one.
    return None, (lapsed if at_lp is None else at_lp) and lapsed


@dataclass(frozen=True, slots=True)
class Crossing:
    """When lapsing customers crossed into an at_risk or dormant segment, by the model
    versions in force at the time, against when the segmenter moved them.

    Attributes
    ----------
    days
        Per customer, event-time days from the crossing to the move; sorted.
    not_crossed
        Customers moved whom no version in force put in such a segment by the move.
    no_version
        Customers moved by a version that is not among the versions given (not kept).
    active_after
        Customers with an event after the move: not quiet, so their state of the end
        does not say when they crossed.
    """

    days: tuple[float, ...]
    not_crossed: int
    no_version: int = 0
    active_after: int = 0

    @property
    def within_a_day(self) -> float | None:
        """Share of ``days`` at most a day (and the hour this measure steps by): moved by
        the sweep after the crossing, with a day's slack for the sweep's own step."""
        if not self.days:
            return None
        return sum(d <= 1.0 + HOUR_MS / DAY_MS for d in self.days) / len(self.days)

    @property
    def median_days(self) -> float | None:
        return float(np.median(self.days)) if self.days else None


def versions_in_force(changes: Iterable[Mapping[str, Any]]) -> dict[int, int]:
    """Per model version, the lowest group watermark of a change message it decided:
    from about when (in event time) that version decided segments. A version that
    decided no change is missing; the one before it counts as in force meanwhile.

    >>> versions_in_force([
    ...     {"model_version": 3, "watermark": 500}, {"model_version": 3, "watermark": 200},
    ...     {"model_version": 4, "watermark": 900}, {"model_version": 5, "watermark": None},
    ... ])
    {3: 200, 4: 900}
    """
    out: dict[int, int] = {}
    for c in changes:
        wm, version = c.get("watermark"), c.get("model_version")
        if wm is None or version is None:
            continue
        v, t = int(version), event_time_ms(wm)
        if v not in out or t < out[v]:
            out[v] = t
    return out


def days_after_crossing(
    entries: Iterable[tuple[str, int, int | None, int, int]],
    states: Mapping[str, UserState],
    in_force: Sequence[InForce],
    margin: float,
    rfm_horizon: str = "365d",
) -> Crossing:
    """For each ``(user, moved_at, left, into, version)`` of :attr:`Lapse.entries`: the
    hour, from the user's last event on, at which the model versions in force began to
    put the quiet user (with the hysteresis ``margin``, from segment ``left`` when a
    version has it) in a segment their names call at_risk or dormant, for good up to the
    move (:func:`_last_crossing`), and the days from then to ``moved_at``. A customer
    with an event at or after ``moved_at`` is counted apart: their state of the end is
    not the quiet one they crossed in.

    ``in_force`` is sorted by :attr:`InForce.since_ms`. The version in force at an hour is
    the latest begun by then, up to ``version`` (the one the move was made with: a
    process may lag the newest by a model sync), and ``version`` itself from the move on.
    Judged so, a move is late only against the centres the segmenter had, not against
    centres a later refit moved.
    """
    starts = np.array([f.since_ms for f in in_force], dtype=np.int64)
    slot = {f.version: i for i, f in enumerate(in_force)}
    lapse_rows = [
        np.array([base_name(f.names.get(seg, "")) in LAPSE_NAMES for seg in f.model.ids])
        for f in in_force
    ]
    days: list[float] = []
    not_crossed = no_version = active_after = 0
    for user, moved_at, left, _into, version in entries:
        st = states.get(user)
        if st is None:
            continue
        if st.last_event_ms >= moved_at:
            active_after += 1
            continue
        mover = slot.get(version)
        if mover is None:
            no_version += 1
            continue
        # An hour at a time: finer than the sweep's day, so its own step hardly counts.
        times = np.arange(st.last_event_ms + HOUR_MS, moved_at + 2 * DAY_MS, HOUR_MS)
        which = np.minimum(np.searchsorted(starts, times, side="right") - 1, mover)
        which[times >= moved_at] = mover
        lapsed = np.zeros(len(times), dtype=bool)
        for i in np.unique(which[which >= 0]):
            at = np.flatnonzero(which == i)
            lapsed[at] = _lapsed(
                st, times[at], in_force[i].model, lapse_rows[i], left, margin, rfm_horizon
            )
        crossed = _last_crossing(times, lapsed, moved_at)
        if crossed is None:
            not_crossed += 1
            continue
        days.append((moved_at - crossed) / DAY_MS)
    return Crossing(tuple(sorted(days)), not_crossed, no_version, active_after)


def _last_crossing(times: np.ndarray, lapsed: np.ndarray, moved_at: int) -> int | None:
    """The start of the last stretch of ``lapsed`` hours that reaches the hour of the move
    (``moved_at``); else the first lapsed hour after it; ``None`` if there is neither.

    >>> t = np.arange(10)
    >>> _last_crossing(t, np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 0], bool), 6)
    4
    >>> _last_crossing(t, np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1], bool), 6)
    8
    """
    upto = int(np.searchsorted(times, moved_at, side="right"))
    if upto and lapsed[upto - 1]:
        quiet = np.flatnonzero(~lapsed[:upto])
        return int(times[quiet[-1] + 1]) if quiet.size else int(times[0])
    later = np.flatnonzero(lapsed[upto:])
    return int(times[upto + later[0]]) if later.size else None


def _lapsed(
    st: UserState,
    times: np.ndarray,
    model: SegmentModel,
    lapse_rows: np.ndarray,
    held: int | None,
    margin: float,
    rfm_horizon: str,
) -> np.ndarray:
    """Whether ``model`` puts quiet user ``st`` at each of ``times`` in a lapse segment,
    from segment ``held`` with the hysteresis ``margin`` when ``model`` has it."""
    owner = np.zeros(len(times), dtype=np.int64)
    z = model.scale(quiet_vectors([st], owner, times, rfm_horizon, model.params.features))
    d = model.distances(z)
    chosen = d.argmin(axis=1)
    row = model.slot(held)
    if row is not None:
        at = np.arange(len(times))
        keep = ~(d[at, chosen] < (1.0 - margin) * d[:, row])
        chosen = np.where(keep, row, chosen)
    return lapse_rows[chosen]


# -- targets and the report -----------------------------------------------------------


def scenario_targets(row: Mapping[str, Any]) -> dict[str, bool]:
    """Which per-run targets one scenario x mode row meets.

    >>> scenario_targets({"ari_personas": 0.9, "ari_batch": 0.8, "names_correct": 1.0,
    ...                   "k_true": 3, "k_chosen": 4})
    {'ari_personas': True, 'ari_batch': False, 'names_correct': True, 'k_chosen': False}
    """
    return {
        "ari_personas": _at_least(row.get("ari_personas"), TARGETS["ari_personas"].threshold),
        "ari_batch": _at_least(row.get("ari_batch"), TARGETS["ari_batch"].threshold),
        "names_correct": _at_least(row.get("names_correct"), TARGETS["names_correct"].threshold),
        "k_chosen": row.get("k_chosen") == row.get("k_true"),
    }


def _at_least(value: object, threshold: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value >= threshold


@dataclass(frozen=True, slots=True)
class TargetResult:
    label: str
    threshold: str
    result: str
    met: bool


def overall_targets(
    rows: Sequence[Mapping[str, Any]], real: Mapping[str, Any] | None
) -> list[TargetResult]:
    """Every target over the whole run, met or not.

    >>> rows = [{"name": "three", "mode": "live", "ari_personas": 0.9, "ari_batch": 0.95,
    ...          "names_correct": 1.0, "k_true": 3, "k_chosen": 3},
    ...         {"name": "four", "mode": "live", "ari_personas": 0.7, "ari_batch": 0.95,
    ...          "names_correct": 0.75, "k_true": 4, "k_chosen": 3}]
    >>> [(t.met, t.result) for t in overall_targets(rows, {"ari_batch_rfm": 0.5})]
    ... # doctest: +NORMALIZE_WHITESPACE
    [(False, '1 of 2 runs; lowest 0.700 (four live)'),
     (True, '2 of 2 runs; lowest 0.950 (three live)'),
     (True, '1 of 2 runs; missed: four live (k=3 of 4)'),
     (False, '1 of 2 runs; lowest 0.750 (four live)'),
     (False, 'no run moved a lapsed customer'), (False, '0.500')]
    """
    out: list[TargetResult] = []
    for key in ("ari_personas", "ari_batch"):
        out.append(_every_run(rows, key))
    misses = [r for r in rows if r.get("k_chosen") != r.get("k_true")]
    t = TARGETS["k_chosen"]
    result = f"{len(rows) - len(misses)} of {len(rows)} runs"
    if misses:
        result += "; missed: " + ", ".join(
            f"{r['name']} {r['mode']} (k={r.get('k_chosen')} of {r.get('k_true')})" for r in misses
        )
    out.append(TargetResult(t.label, "misses <= 1", result, bool(rows) and len(misses) <= 1))
    out.append(_every_run(rows, "names_correct"))
    out.append(_lapse_target(rows))
    t = TARGETS["ari_batch_rfm"]
    if real is None:
        out.append(TargetResult(t.label, f">= {t.threshold}", "not run", False))
    else:
        value = real.get("ari_batch_rfm")
        out.append(
            TargetResult(
                t.label, f">= {t.threshold}", _fmt(value, ".3f"), _at_least(value, t.threshold)
            )
        )
    return out


def _lapse_target(rows: Sequence[Mapping[str, Any]]) -> TargetResult:
    t = TARGETS["lapse_within_a_day"]
    timed = [r for r in rows if r.get("lapse_within_a_day") is not None]
    if not timed:
        return TargetResult(t.label, f">= {t.threshold}", "no run moved a lapsed customer", False)
    result = _every_run(timed, t.key)
    moved = sum(int(r.get("lapse_crossed", 0)) for r in timed)
    return replace(result, result=f"{result.result}; {moved} customers in {len(timed)} runs")


def _every_run(rows: Sequence[Mapping[str, Any]], key: str) -> TargetResult:
    t = TARGETS[key]
    met = [r for r in rows if _at_least(r.get(key), t.threshold)]
    result = f"{len(met)} of {len(rows)} runs"
    if rows:
        low = min(rows, key=lambda r: _sort_value(r.get(key)))
        result += f"; lowest {_fmt(low.get(key), '.3f')} ({low['name']} {low['mode']})"
    return TargetResult(t.label, f">= {t.threshold}", result, bool(rows) and len(met) == len(rows))


def _sort_value(value: object) -> float:
    return float(value) if isinstance(value, int | float) else -math.inf


def _fmt(value: object, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def _mark(met: bool) -> str:
    return "met" if met else "**not met**"


def scenario_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The scenario x mode table: every measure, and each target met or not.

    >>> print(scenario_table([{"name": "three", "mode": "live", "users": 10, "events": 100,
    ...     "k_true": 3, "k_chosen": 3, "ari_personas": 0.9, "ari_batch": 0.95,
    ...     "names_correct": 1.0, "moves_per_user": 0.25, "reversals": 1, "moves": 4,
    ...     "lapse_reached": 2, "lapse_customers": 3, "hours_to_lapse_median": 10.0,
    ...     "hours_to_lapse_p90": 20.0, "seconds": 12.5}]))
    ... # doctest: +NORMALIZE_WHITESPACE
    | scenario | mode | users | events | k true | k chosen | ARI personas (>= 0.85) |
    ARI batch (>= 0.9) | names correct (>= 0.9) | moves / user | reversals / moves |
    hours to lapse: median / p90 (reached of) | moved within a day of crossing | run s |
    |---|---|---:|---:|---:|---:|---|---|---|---:|---:|---|---|---:|
    | three | live | 10 | 100 | 3 | 3 met | 0.900 met | 0.950 met | 1.00 met | 0.250 | 1 / 4 |
    10.0 / 20.0 (2 of 3, 0 renamed) | - | 12 |
    """
    head = (
        f"| scenario | mode | users | events | k true | k chosen "
        f"| ARI personas (>= {TARGETS['ari_personas'].threshold}) "
        f"| ARI batch (>= {TARGETS['ari_batch'].threshold}) "
        f"| names correct (>= {TARGETS['names_correct'].threshold}) "
        "| moves / user | reversals / moves | hours to lapse: median / p90 (reached of) "
        "| moved within a day of crossing | run s |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---|---|---|---:|---:|---|---|---:|"]
    for r in rows:
        met = scenario_targets(r)
        lapse = (
            f"{_fmt(r.get('hours_to_lapse_median'), '.1f')} / "
            f"{_fmt(r.get('hours_to_lapse_p90'), '.1f')} "
            f"({r.get('lapse_reached', 0)} of {r.get('lapse_customers', 0)}, "
            f"{r.get('lapse_renamed', 0)} renamed)"
            if r.get("lapse_customers")
            else "-"
        )
        lines.append(
            f"| {r['name']} | {r['mode']} | {r.get('users', '-')} | {r.get('events', '-')} "
            f"| {r.get('k_true')} | {r.get('k_chosen')} {_mark(met['k_chosen'])} "
            f"| {_fmt(r.get('ari_personas'))} {_mark(met['ari_personas'])} "
            f"| {_fmt(r.get('ari_batch'))} {_mark(met['ari_batch'])} "
            f"| {_fmt(r.get('names_correct'), '.2f')} {_mark(met['names_correct'])} "
            f"| {_fmt(r.get('moves_per_user'))} "
            f"| {r.get('reversals', '-')} / {r.get('moves', '-')} "
            f"| {lapse} | {_crossing(r)} | {_fmt(r.get('seconds'), '.0f')} |"
        )
    return "\n".join(lines)


def _crossing(row: Mapping[str, Any]) -> str:
    share = row.get("lapse_within_a_day")
    if share is None:
        return "-"
    met = _at_least(share, TARGETS["lapse_within_a_day"].threshold)
    return (
        f"{_fmt(share, '.2f')} {_mark(met)} (of {row.get('lapse_crossed', 0)}; "
        f"{row.get('lapse_not_crossed', 0)} not crossed, "
        f"{row.get('lapse_active_after', 0)} active after; median "
        f"{_fmt(row.get('lapse_days_after_crossing_median'), '.2f')} d)"
    )


def targets_table(targets: Sequence[TargetResult]) -> str:
    """The targets, each with its result and whether it is met."""
    lines = ["| target | threshold | result | met |", "|---|---|---|---|"]
    lines += [f"| {t.label} | {t.threshold} | {t.result} | {_mark(t.met)} |" for t in targets]
    return "\n".join(lines)


def segments_table(row: Mapping[str, Any]) -> str:
    """One run's segments: name, base name, size, persona mix and whether the name fits."""
    lines = [
        "| segment | name | users | personas in it (most first) | name fits majority |",
        "|---:|---|---:|---|---|",
    ]
    for s in row.get("segments", []):
        mix = ", ".join(f"{p} {n}" for p, n in s["mix"][:4])
        lines.append(
            f"| {s['segment']} | {s['name']} | {s['size']} | {mix} | "
            f"{'yes' if s['fits'] else 'no'} |"
        )
    return "\n".join(lines)


def profile_rows(profiles: Sequence[Mapping[str, Any]]) -> str:
    """RFM profiles (dicts of :class:`loadtest.real_data.SegmentProfile` fields) as a table."""
    lines = [
        "| segment | customers | share | mean recency (days) | mean orders | mean spend ($) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {p['segment']} | {p['size']:,} | {p['share']:.1%} | {p['recency_days']:.1f} "
        f"| {p['orders']:.2f} | {p['spend']:,.2f} |"
        for p in profiles
    ]
    return "\n".join(lines)


NAME_MAPPING_TEXT = "\n".join(
    f"| {persona} | {', '.join(sorted(names))} |" for persona, names in ACCEPTED_NAMES.items()
)


def render_report(
    rows: Sequence[Mapping[str, Any]],
    real: Mapping[str, Any] | None,
    meta: Mapping[str, Any],
) -> str:
    """The whole Markdown report from the JSON rows, the real-data result and run facts.

    ``meta``: ``date``, ``elapsed_s``, ``machine`` (label -> text), ``config`` (label ->
    text), optional ``notes`` (list of sentences).
    """
    out = [f"# Segment quality, {meta.get('date', '')}", ""]
    out += [
        "Every scenario of `loadtest/scenarios.py` in each mode (live: events produced at a "
        "set rate while one `segmenter run` consumes them; backlog: all events produced "
        "first, then drained), and a real purchase history (CDNOW) replayed with "
        "`segmenter replay`. Each run has its own topics, consumer group and Redis prefix; "
        "the segmenter chooses k (`n_clusters=0`) and otherwise runs on its defaults.",
        "",
        f"Whole run: {_fmt(meta.get('elapsed_s'), '.0f')} s.",
        "",
        "## Targets",
        "",
        targets_table(overall_targets(rows, real)),
        "",
        "## Scenarios x modes",
        "",
        scenario_table(rows),
        "",
        "- ARI personas: adjusted Rand index of each user's segment in Redis against their "
        "persona at the end of the span.",
        "- ARI batch: against scikit-learn KMeans with the true k (n_init=10) on the same "
        "users' features as of the final watermark (`compute_features(state, watermark, "
        '"365d")`, `to_vector`, z-score per column).',
        "- names correct: share of segments whose base name (qualifier words stripped) fits "
        "the majority persona of its members, by the mapping below.",
        "- moves / user: segment changes after each user's first, per user with a segment; "
        "reversals: moves back to the segment left at most 24 h of event time earlier.",
        "- hours to lapse: lapsing and dormant customers, event-time hours from their last "
        "purchase to the first time they are in a segment named at_risk or dormant: moved "
        "into one (the name in the change message), or left in one that a newly begun model "
        "version names so (renamed); reached of those with a purchase in the span.",
        "- moved within a day of crossing: of those lapsed customers, the share there at "
        "most a day (and the hour this measure steps by) after the model versions in force "
        "put them, quiet, in a segment their names call at_risk or dormant (with the "
        "segmenter's hysteresis from the segment they held), counted from the start of the "
        "last such stretch before they got there; the median of those days. The version in "
        "force at an event time is the latest whose first change message had a watermark at "
        "or before it (every published version is kept for this), up to the version that "
        "moved them. Not crossed: there though no version in force put them there by then; "
        "active after: customers with an event after it, whose quiet trajectory their final "
        "state does not give.",
        "",
        "Names accepted per persona:",
        "",
        "| persona | accepted base names |",
        "|---|---|",
        NAME_MAPPING_TEXT,
        "",
    ]
    for r in rows:
        out += [
            f"### {r['name']}, {r['mode']}",
            "",
            f"k chosen {r.get('k_chosen')} of true {r.get('k_true')}: {r.get('k_choice', '-')}",
            "",
            f"Users segmented {r.get('users')} of {r.get('users_with_events')} with events; "
            f"watermark {r.get('watermark', '-')}; model version {r.get('model_version', '-')}; "
            f"refits counted by segmenter_model_refits_total {r.get('refits', '-')}; "
            f"users swept by timers {r.get('swept', '-')} (everyone brought forward "
            f"{r.get('resweeps_centres_moved', '-')} times for moved centres); "
            f"user updates learned from {r.get('learned', '-')}, left out by the learning "
            f"budget {r.get('sampled_out', '-')}; "
            f"batch KMeans ARI vs personas (reference) {_fmt(r.get('ari_batch_vs_personas'))}.",
            "",
        ]
        if r.get("merged"):
            out += ["Segments holding more than one persona: " + "; ".join(r["merged"]), ""]
        out += [segments_table(r), ""]
    out += ["## Real data: CDNOW", ""]
    if real is None:
        out += ["Not run (`--skip-real`).", ""]
    else:
        out += [
            f"{real.get('dataset')}: {real.get('events', 0):,} purchases of "
            f"{real.get('customers', 0):,} customers, replayed with `segmenter replay` "
            f"({_fmt(real.get('replay_s'), '.1f')} s), drained by one `segmenter run` "
            f"({_fmt(real.get('drain_s'), '.1f')} s), with "
            f"SEGMENTER_RFM_HORIZON={real.get('rfm_horizon', '365d')} (orders and spend over "
            "all of a customer's history, as the batch baseline counts them) and "
            f"SEGMENTER_MODEL_FEATURES={','.join(real.get('model_features') or ['(all)'])} "
            "(a purchase log: the other features repeat recency or are constant). Compared as "
            f"of the end of the data ({real.get('as_of')}).",
            "",
            "| measure | value |",
            "|---|---|",
            f"| customers segmented | {real.get('segmented', 0):,} |",
            f"| segmenter k (and why) | {real.get('k_chosen')}: {real.get('k_choice', '-')} |",
            f"| batch RFM k, by the silhouette among the segmenter's k "
            f"({real.get('batch_k_range', '-')}) | {real.get('batch_k')}: "
            f"{real.get('batch_k_reason', '-')} |",
            f"| ARI vs batch RFM k-means (that k) | {_fmt(real.get('ari_batch_rfm'))} "
            f"{_mark(_at_least(real.get('ari_batch_rfm'), TARGETS['ari_batch_rfm'].threshold))} |",
            f"| batch RFM k, by the silhouette among 2-8 | {real.get('batch_wide_k', '-')}: "
            f"{real.get('batch_wide_k_reason', '-')} |",
            f"| ARI vs batch RFM k-means (that k) | {_fmt(real.get('ari_batch_rfm_wide'))} |",
            f"| ARI vs batch RFM k-means with the segmenter's k | "
            f"{_fmt(real.get('ari_batch_rfm_same_k'))} |",
            "",
            "Segmenter's segments (RFM of their members as of the end of the data):",
            "",
            profile_rows(real.get("segmenter_profiles", [])),
            "",
            f"Batch RFM k-means, k={real.get('batch_k')} (chosen among "
            f"{real.get('batch_k_range', '-')}):",
            "",
            profile_rows(real.get("batch_profiles", [])),
            "",
            f"Batch RFM k-means with the segmenter's k={real.get('k_chosen')}:",
            "",
            profile_rows(real.get("batch_same_k_profiles", [])),
            "",
        ]
    out += ["## Configuration and machine", "", "| item | value |", "|---|---|"]
    for label, value in {**meta.get("config", {}), **meta.get("machine", {})}.items():
        out.append(f"| {label} | {value} |")
    notes = meta.get("notes") or []
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"
