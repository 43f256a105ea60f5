"""Time to re-segment users whose behaviour shifted, from segment-change records.

Pure: no I/O. The generator can shift part of one persona's users to behave as another
from some point of the span (:class:`~loadtest.personas.PersonaShift`);
:func:`resegmentation` works out from the ``segments.changes`` records of such a run how
many of the shifted users were moved to the segment of the persona they shifted to, how
long that took in event time, and how many unshifted users were moved there all the same.
The quality run's scenarios have no shift; this is kept for runs that do.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtest.personas import PersonaShift
from loadtest.quality_metrics import event_time_ms

__all__ = ["Resegmentation", "event_time_ms", "resegmentation", "resegmentation_rows"]

_DAYS = 30.0  # the generator's default span, for the shift's day in the rows
_HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Resegmentation:
    """How fast, and how cleanly, shifted users were moved to their new segment.

    Attributes
    ----------
    from_persona, to_persona
        The shift's personas.
    target_segment
        The segment most unshifted users of ``to_persona`` are in at the end; ``None``
        if none of them has a segment.
    target_holders, target_persona_users
        Unshifted ``to_persona`` users in the target segment at the end, and all of them.
    shifted_end_segment, shifted_end_holders
        The segment most shifted users are in at the end (``None`` if none has a
        segment), and how many of them are.
    shifted, shifted_already
        Shifted users, and of them those already in the target segment just before
        their shift (left out of the share).
    resegmented
        Shifted users (not already there) whose segment changed into the target one at
        or after their shift.
    delays_h
        For each re-segmented user, the event time from the shift to that change, in
        hours; sorted.
    events_to_resegment
        For each re-segmented user, their events from the shift up to and including the
        one that triggered the change; sorted. ``None`` if event times were not given.
    control, control_already, control_moved
        Unshifted users of ``from_persona``; those already in the target segment just
        before the shift; and of the others, those whose segment changed into the target
        one at or after the shift (false moves).
    """

    from_persona: str
    to_persona: str
    target_segment: int | None
    target_holders: int
    target_persona_users: int
    shifted_end_segment: int | None
    shifted_end_holders: int
    shifted: int
    shifted_already: int
    resegmented: int
    delays_h: tuple[float, ...]
    events_to_resegment: tuple[int, ...] | None
    control: int
    control_already: int
    control_moved: int
    #: The same figures for the segment where most shifted users end (their own segment
    #: when the model gives converted users one): shifted users already in it at their
    #: shift, those who moved into it after, the delays, and control users who moved in.
    own_already: int = 0
    own_moved: int = 0
    own_delays_h: tuple[float, ...] = ()
    control_own_moved: int = 0

    @property
    def share_resegmented(self) -> float | None:
        """``resegmented`` over the shifted users not already in the target segment."""
        n = self.shifted - self.shifted_already
        return self.resegmented / n if n else None

    @property
    def median_delay_h(self) -> float | None:
        return float(np.median(self.delays_h)) if self.delays_h else None

    @property
    def p90_delay_h(self) -> float | None:
        """90th percentile of ``delays_h``, linearly interpolated."""
        return float(np.percentile(self.delays_h, 90)) if self.delays_h else None

    @property
    def median_events(self) -> float | None:
        e = self.events_to_resegment
        return float(np.median(e)) if e else None

    @property
    def false_move_share(self) -> float | None:
        """``control_moved`` over the control users not already in the target segment."""
        n = self.control - self.control_already
        return self.control_moved / n if n else None


def _most_common(segments: Counter[int]) -> int | None:
    """The segment with the most users; the lowest id among equals."""
    return min(segments.items(), key=lambda kv: (-kv[1], kv[0]))[0] if segments else None


def _entry_into(
    history: Sequence[tuple[int, int]], target: int | None, since_ms: int
) -> tuple[bool, int | None]:
    """(already in ``target`` just before ``since_ms``, event time of the first change
    into ``target`` at or after it, or ``None``), from one user's changes in order."""
    held: int | None = None
    for t, segment in history:
        if t < since_ms:
            held = segment
            continue
        if held is not None and held == target:
            return True, None
        if segment == target:
            return False, t
    return (held is not None and held == target), None


