"""The shared watermark: ``seg:watermark``, each input partition (``topic:partition``) ->
its clock, so every process computes the same watermark (:mod:`stream.watermark`).
"""

from __future__ import annotations

from collections.abc import Mapping

from state.client import StoreBase, call
from stream.watermark import PartitionClock

#: For each (partition, highest event time, clock) in ARGV, set the field of the watermark
#: hash KEYS[1] to the clock unless the stored one is higher, or as high and as recent;
#: return the whole hash.
SHARE_WATERMARK = """
for i = 1, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local high, moved
  if cur then
    local a, b = string.match(cur, '^(%d+):(%d+)$')
    high, moved = tonumber(a), tonumber(b)
  end
  local new_moved = tonumber(string.match(ARGV[i + 2], ':(%d+)$'))
  if not high or high < tonumber(ARGV[i + 1])
      or (high == tonumber(ARGV[i + 1]) and moved < new_moved) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
  end
end
return redis.call('HGETALL', KEYS[1])
"""


class SharedWatermark(StoreBase):
    """Every input partition's clock, shared by the processes of the group."""

    def share_watermark(self, moved: Mapping[str, PartitionClock]) -> dict[str, PartitionClock]:
        """Report the partition clocks that moved here (kept only where higher than the
        stored ones) and return every partition's clock."""
        args: list[str] = []
        for pos, clock in moved.items():
            args += [pos, str(clock.max_event_ms), clock.encode()]
        raw = call(
            lambda: self._r.eval(SHARE_WATERMARK, 1, self.keys.watermark, *args),
            "share the watermark",
        )
        out: dict[str, PartitionClock] = {}
        for pos, value in zip(raw[::2], raw[1::2], strict=True):
            parsed = PartitionClock.parse(value)
            if parsed is not None:
                out[pos.decode()] = parsed
        return out
