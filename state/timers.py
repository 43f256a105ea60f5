"""Event-time timers of the users of each input partition ``p``.

A user's timer (user id -> due time, event time in ms) lives in one of
:data:`~state.keys.TIMER_BUCKETS` small sorted sets, ``seg:timers:{p}:<bucket>``, chosen
by a hash of the user id (:meth:`~state.keys.Keys.timer_bucket`): small sorted sets stay
in Redis's compact encoding, about 24 bytes a timer where one large set takes 112.

``seg:timers:{p}`` indexes the buckets: bucket -> a due time at or before the earliest
timer in it. Setting a timer lowers its bucket's entry (``ZADD ... LT``) in the same
script; moving a timer later or removing it leaves the entry early, and the next look for
due timers that finds the bucket has nothing due sets the entry to the bucket's earliest
timer (or drops it when the bucket is empty). So the entries are never late, and a look
for due timers reads only buckets whose entry the watermark passed.

Every key of a partition shares its hash tag, so the scripts work on a Redis Cluster.
They are sent as raw ``EVAL`` commands: redis-py's cluster pipeline has no script support.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping

from state.client import StoreBase, call, run
from state.keys import TIMER_BUCKETS, timer_bucket_index

#: Set and remove timers of one partition. KEYS[1]: the index; ARGV[1]: the bucket key
#: prefix; then (bucket, user id, due time or "" to remove) triples. Returns nothing.
SET_TIMERS = """
local prefix = ARGV[1]
for i = 2, #ARGV, 3 do
  local key = prefix .. ARGV[i]
  if ARGV[i + 2] == '' then
    redis.call('ZREM', key, ARGV[i + 1])
  else
    redis.call('ZADD', key, ARGV[i + 2], ARGV[i + 1])
    redis.call('ZADD', KEYS[1], 'LT', ARGV[i + 2], ARGV[i])
  end
end
return 0
"""

#: Timers of one partition due at or before ARGV[2], at most ARGV[3], as a flat list of
#: user id, due time; index entries found early are set right. KEYS[1]: the index;
#: ARGV[1]: the bucket key prefix.
DUE_USERS = """
local prefix, limit = ARGV[1], tonumber(ARGV[3])
local out, n = {}, 0
for _, b in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])) do
  if n >= limit then break end
  local key = prefix .. b
  local rows = redis.call(
    'ZRANGEBYSCORE', key, '-inf', ARGV[2], 'WITHSCORES', 'LIMIT', 0, limit - n)
  for i = 1, #rows, 2 do
    out[#out + 1] = rows[i]
    out[#out + 1] = rows[i + 1]
    n = n + 1
  end
  if #rows == 0 then
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if #first == 0 then
      redis.call('ZREM', KEYS[1], b)
    else
      redis.call('ZADD', KEYS[1], first[2], b)
    end
  end
end
return out
"""

#: How many timers of one partition are due at or before ARGV[2]. KEYS[1]: the index;
#: ARGV[1]: the bucket key prefix.
DUE_COUNT = """
local n = 0
for _, b in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])) do
  n = n + redis.call('ZCOUNT', ARGV[1] .. b, '-inf', ARGV[2])
end
return n
"""

#: Bring every timer due after ARGV[2] in the buckets ARGV[3..] of one partition forward
#: to ARGV[2]; return how many moved. KEYS[1]: the index; ARGV[1]: the bucket key prefix.
MAKE_DUE = """
local moved = 0
for i = 3, #ARGV do
  local key = ARGV[1] .. ARGV[i]
  local later = redis.call('ZRANGEBYSCORE', key, '(' .. ARGV[2], '+inf')
  for _, member in ipairs(later) do
    redis.call('ZADD', key, ARGV[2], member)
  end
  if #later > 0 then
    redis.call('ZADD', KEYS[1], 'LT', ARGV[2], ARGV[i])
  end
  moved = moved + #later
