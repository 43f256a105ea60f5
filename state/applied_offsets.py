"""How far Redis holds every write: ``seg:applied``.

``seg:applied`` maps each input partition (``topic:partition``) to the offset below which
every batch's writes are in Redis. It is raised after a batch's user writes and before its
offsets are committed, so in a Redis that kept what it acknowledged it is never below the
consumer group's committed offset. A Redis that restarted without persistence, or a
replica promoted before it received the last writes, holds less: its ``seg:applied`` is
lower than the committed offset, or gone. Redis replicates and persists commands in the
order it ran them, so a server that has an offset in ``seg:applied`` also has every write
made before it.

Its field ``_epoch`` is a random identity written once when a key space is first used.
The consumer group's committed offsets carry the epoch they were committed against (see
:func:`stream.state_gaps.commit_metadata`), so a key space replaced by another (emptied,
or a different server) is told from one that merely lost its last writes. The script
that raises the offsets refuses to unless the epoch is the one the batch began with: a
Redis that restarted empty in the middle of a batch never records offsets it does not
hold. Both live in one key, so the same holds on a Redis Cluster.

On a Redis Cluster, shards fail over one by one: a shard that lost its last writes while
the one holding ``seg:applied`` did not goes unnoticed.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

from state.client import StoreBase, call, run
from stream.errors import RedisError, StateLostError

#: The field of ``seg:applied`` that holds the key space's epoch.
EPOCH_FIELD = "_epoch"

#: If field EPOCH_FIELD of hash KEYS[1] is ARGV[1], raise each field ARGV[i] to offset
#: ARGV[i + 1] (never lower it: a batch replayed after a failure writes an offset already
#: there) and return 1; otherwise change nothing and return 0.
RAISE_APPLIED = f"""
if redis.call('HGET', KEYS[1], '{EPOCH_FIELD}') ~= ARGV[1] then
  return 0
end
for i = 2, #ARGV, 2 do
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
        pipe.hsetnx(self.keys.applied, EPOCH_FIELD, fresh)
        pipe.hget(self.keys.applied, EPOCH_FIELD)
        _, got = run(pipe, "read the key space's epoch")
        return got.decode() if isinstance(got, bytes) else str(got)

    def read_applied(self, positions: Iterable[str]) -> tuple[str | None, dict[str, int]]:
        """The epoch (``None``: the key space has none) and, of ``positions``, those with an
        applied offset, in one round trip."""
        wanted = list(positions)
        values = call(
            lambda: self._r.hmget(self.keys.applied, [EPOCH_FIELD, *wanted]),
            "read the applied offsets",
        )
        epoch = values[0].decode() if values[0] is not None else None
        held = {pos: int(v) for pos, v in zip(wanted, values[1:], strict=True) if v is not None}
        return epoch, held

    def raise_applied(
        self, offsets: Mapping[str, int], epoch: str, wait: tuple[int, int] = (0, 0)
    ) -> None:
        """Record that Redis holds every write below ``offsets`` (position -> offset), if
        its key space is still the one of ``epoch``; raise :class:`StateLostError` if not.

        ``wait``: ``(replicas, timeout_ms)``: then also wait until that many replicas
        acknowledged every write so far (Redis ``WAIT``, on the connection that made this
        last write: replication is one ordered stream, so the batch's earlier writes are
        acknowledged with it), and raise :class:`RedisError` if fewer did in time.
        """
        replicas, timeout_ms = wait
        args: list[str | int] = [epoch]
        for pos, off in offsets.items():
            args += [pos, off]
        if self.cluster:
            # A cluster pipeline runs no scripts, and WAIT is not asked of a cluster.
            replies = [
                call(
                    lambda: self._r.eval(RAISE_APPLIED, 1, self.keys.applied, *args),
                    "record the applied offsets",
                )
            ]
        else:
            pipe = self._r.pipeline(transaction=False)
            pipe.eval(RAISE_APPLIED, 1, self.keys.applied, *args)
            if replicas:
                pipe.execute_command("WAIT", replicas, timeout_ms)
            replies = run(pipe, "record the applied offsets")
        if int(replies[0]) != 1:
            raise StateLostError(
                f"Redis's key space changed during the batch (epoch {epoch} gone): it lost "
                "its data; rebuilding from Kafka"
            )
        if replicas and int(replies[-1]) < replicas:
            raise RedisError(
                f"{replies[-1]} of {replicas} Redis replicas acknowledged the batch's writes "
                f"within {timeout_ms} ms (SEGMENTER_REDIS_WAIT_REPLICAS); nothing is "
                "committed until they do"
            )
