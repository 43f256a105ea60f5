"""The reassessment queue: ``seg:model:reassess``, user id -> ``version:token``, the users
to decide without an event of theirs (:mod:`stream.reassessment`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from state.client import StoreBase, call
from stream.reassessment import TOKEN_BITS, QueueEntry

#: Queue users (ARGV[2], ARGV[4], ...) in the reassessment hash KEYS[1] from model version
#: ARGV[1] on, each with the fresh token after it; a user already queued keeps their token
#: and has their version raised. Returns how many users were not queued before.
QUEUE_USERS = """
local version = tonumber(ARGV[1])
local added = 0
for i = 2, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur then
    local v, t = string.match(cur, '^(%d+):(%d+)$')
    if v and tonumber(v) < version then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. ':' .. t)
    end
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. ':' .. ARGV[i + 1])
    added = added + 1
  end
end
return added
"""

#: For each (user, token, up-to version, fresh token) in ARGV: if the user's entry in
#: KEYS[1] still holds the token, remove it when its version is at most the up-to version,
#: else give it the fresh token. Returns how many entries were removed.
SETTLE_USERS = """
local removed = 0
for i = 1, #ARGV, 4 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  if cur then
    local v, t = string.match(cur, '^(%d+):(%d+)$')
    if t == ARGV[i + 1] then
      if tonumber(v) <= tonumber(ARGV[i + 2]) then
        redis.call('HDEL', KEYS[1], ARGV[i])
        removed = removed + 1
      else
        redis.call('HSET', KEYS[1], ARGV[i], v .. ':' .. ARGV[i + 3])
      end
    end
  end
end
return removed
"""


class ReassessQueue(StoreBase):
    """Users queued for a decision without an event of theirs."""

    def queue(self, user_ids: Sequence[str], version: int) -> int:
        """Queue users for a decision without an event of theirs, from model ``version``
        on (:mod:`stream.reassessment`); returns how many were not queued already.

        A user already queued keeps the token of their entry, so an assignment whose
        commit is in doubt is still recognised; their entry's version is raised to
        ``version`` if it is lower.
        """
        if not user_ids:
            return 0
        args: list[str] = [str(version)]
        for uid in user_ids:
            args += [uid, str(_token())]
        n = call(
            lambda: self._r.eval(QUEUE_USERS, 1, self.keys.reassess, *args), "queue users to assess"
        )
        return int(n)

    def queue_entries(self, user_ids: Sequence[str]) -> dict[str, QueueEntry]:
        """The queue entries of those of ``user_ids`` that are queued (one round trip)."""
        if not user_ids:
            return {}
        raw = call(lambda: self._r.hmget(self.keys.reassess, list(user_ids)), "read queued users")
        entries = {uid: QueueEntry.parse(v) for uid, v in zip(user_ids, raw, strict=True)}
        return {uid: e for uid, e in entries.items() if e is not None}

    def reassess_batch(self, count: int) -> dict[str, QueueEntry]:
        """Up to ``count`` queued users, picked at random, with their entries (they stay
        queued until :meth:`settle` removes them)."""
        raw = call(
            lambda: self._r.hrandfield(self.keys.reassess, count, withvalues=True),
            "read users to assess",
        )
        out: dict[str, QueueEntry] = {}
        for uid, value in zip(raw[::2], raw[1::2], strict=True):
            entry = QueueEntry.parse(value)
            if entry is not None:
                out[uid.decode()] = entry
        return out

    def settle(self, settled: Mapping[str, tuple[QueueEntry, int]]) -> int:
        """After a batch committed: remove each entry still holding the token it was
        decided with, if its version is at most the given one; give the others a fresh
        token (:func:`stream.reassessment.settlement`). Returns how many were removed."""
        if not settled:
            return 0
        args: list[str] = []
        for uid, (entry, upto) in settled.items():
            args += [uid, str(entry.token), str(upto), str(_token())]
        n = call(
            lambda: self._r.eval(SETTLE_USERS, 1, self.keys.reassess, *args),
            "settle queued users",
        )
        return int(n)

    def queue_length(self) -> int:
        return int(call(lambda: self._r.hlen(self.keys.reassess), "count queued users"))

    def queue_members(self, segments: Sequence[int], version: int, chunk: int = 1000) -> int:
        """Queue every member of ``segments`` (retired at model ``version``) to move; returns
        how many were not queued already."""
        queued = 0
        for seg in segments:
            cursor = 0
            while True:
                cursor, found = call(
                    lambda seg=seg, cursor=cursor: self._r.sscan(
                        self.keys.members(seg), cursor, count=chunk
                    ),
                    "list the members of a retired segment",
                )
                queued += self.queue([m.decode() for m in found], version)
                if not cursor:
                    break
        return queued


def _token() -> int:
    return secrets.randbits(TOKEN_BITS)
