"""The Redis key layout: the contract campaign engines read.

Braces are literal: they make Redis Cluster hash tags, so each user's keys live in one
hash slot, and each segment's membership set in one slot of its own.

>>> k = Keys("seg:")
>>> k.user("u1"), k.state("u1"), k.members(3), k.segments, k.model
('seg:user:{u1}', 'seg:user:{u1}:state', 'seg:segment:{3}:members', 'seg:segments', 'seg:model')
>>> k.timers(2), k.timer_bucket(2, "u1"), k.watermark, k.sample
('seg:timers:{2}', 'seg:timers:{2}:3958', 'seg:watermark', 'seg:model:sample')
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

#: Timer buckets per input partition (see :meth:`Keys.timer_bucket`).
TIMER_BUCKETS = 4096


def timer_bucket_index(user_id: str) -> int:
    """Which of a partition's :data:`TIMER_BUCKETS` timer buckets holds ``user_id``."""
    return zlib.crc32(user_id.encode()) % TIMER_BUCKETS


@dataclass(frozen=True, slots=True)
class Keys:
    """Builds every key under one prefix (default ``seg:``)."""

    prefix: str = "seg:"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}user:{{{user_id}}}"

    def state(self, user_id: str) -> str:
        """The user's internal state (windows, offsets, de-dup keys): a binary string."""
        return f"{self.prefix}user:{{{user_id}}}:state"

    def members(self, segment: int) -> str:
        return f"{self.prefix}segment:{{{segment}}}:members"

    @property
    def segments(self) -> str:
        return f"{self.prefix}segments"

    @property
    def model(self) -> str:
        return f"{self.prefix}model"

    @property
    def model_versions(self) -> str:
        return f"{self.prefix}model:versions"

    @property
    def reservoir(self) -> str:
        return f"{self.prefix}model:reservoir"

    @property
    def reassess(self) -> str:
        return f"{self.prefix}model:reassess"

    @property
    def sample(self) -> str:
        """The uniform sample of users seeds and refits are made on: slot -> user id."""
        return f"{self.prefix}model:sample"

    @property
    def users_seen(self) -> str:
        """How many users the sample was drawn from (a counter)."""
        return f"{self.prefix}model:users"

    def timers(self, partition: int) -> str:
        """The index of one input partition's timer buckets: bucket -> a due time at or
        before the earliest in the bucket."""
        return f"{self.prefix}timers:{{{partition}}}"

    def timers_swept(self, partition: int) -> str:
        """The model epoch under which every timer of one input partition was last brought
        forward, so that the sweep re-decided all its users (a number, as text)."""
        return f"{self.prefix}timers:{{{partition}}}:swept"

    def timer_bucket(self, partition: int, user_id: str) -> str:
        """The bucket holding the event-time timer of ``user_id`` (user id -> due time).

        A partition's timers are spread over :data:`TIMER_BUCKETS` small sorted sets by
        a hash of the user id: up to about half a million users per partition each
        stays under Redis's ``zset-max-listpack-entries`` (128), in the compact encoding
        that takes about 24 bytes a timer, where one large sorted set takes 112.
        """
        return self.timer_bucket_of(partition, timer_bucket_index(user_id))

    def timer_bucket_of(self, partition: int, bucket: int | str) -> str:
        """Bucket ``bucket`` of ``partition``'s timers."""
        return f"{self.prefix}timers:{{{partition}}}:{bucket}"

    @property
    def applied(self) -> str:
        """Each input partition's offset below which Redis holds every write:
        ``topic:partition`` -> offset, and the key space's identity in field ``_epoch``
        (:mod:`state.applied_offsets`)."""
        return f"{self.prefix}applied"

    @property
    def watermark(self) -> str:
        """Each input partition's highest event time: ``topic:partition`` -> clock."""
        return f"{self.prefix}watermark"
