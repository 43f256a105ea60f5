"""Segment membership and the catalogue: ``seg:segment:{n}:members`` (a set of user ids
per segment) and ``seg:segments`` (segment -> its catalogue entry, as JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from state.client import StoreBase, call, run
from stream.naming import SegmentProfile


class Segments(StoreBase):
    """Segment membership sets and the segment catalogue."""

    def segment_sizes(self, segments: Sequence[int]) -> list[int]:
        pipe = self._r.pipeline(transaction=False)
        for i in segments:
            pipe.scard(self.keys.members(i))
        return [int(x) for x in run(pipe, "count segment members")]

    def write_catalogue(self, profiles: Sequence[SegmentProfile], sizes: Sequence[int]) -> None:
        entries = {
            str(p.segment): orjson.dumps(
                {
                    "segment": p.segment,
                    "name": p.name,
                    "description": p.description,
                    "size": size,
                    "profile": p.centroid,
                }
            )
            for p, size in zip(profiles, sizes, strict=True)
        }
        pipe = self._r.pipeline(transaction=False)
        pipe.hset(self.keys.segments, mapping=entries)
        pipe.hkeys(self.keys.segments)
        stale = [
            k for k in run(pipe, "write the segment catalogue")[-1] if k.decode() not in entries
        ]
        if stale:
            # Retired segments leave the catalogue (their lineage is in the model's events).
            call(lambda: self._r.hdel(self.keys.segments, *stale), "trim the segment catalogue")

    def read_catalogue(self) -> list[dict[str, Any]]:
        raw = call(lambda: self._r.hgetall(self.keys.segments), "read the segment catalogue")
        return sorted((orjson.loads(v) for v in raw.values()), key=lambda e: e["segment"])

    def members(self, segment: int, count: int = 100) -> list[str]:
        it = self._r.sscan_iter(self.keys.members(segment), count=count)
        return [m.decode() for m, _ in zip(it, range(count), strict=False)]
