"""How far Redis holds every write: ``seg:applied`` and ``seg:epoch``.

``seg:applied`` maps each input partition (``topic:partition``) to the offset below which
every batch's writes are in Redis. It is raised after a batch's user writes and before its
offsets are committed, so in a Redis that kept what it acknowledged it is never below the
consumer group's committed offset. A Redis that restarted without persistence, or a
replica promoted before it received the last writes, holds less: its ``seg:applied`` is
lower than the committed offset, or gone. Redis replicates and persists commands in the
order it ran them, so a server that has an offset in ``seg:applied`` also has every write
made before it.

``seg:epoch`` is a random identity written once when a key space is first used. The
consumer group's committed offsets carry the epoch they were committed against (see
:func:`stream.state_gaps.commit_metadata`), so a key space replaced by another (emptied,
or a different server) is told from one that merely lost its last writes.

On a Redis Cluster, shards fail over one by one: a shard that lost its last writes while
the one holding ``seg:applied`` did not goes unnoticed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

from state.client import StoreBase, call, run
from stream.errors import RedisError

#: For each (position, offset) in ARGV, raise field position of hash KEYS[1] to offset
#: (never lower it: a batch replayed after a failure writes an offset already there).
RAISE_APPLIED = """
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]))
  if not cur or cur < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""


class AppliedOffsets(StoreBase):
    """The offsets Redis holds every write below, and the identity of the key space."""

    def ensure_epoch(self) -> str:
        """The key space's epoch, written now (at random) if it has none."""
        fresh = secrets.token_hex(8)
        pipe = self._r.pipeline(transaction=False)
        pipe.set(self.keys.epoch, fresh, nx=True)
        pipe.get(self.keys.epoch)
        _, got = run(pipe, "read the key space's epoch")
        return got.decode() if isinstance(got, bytes) else str(got)

    def read_applied(self, positions: Iterable[str]) -> tuple[str | None, dict[str, int]]:
        """The epoch (``None``: the key space has none) and, of ``positions``, those with an
        applied offset, in one round trip."""
        wanted = list(positions)
        pipe = self._r.pipeline(transaction=False)
        pipe.get(self.keys.epoch)
        if wanted:
            pipe.hmget(self.keys.applied, wanted)
        replies = run(pipe, "read the applied offsets")
        epoch = replies[0].decode() if replies[0] is not None else None
        values = replies[1] if wanted else []
        held = {pos: int(v) for pos, v in zip(wanted, values, strict=True) if v is not None}
        return epoch, held

    def raise_applied(self, offsets: Mapping[str, int], wait: tuple[int, int] = (0, 0)) -> None:
        """Record that Redis holds every write below ``offsets`` (position -> offset).

        ``wait``: ``(replicas, timeout_ms)``: then also wait until that many replicas
        acknowledged every write so far (Redis ``WAIT``, on the connection that made this
        last write: replication is one ordered stream, so the batch's earlier writes are
        acknowledged with it), and raise :class:`RedisError` if fewer did in time.
        """
        replicas, timeout_ms = wait
        if not offsets and not replicas:
            return
        args: list[str | int] = []
        for pos, off in offsets.items():
            args += [pos, off]
        if self.cluster:
            # A cluster pipeline runs no scripts, and WAIT is not asked of a cluster.
            call(
                lambda: self._r.eval(RAISE_APPLIED, 1, self.keys.applied, *args),
                "record the applied offsets",
            )
            return
        pipe = self._r.pipeline(transaction=False)
        pipe.eval(RAISE_APPLIED, 1, self.keys.applied, *args)
        if replicas:
            pipe.execute_command("WAIT", replicas, timeout_ms)
        replies = run(pipe, "record the applied offsets")
        if replicas and int(replies[-1]) < replicas:
            raise RedisError(
                f"{replies[-1]} of {replicas} Redis replicas acknowledged the batch's writes "
                f"within {timeout_ms} ms (SEGMENTER_REDIS_WAIT_REPLICAS); nothing is "
                "committed until they do"
            )
