"""Gaps between what Redis holds and what the consumer group committed: pure logic.

The group commits an input partition's offset only after a batch's writes are in Redis
(:mod:`consumers.transaction`), and Redis records how far it holds every write
(``seg:applied``, :mod:`state.applied_offsets`). A Redis that lost writes (restarted
without persistence, or a replica promoted before it had the last writes) holds less than
the group committed: a *gap*. :func:`find_gaps` says, per partition, where to read again
from so that Redis is rebuilt from what Kafka still retains, and what Kafka no longer
has. Changes below the committed offset were published already: the replay rebuilds
state and publishes nothing (see ``Gap.committed``).

Each committed offset carries a short metadata string (:func:`commit_metadata`): the
epoch of the Redis key space it was committed against, and the model's next segment id
and version at the time, so that a model lost with its key space never gives an id or a
version that downstream readers have seen to something else.

Examples
--------
>>> meta = commit_metadata("3f9a", next_id=12, version=40)
>>> meta
'seg1;e=3f9a;n=12;v=40'
>>> parse_metadata(meta)
CommitMark(epoch='3f9a', next_id=12, version=40)
>>> gaps = find_gaps({"clicks:0": (500, meta)}, "3f9a", {"clicks:0": 420}, {"clicks:0": 0})
>>> gaps[0].kind, gaps[0].resume, gaps[0].committed, gaps[0].lost
('behind', 420, 500, None)
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from stream.batch import partition_of

if TYPE_CHECKING:
    from stream.batch import UserUpdate
    from stream.features import UserState

__all__ = [
    "GAP_KINDS",
    "CommitMark",
    "Gap",
    "Published",
    "adopt_published",
    "commit_metadata",
    "describe",
    "find_gaps",
    "heard_of",
    "id_floor",
    "mark_incomplete",
    "parse_metadata",
]

_PREFIX = "seg1"

#: ``behind``: the key space is the one the offsets were committed against, with its last
#: writes missing; ``replaced``: another key space (emptied and used again, or another
#: server); ``empty``: no key space at all.
GAP_KINDS = ("behind", "replaced", "empty")


@dataclass(frozen=True, slots=True)
class CommitMark:
    """What a committed offset's metadata says of the Redis it was committed against."""

    epoch: str
    next_id: int
    version: int


def commit_metadata(epoch: str, next_id: int, version: int) -> str:
    """The metadata committed with each input offset (a few dozen bytes)."""
    return f"{_PREFIX};e={epoch};n={next_id};v={version}"


def parse_metadata(text: str | None) -> CommitMark | None:
    """The :class:`CommitMark` in ``text``, or ``None`` for anything else (offsets
    committed by another program, or none).

    >>> parse_metadata("") is None, parse_metadata("seg1;e=ab;n=x;v=1") is None
    (True, True)
    """
    if not text or not text.startswith(_PREFIX + ";"):
        return None
    fields = dict(part.partition("=")[::2] for part in text.split(";")[1:])
    try:
        return CommitMark(fields["e"], int(fields["n"]), int(fields["v"]))
    except (KeyError, ValueError):
        return None


def id_floor(metadata: Iterable[str | None]) -> tuple[int, int]:
    """The highest next segment id and model version any committed offset carries: a
    model started afresh begins there, so no id or version is given out twice.

    >>> id_floor(["seg1;e=a;n=4;v=9", None, "seg1;e=a;n=7;v=3"])
    (7, 9)
    """
    marks = [m for m in map(parse_metadata, metadata) if m is not None]
    return max((m.next_id for m in marks), default=0), max((m.version for m in marks), default=0)


@dataclass(frozen=True, slots=True)
class Gap:
    """One input partition whose writes Redis does not all hold.

    Attributes
    ----------
    position
        ``topic:partition``.
    kind
        One of :data:`GAP_KINDS`.
    committed
        The group's committed offset: changes triggered below it were published, so the
        replay up to it publishes nothing and commits nothing.
    resume
        Where to read again from: Redis's applied offset, or the earliest offset Kafka
        still retains when Redis has none or that is later.
    lost
        ``(first, end)``: offsets Redis may have held that Kafka no longer retains, or
        ``None``. With no applied offset, ``first`` is 0: how much of it Redis held is not
        known.
    """

    position: str
    kind: str
    committed: int
    resume: int
    lost: tuple[int, int] | None

    @property
    def replay(self) -> int:
        """Events (offsets) to read again before the committed offset."""
        return max(self.committed - self.resume, 0)


def find_gaps(
    committed: Mapping[str, tuple[int, str | None]],
    epoch: str | None,
    held: Mapping[str, int],
    earliest: Mapping[str, int],
) -> list[Gap]:
    """The gaps of the partitions in ``committed``.

    Parameters
    ----------
    committed
        Per position, the group's committed offset (negative: none) and its metadata.
    epoch
        The key space's epoch as read before any was written (``None``: it has none).
    held
        Per position, Redis's applied offset, where it has one.
    earliest
        Per position, the earliest offset Kafka retains.

    Examples
    --------
    Redis came back empty; Kafka still has everything of one partition, and has deleted
    the first 100 offsets of the other:

    >>> meta = commit_metadata("e1", 3, 7)
    >>> gaps = find_gaps({"c:0": (50, meta), "c:1": (300, meta)}, None, {}, {"c:0": 0, "c:1": 100})
    >>> [(g.kind, g.resume, g.committed, g.lost) for g in gaps]
    [('empty', 0, 50, None), ('empty', 100, 300, (0, 100))]

    Nothing committed yet, or Redis at or past the committed offset: no gap.

    >>> find_gaps({"c:0": (-1001, None), "c:1": (40, meta)}, "e1", {"c:1": 40}, {"c:1": 0})
    []
    """
    out: list[Gap] = []
    for pos, (offset, meta) in committed.items():
        if offset < 0:
            continue
        have = held.get(pos)
        if have is not None and have >= offset:
            continue
        mark = parse_metadata(meta)
        if epoch is None:
            kind = "empty"
        elif mark is not None and mark.epoch != epoch:
            kind = "replaced"
        else:
            kind = "behind"
        low = max(earliest.get(pos, 0), 0)
        start = have if have is not None else 0
        lost = (start, low) if start < low else None
        out.append(Gap(pos, kind, offset, max(start, low), lost))
    return out