end
return moved
"""

#: Counting due timers reads every due bucket, so the gauge is refreshed at most this
#: often (seconds).
DUE_COUNT_EVERY_S = 1.0


class Timers(StoreBase):
    """Each user's event-time timer, kept per input partition in hashed buckets."""

    _due_count: tuple[float, int] | None = None

    def _prefix(self, part: int) -> str:
        return self.keys.timer_bucket_of(part, "")

    def timer_due(self, users: Mapping[str, int]) -> dict[str, int]:
        """The due times of the timers of ``users`` (user -> input partition) that have one."""
        if not users:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for uid, part in users.items():
            pipe.zscore(self.keys.timer_bucket(part, uid), uid)
        raw = run(pipe, "read user timers")
        return {uid: int(v) for uid, v in zip(users, raw, strict=True) if v is not None}

    def due_users(self, partitions: Iterable[int], until_ms: int, limit: int) -> dict[str, int]:
        """Users of ``partitions`` whose timers are due at or before ``until_ms``, at most
        ``limit`` per partition, earliest first, with their due times.

        The buckets are read in the order of their earliest timer, so when more than
        ``limit`` are due the ones returned are among the earliest, not exactly the
        earliest ``limit``; the rest come in the next calls.
        """
        parts = sorted(partitions)
        if not parts:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for part in parts:
            pipe.execute_command(
                "EVAL", DUE_USERS, 1, self.keys.timers(part), self._prefix(part), until_ms, limit
            )
        rows: list[tuple[int, str]] = []
        for flat in run(pipe, "read due timers"):
            rows += [(int(flat[i + 1]), flat[i].decode()) for i in range(0, len(flat), 2)]
        return {uid: due for due, uid in sorted(rows)}

    def timers_due_count(self, partitions: Iterable[int], until_ms: int) -> int:
        """How many users of ``partitions`` are due at or before ``until_ms`` (the sweep's
        backlog). Counted at most every :data:`DUE_COUNT_EVERY_S`; between, the last count."""
        now = time.monotonic()
        if self._due_count is not None and now - self._due_count[0] < DUE_COUNT_EVERY_S:
            return self._due_count[1]
        pipe = self._r.pipeline(transaction=False)
        for part in sorted(partitions):
            pipe.execute_command(
                "EVAL", DUE_COUNT, 1, self.keys.timers(part), self._prefix(part), until_ms
            )
        n = sum(int(c) for c in run(pipe, "count due timers"))
        self._due_count = (now, n)
        return n

    def set_timers(self, timers: Mapping[str, tuple[int, int | None]]) -> None:
        """Set each user's timer (input partition, due time), or remove it (``None``)."""
        if not timers:
            return
        by_part: dict[int, list[str | int]] = defaultdict(list)
        for uid, (part, due) in timers.items():
            by_part[part] += [timer_bucket_index(uid), uid, "" if due is None else due]
        pipe = self._r.pipeline(transaction=False)
        for part, args in by_part.items():
            pipe.execute_command(
                "EVAL", SET_TIMERS, 1, self.keys.timers(part), self._prefix(part), *args
            )
        run(pipe, "set user timers")

    def make_due(
        self, partitions: Iterable[int], due_ms: int, epoch: int | None = None, chunk: int = 256
    ) -> int:
        """Bring every timer of ``partitions`` due later than ``due_ms`` forward to it, so
        the sweep re-decides every user (after the model's segments changed); returns how
        many timers moved. Runs ``chunk`` buckets a script, so Redis is never blocked
        for long. With ``epoch``, each partition then records it as the model epoch it was
        last brought forward under (:meth:`swept_epochs`): only once all its timers are,
        so a process stopped half-way leaves the partition to be brought forward again."""
        moved = 0
        for part in sorted(partitions):
            for lo in range(0, TIMER_BUCKETS, chunk):
                buckets = range(lo, min(lo + chunk, TIMER_BUCKETS))
                args = (self.keys.timers(part), self._prefix(part), due_ms, *buckets)
                moved += int(
                    call(
                        lambda args=args: self._r.execute_command("EVAL", MAKE_DUE, 1, *args),
                        "bring timers forward",
                    )
                )
            if epoch is not None:
                key = self.keys.timers_swept(part)
                call(lambda key=key: self._r.set(key, epoch), "record the sweep's epoch")
        return moved

    def swept_epochs(self, partitions: Iterable[int]) -> dict[int, int | None]:
        """The model epoch each of ``partitions`` last had every timer brought forward
        under (:meth:`make_due`), ``None`` for never."""
        parts = sorted(partitions)
        pipe = self._r.pipeline(transaction=False)
        for part in parts:
            pipe.get(self.keys.timers_swept(part))
        raw = run(pipe, "read the sweeps' epochs")
        return {p: None if v is None else int(v) for p, v in zip(parts, raw, strict=True)}
