"""The group's event-time watermark: one clock for every user of a consumer group.

Each input partition has a highest event time seen so far. The watermark is the lowest of
them, less an allowed lateness: every partition has reached it, so nothing much older is
still to come, and a feature taken as of it means the same for every user. A partition
whose highest event time has not moved for ``idle_timeout_ms`` of wall time (a quiet
shard, a topic without traffic) stops holding the watermark back until it moves again;
a partition never heard of is not waited for. A partition that still has records to read
(a backlog: the consumer reads one partition's fetch after another, so some are hours of
event time ahead of others) is never idle: :meth:`Watermark.behind` holds it, at its
last event time or, before its first record, where the watermark stands. The watermark
never goes back.

Each process tracks the partitions it consumes and shares them through Redis
(``seg:watermark``), so every process computes the same clock from every partition
(:meth:`Watermark.merge`); each keeps the highest event time it was told of for every
partition, so a rebalance or a stale report never moves a partition's clock back.

Examples
--------
>>> w = Watermark(allowed_lateness_ms=1_000, idle_timeout_ms=10_000)
>>> w.observe("clicks:0", 50_000, wall_ms=0); w.observe("clicks:1", 20_000, wall_ms=0)
>>> w.advance(wall_ms=1_000)
19000
>>> w.observe("clicks:1", 60_000, wall_ms=2_000); w.advance(wall_ms=2_000)
49000

``clicks:0`` goes quiet: after the idle timeout it no longer holds the clock back.

>>> w.observe("clicks:1", 90_000, wall_ms=12_000); w.advance(wall_ms=12_000)
89000

A backlog: ``clicks:2`` has records to read but none read yet, so the others, read ahead,
do not move the clock until it catches up.

>>> w.behind("clicks:2", wall_ms=13_000)
>>> w.observe("clicks:1", 500_000, wall_ms=30_000); w.behind("clicks:2", wall_ms=30_000)
>>> w.advance(wall_ms=30_000)
89000
>>> w.observe("clicks:2", 400_000, wall_ms=31_000); w.advance(wall_ms=31_000)
399000
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PartitionClock:
    """A partition's highest event time, and the wall time it last moved forward."""

    max_event_ms: int
    moved_at_ms: int

    def encode(self) -> str:
        """As ``seg:watermark`` stores it: ``max_event_ms:moved_at_ms``."""
        return f"{self.max_event_ms}:{self.moved_at_ms}"

    @classmethod
    def parse(cls, raw: bytes | str) -> PartitionClock | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        a, sep, b = text.partition(":")
        try:
            return cls(int(a), int(b)) if sep else None
        except ValueError:
            return None


class Watermark:
    """Per-partition event-time clocks and the group watermark computed from them.

    Parameters
    ----------
    allowed_lateness_ms
        How far behind the slowest partition the watermark stays, so that events that
        arrive a little out of order are still counted as of the time they belong to.
    idle_timeout_ms
        Wall time after which a partition whose clock has not moved stops holding the
        watermark back.
    """

    def __init__(self, allowed_lateness_ms: int = 0, idle_timeout_ms: int = 10_000) -> None:
        if allowed_lateness_ms < 0:
            raise ValueError(f"allowed_lateness_ms must be 0 or more, got {allowed_lateness_ms}")
        if idle_timeout_ms <= 0:
            raise ValueError(f"idle_timeout_ms must be positive, got {idle_timeout_ms}")
        self.allowed_lateness_ms = allowed_lateness_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.clocks: dict[str, PartitionClock] = {}
        #: Partitions whose clocks moved here since the last :meth:`take_moved`.
        self._moved: set[str] = set()
        #: The current watermark (0 until any partition has an event).
        self.value = 0

    def observe(self, pos: str, event_ms: int, wall_ms: int) -> None:
        """An event of input position ``pos`` (``topic:partition``) at ``event_ms``."""
        cur = self.clocks.get(pos)
        if cur is None or event_ms > cur.max_event_ms:
            self.clocks[pos] = PartitionClock(event_ms, wall_ms)
            self._moved.add(pos)

    def behind(self, pos: str, wall_ms: int) -> None:
        """Input position ``pos`` still has records to read: it is not idle, whatever its
        clock did lately. Before its first record it holds the watermark where it is."""
        cur = self.clocks.get(pos)
        # Event time 0 is below any watermark: the minimum stays where the clock stands.
        self.clocks[pos] = PartitionClock(0 if cur is None else cur.max_event_ms, wall_ms)
        self._moved.add(pos)

    def merge(self, shared: Mapping[str, PartitionClock]) -> None:
        """Take what the other processes reported (the higher clock of each partition, or
        the same clock held more recently)."""
        for pos, clock in shared.items():
            cur = self.clocks.get(pos)
            if cur is None or (clock.max_event_ms, clock.moved_at_ms) > (
                cur.max_event_ms,
                cur.moved_at_ms,
            ):
                self.clocks[pos] = clock

    def take_moved(self) -> dict[str, PartitionClock]:
        """The clocks that moved here since the last call: what to report to the others."""
        out = {pos: self.clocks[pos] for pos in self._moved}
        self._moved = set()
        return out

    def advance(self, wall_ms: int) -> int:
        """Recompute the watermark at wall time ``wall_ms``; it never goes back."""
        if not self.clocks:
            return self.value
        active = [
            c.max_event_ms
            for c in self.clocks.values()
            if wall_ms - c.moved_at_ms < self.idle_timeout_ms
        ]
        # Every partition idle: the group is quiet, and the clock stands at the newest.
        low = min(active) if active else max(c.max_event_ms for c in self.clocks.values())
        self.value = max(self.value, low - self.allowed_lateness_ms)
        return self.value