def describe(gaps: Iterable[Gap]) -> str:
    """One line for the log naming every gap.

    >>> gaps = [Gap("c:0", "behind", 500, 420, None), Gap("c:1", "empty", 90, 30, (0, 30))]
    >>> print(describe(gaps))
    c:0 behind (replaying 420..499); c:1 empty (replaying 30..89; offsets 0..29 no longer in Kafka)
    """
    parts = []
    for g in gaps:
        text = f"{g.position} {g.kind} (replaying {g.resume}..{g.committed - 1}"
        if g.lost is not None:
            text += f"; offsets {g.lost[0]}..{g.lost[1] - 1} no longer in Kafka"
        parts.append(text + ")")
    return "; ".join(parts)


class Published(NamedTuple):
    """A user's last published change, as the compacted ``segments.current`` holds it."""

    segment: int
    name: str
    since_ms: int


def adopt_published(updates: Iterable[UserUpdate], published: Mapping[str, Published]) -> list[str]:
    """Give each user rebuilt by a replay the segment downstream readers last heard of.

    A replay decides again, with the model and the clock of now, what was decided before
    Redis lost it, and may decide otherwise; its changes are not published (they were,
    the first time). So a rebuilt user keeps the segment of their last published change,
    and their next change starts from it. Users with no published change get no segment
    and are returned, to be queued for a decision once the rebuild is over.

    >>> from stream.batch import UserUpdate
    >>> from stream.features import UserState
    >>> ups = [UserUpdate(u, UserState(segment=5, segment_name="loyal"), {}, None, None, None)
    ...        for u in ("a", "b")]
    >>> adopt_published(ups, {"a": Published(2, "at_risk", 1_000)})
    ['b']
    >>> [(u.state.segment, u.state.segment_name, u.state.segment_since_ms) for u in ups]
    [(2, 'at_risk', 1000), (None, None, None)]
    """
    unheard: list[str] = []
    for u in updates:
        if not u.write:
            continue
        pub = published.get(u.user_id)
        if pub is None:
            u.state.segment = u.state.segment_name = u.state.segment_since_ms = None
            unheard.append(u.user_id)
        else:
            u.state.segment, u.state.segment_name = pub.segment, pub.name
            u.state.segment_since_ms = pub.since_ms
    return unheard


def mark_incomplete(updates: Iterable[UserUpdate], partitions: Collection[int]) -> int:
    """Mark the users a replay rebuilt on input ``partitions`` whose history Kafka no
    longer wholly retains: their state may lack events Redis lost. Returns how many.

    >>> from stream.batch import UserUpdate
    >>> from stream.features import UserState
    >>> ups = [UserUpdate(u, UserState(offsets={f"c:{p}": 9}), {}, None, None, None)
    ...        for u, p in (("a", 0), ("b", 1))]
    >>> mark_incomplete(ups, {1}), [u.state.incomplete for u in ups]
    (1, [False, True])
    """
    marked = 0
    for u in updates:
        if u.write and u.state.offsets and partition_of(u.state) in partitions:
            u.state.incomplete = True
            marked += 1
    return marked


def heard_of(
    states: Mapping[str, UserState | None],
    published: Mapping[str, Published],
    partitions: Collection[int],
    committed: Mapping[str, int],
) -> list[tuple[str, UserState, int | None]]:
    """Users on input ``partitions`` whose stored segment is not the one downstream readers
    last heard of, each as ``(user, state with the published segment, stored segment)``.

    A replay restores what input events decided; a change made without an event (a sweep,
    a retired segment's members moved) in what Redis lost is restored here, from
    ``segments.current``. A user whose stored last change is not known committed
    (``committed``: offsets by position) is left alone: that change is published again,
    with the state that holds it, when its batch is read again.

    >>> from stream.features import UserState
    >>> states = {u: UserState(offsets={f"c:{p}": 5}, segment=1) for u, p in (("a", 0), ("b", 1))}
    >>> [(u, st.segment, was) for u, st, was in heard_of(
    ...     states, {"a": Published(4, "loyal", 9), "b": Published(4, "loyal", 9)}, {0}, {})]
    [('a', 4, 1)]
    """
    out: list[tuple[str, UserState, int | None]] = []
    for user, st in states.items():
        pub = published.get(user)
        if st is None or pub is None or not st.offsets or partition_of(st) not in partitions:
            continue
        if st.segment == pub.segment and st.segment_name == pub.name:
            continue
        lc = st.last_change
        if lc is not None and lc.offset >= committed.get(lc.pos, 0):
            continue
        was = st.segment
        st = st.copy()
        st.segment, st.segment_name, st.segment_since_ms = pub.segment, pub.name, pub.since_ms
        out.append((user, st, was))
    return out