def resegmentation(
    changes: Iterable[Mapping[str, Any]],
    ground_truth: Mapping[str, Any],
    events_after_shift: Mapping[str, Sequence[int]] | None = None,
) -> Resegmentation:
    """Time to re-segment shifted users, from segment-change records and the ground truth.

    Pure: no I/O.

    Parameters
    ----------
    changes
        Segment-change messages as dicts (``user_id``, ``segment``, ``event_time`` as
        ISO-8601 or epoch ms, optionally ``change_id``), each user's in the order they
        were decided (the order of one partition). Repeated ``change_id`` values count
        once; users not in the ground truth are ignored.
    ground_truth
        The generator's ground-truth document: ``personas`` (at the end of the span),
        ``shift`` (with ``from_persona``, ``to_persona``, ``at_ms``) and ``shifted``
        (user -> ``{"before", "after", "at_ms"}``).
    events_after_shift
        Optional: for each shifted user, the sorted event times (epoch ms) of their
        events at or after the shift, for ``events_to_resegment``.

    Returns
    -------
    Resegmentation

    Raises
    ------
    ValueError
        If the ground truth has no shift.
    """
    shift = ground_truth.get("shift")
    if not shift:
        raise ValueError("ground_truth has no shift to measure re-segmentation against")
    personas: Mapping[str, str] = ground_truth["personas"]
    shifted: Mapping[str, Mapping[str, Any]] = ground_truth.get("shifted") or {}
    from_persona, to_persona = str(shift["from_persona"]), str(shift["to_persona"])
    at_ms = int(shift["at_ms"])

    history: dict[str, list[tuple[int, int]]] = {}
    seen: set[str] = set()
    for c in changes:
        cid = c.get("change_id")
        if cid is not None:
            if cid in seen:
                continue
            seen.add(cid)
        user = str(c["user_id"])
        if user in personas:
            history.setdefault(user, []).append((event_time_ms(c["event_time"]), int(c["segment"])))

    holders = [u for u, p in personas.items() if p == to_persona and u not in shifted]
    end_segments = Counter(history[u][-1][1] for u in holders if u in history)
    target = _most_common(end_segments)
    shifted_ends = Counter(history[u][-1][1] for u in shifted if u in history)
    shifted_end = _most_common(shifted_ends)

    already = 0
    delays: list[float] = []
    n_events: list[int] = []
    for user, entry in shifted.items():
        since = int(entry["at_ms"])
        was_there, t = _entry_into(history.get(user, ()), target, since)
        if was_there:
            already += 1
        elif t is not None:
            delays.append((t - since) / _HOUR_MS)
            if events_after_shift is not None:
                times = events_after_shift.get(user, ())
                n_events.append(bisect.bisect_right(times, t) - bisect.bisect_left(times, since))

    control = [u for u, p in personas.items() if p == from_persona and u not in shifted]
    control_already = control_moved = 0
    for user in control:
        was_there, t = _entry_into(history.get(user, ()), target, at_ms)
        control_already += was_there
        control_moved += t is not None

    own_already = 0
    own_delays: list[float] = []
    for user, entry in shifted.items():
        since = int(entry["at_ms"])
        was_there, t = _entry_into(history.get(user, ()), shifted_end, since)
        own_already += was_there
        if not was_there and t is not None:
            own_delays.append((t - since) / _HOUR_MS)
    control_own_moved = sum(
        _entry_into(history.get(u, ()), shifted_end, at_ms)[1] is not None for u in control
    )

    return Resegmentation(
        from_persona=from_persona,
        to_persona=to_persona,
        target_segment=target,
        target_holders=end_segments[target] if target is not None else 0,
        target_persona_users=len(holders),
        shifted_end_segment=shifted_end,
        shifted_end_holders=shifted_ends[shifted_end] if shifted_end is not None else 0,
        shifted=len(shifted),
        shifted_already=already,
        resegmented=len(delays),
        delays_h=tuple(sorted(delays)),
        events_to_resegment=tuple(sorted(n_events)) if events_after_shift is not None else None,
        control=len(control),
        control_already=control_already,
        control_moved=control_moved,
        own_already=own_already,
        own_moved=len(own_delays),
        own_delays_h=tuple(sorted(own_delays)),
        control_own_moved=control_own_moved,
    )


def _share(n: int, of: int) -> str:
    return f"{n} / {of} ({100 * n / of:.1f} %)" if of else f"{n} / 0"


def _num(x: float | None, fmt: str = ".1f") -> str:
    return "-" if x is None else format(x, fmt)


def resegmentation_rows(
    r: Resegmentation, shift: PersonaShift, catalogue: Mapping[int, Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """Rows of the report table for :func:`resegmentation`'s figures."""

    def segment(sid: int | None, holders: int, of: int) -> str:
        if sid is None:
            return "none"
        name = catalogue.get(sid, {}).get("name") or "?"
        return f"{sid} {name} ({holders} of {of} users)"

    target = segment(r.target_segment, r.target_holders, r.target_persona_users)
    rows = [
        (
            "behaviour shift (ground truth)",
            f"{r.shifted} of {r.shifted + r.control} {r.from_persona} users shop as "
            f"{r.to_persona} from day {shift.at * _DAYS:.1f} of {_DAYS:.0f}",
        ),
        (f"target segment: where most unshifted {r.to_persona} users end", target),
        (
            "where most shifted users end",
            segment(r.shifted_end_segment, r.shifted_end_holders, r.shifted),
        ),
        (
            "shifted users re-segmented into the target segment",
            _share(r.resegmented, r.shifted - r.shifted_already),
        ),
        (
            "time to re-segment, median (hours of event time after the shift)",
            _num(r.median_delay_h),
        ),
        ("time to re-segment, 90th percentile (hours of event time)", _num(r.p90_delay_h)),
    ]
    if r.events_to_resegment is not None:
        rows.append(
            ("events from the shift to re-segmentation, median per user", _num(r.median_events))
        )
    rows += [
        (
            f"false moves: unshifted {r.from_persona} users moved into the target segment "
            "after the shift",
            _share(r.control_moved, r.control - r.control_already),
        ),
        (
            "already in the target segment at the shift, left out (shifted / unshifted)",
            f"{r.shifted_already} / {r.control_already}",
        ),
        (
            "shifted users who moved after the shift into the segment most of them end in",
            _share(r.own_moved, r.shifted - r.own_already),
        ),
        (
            "time to that move, median / 90th percentile (hours of event time)",
            f"{_num(_pct(r.own_delays_h, 50))} / {_num(_pct(r.own_delays_h, 90))}",
        ),
        (
            f"false moves into it: unshifted {r.from_persona} users",
            _share(r.control_own_moved, r.control),
        ),
    ]
    return rows


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None
