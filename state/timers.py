"""Event-time timers: ``seg:timers:{p}`` per input partition ``p``, a sorted set of user
id -> due time (event time, ms).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from state.client import StoreBase, call, run

#: Move up to ARGV[2] timers of KEYS[1] due after ARGV[1] to ARGV[1]; return how many.
MAKE_DUE = """
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
for _, member in ipairs(later) do
  redis.call('ZADD', KEYS[1], ARGV[1], member)
end
return #later
"""


class Timers(StoreBase):
    """Each user's event-time timer, kept per input partition."""

    def timer_due(self, users: Mapping[str, int]) -> dict[str, int]:
        """The due times of the timers of ``users`` (user -> input partition) that have one."""
        if not users:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for uid, part in users.items():
            pipe.zscore(self.keys.timers(part), uid)
        raw = run(pipe, "read user timers")
        return {uid: int(v) for uid, v in zip(users, raw, strict=True) if v is not None}

    def due_users(self, partitions: Iterable[int], until_ms: int, limit: int) -> dict[str, int]:
        """Users of ``partitions`` whose timers are due at or before ``until_ms``, earliest
        first, at most ``limit`` per partition, with their due times."""
        parts = sorted(partitions)
        if not parts:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for part in parts:
            pipe.zrangebyscore(
                self.keys.timers(part), "-inf", until_ms, start=0, num=limit, withscores=True
            )
        out: dict[str, int] = {}
        for rows in run(pipe, "read due timers"):
            for uid, due in rows:
                out[uid.decode()] = int(due)
        return out

    def timers_due_count(self, partitions: Iterable[int], until_ms: int) -> int:
        """How many users of ``partitions`` are due at or before ``until_ms`` (the sweep's
        backlog)."""
        pipe = self._r.pipeline(transaction=False)
        for part in sorted(partitions):
            pipe.zcount(self.keys.timers(part), "-inf", until_ms)
        return sum(int(n) for n in run(pipe, "count due timers"))

    def set_timers(self, timers: Mapping[str, tuple[int, int | None]]) -> None:
        """Set each user's timer (input partition, due time), or remove it (``None``)."""
        if not timers:
            return
        adds: dict[int, dict[str, int]] = {}
        removes: dict[int, list[str]] = {}
        for uid, (part, due) in timers.items():
            if due is None:
                removes.setdefault(part, []).append(uid)
            else:
                adds.setdefault(part, {})[uid] = due
        pipe = self._r.pipeline(transaction=False)
        for part, members in adds.items():
            pipe.zadd(self.keys.timers(part), members)
        for part, gone in removes.items():
            pipe.zrem(self.keys.timers(part), *gone)
        run(pipe, "set user timers")

    def make_due(self, partitions: Iterable[int], due_ms: int, chunk: int = 10_000) -> int:
        """Bring every timer of ``partitions`` due later than ``due_ms`` forward to it, so
        the sweep re-decides every user (after the model's segments changed); returns how
        many timers moved. Runs in chunks, so Redis is never blocked for long."""
        moved = 0
        for part in sorted(partitions):
            while True:
                n = int(
                    call(
                        lambda part=part: self._r.eval(
                            MAKE_DUE, 1, self.keys.timers(part), str(due_ms), str(chunk)
                        ),
                        "bring timers forward",
                    )
                )
                moved += n
                if n < chunk:
                    break
        return moved
