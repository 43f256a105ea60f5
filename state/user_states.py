"""Users' state and public hash: ``seg:user:{id}`` (the fields campaign engines read) and
``seg:user:{id}:state`` (windows, applied offsets, de-duplication keys: a binary string).

A user's state, features, current segment and the input offsets that produced them are
written together by one script (:data:`FENCED_WRITE`) on the user's own keys, which Redis
applies atomically; so a replay after a crash finds the offsets beside the state they
produced and skips what was already applied. Membership sets
(``seg:segment:{n}:members``) are updated in the next pipeline, after the hashes.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from state.client import StoreBase, call, run
from stream.batch import UserUpdate
from stream.errors import RedisError
from stream.features import UserState, stored_features
from stream.messages import iso_ms
from stream.state_codec import decode_state, encode_state


def user_hash(
    update: UserUpdate, model_version: int, updated_at_ms: int, watermark_ms: int = 0
) -> dict[str | bytes, str | bytes]:
    """The public fields of ``seg:user:{id}`` for one update, all text (pure).

    The internal state goes to its own key (``seg:user:{id}:state``), so that readers who
    decode every reply as text can read the whole hash.
    """
    s = update.state
    fields: dict[str | bytes, str | bytes] = {
        "last_event_time": iso_ms(s.last_event_ms),
        # The event time the features are taken as of: the group's watermark, or the
        # user's own last event when that is later.
        "features_as_of": iso_ms(max(watermark_ms, s.last_event_ms)),
        "updated_at": iso_ms(updated_at_ms),
        "model_version": str(model_version),
    }
    if update.rfm is not None:
        fields["rfm"] = update.rfm.code
    if s.incomplete:
        fields["state_incomplete"] = "true"
    if s.segment is not None:
        fields["segment"] = str(s.segment)
        fields["segment_name"] = s.segment_name or ""
        fields["segment_since"] = iso_ms(s.segment_since_ms or s.last_event_ms)
    # Features go in one JSON field: one HGETALL still reads everything, and a write packs
    # eight fields instead of fifty. Counts are grouped by type, zeros left out
    # (stored_features).
    fields["features"] = orjson.dumps(stored_features(update.features)).decode()
    return fields


def fenced_write_args(
    update: UserUpdate, state: bytes, model_version: int, updated_at_ms: int, watermark_ms: int = 0
) -> list[str | bytes]:
    """ARGV of :data:`FENCED_WRITE` for one user: the offset pair count, the encoded
    ``state``, the offset pairs, then the other hash fields and ``_on`` (pure)."""
    offsets = update.state.offsets
    args: list[str | bytes] = [str(len(offsets)), state]
    for pos, off in offsets.items():
        args += [OFFSET_FIELD_PREFIX + pos, str(off)]
    for k, v in user_hash(update, model_version, updated_at_ms, watermark_ms).items():
        args += [k, v]
    args += [OFFSETS_KNOWN_FIELD, str(len(offsets))]
    return args


#: Prefix of the user-hash fields holding the last applied offset per input partition.
OFFSET_FIELD_PREFIX = "_o:"
#: Field holding how many input partitions the stored state has applied events from.
OFFSETS_KNOWN_FIELD = "_on"

#: Write a user's hash (KEYS[1]) and state (KEYS[2]) unless the stored state is newer than
#: the one written: a stored input offset is newer, or the stored state has applied input
#: from more partitions (``_on``) than the writer knew of (it read an older state).
#: ARGV: number of offset pairs, the state blob, the (field, offset) pairs, then the other
#: field/value pairs; the offset pairs are written too. Returns 1 when written, 0 when
#: fenced off. Both keys share the user's hash tag, so this works on a Redis Cluster too.
FENCED_WRITE = """
local n = tonumber(ARGV[1])
local known = redis.call('HGET', KEYS[1], '_on')
if known and tonumber(known) > n then
  return 0
end
for i = 0, n - 1 do
  local cur = redis.call('HGET', KEYS[1], ARGV[3 + 2 * i])
  if cur and tonumber(cur) > tonumber(ARGV[4 + 2 * i]) then
    return 0
  end
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 1
"""

#: The SHA1 :data:`FENCED_WRITE` is run by (``EVALSHA``).
FENCED_WRITE_SHA = hashlib.sha1(FENCED_WRITE.encode()).hexdigest()

#: :data:`FENCED_WRITE` for several users in one call, on a single server (where keys of
#: different users may meet in one script). KEYS: each user's hash and state, in turn;
#: ARGV: for each user, the number of its arguments, then :data:`FENCED_WRITE`'s ARGV.
#: Returns a 1 (written) or 0 (fenced off) per user. Each call saves Redis the work of
#: starting a script per user: about a fifth of its CPU per write, measured.
FENCED_WRITE_MANY = """
local out = {}
local a = 1
for u = 1, #KEYS / 2 do
  local hk, sk = KEYS[2 * u - 1], KEYS[2 * u]
  local nargs, n = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local ok = 1
  local known = redis.call('HGET', hk, '_on')
  if known and tonumber(known) > n then
    ok = 0
  else
    for i = 0, n - 1 do
      local cur = redis.call('HGET', hk, ARGV[a + 3 + 2 * i])
      if cur and tonumber(cur) > tonumber(ARGV[a + 4 + 2 * i]) then
        ok = 0
        break
      end
    end
  end
  if ok == 1 then
    redis.call('SET', sk, ARGV[a + 2])
    redis.call('HSET', hk, unpack(ARGV, a + 3, a + nargs))
  end
  out[u] = ok
  a = a + nargs + 1
end
return out
"""
FENCED_WRITE_MANY_SHA = hashlib.sha1(FENCED_WRITE_MANY.encode()).hexdigest()
#: Keys per ``MGET`` when reading users' states from a single server.
READ_CHUNK = 1000
#: Users per :data:`FENCED_WRITE_MANY` call: long enough to save the per-call work,
#: short enough that one call never holds Redis for more than about a millisecond.
WRITE_CHUNK = 64


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a batch write did: users written, users fenced off, membership moves."""

    written: int
    fenced: int
    moves: int
    #: The users whose writes were fenced off.
    fenced_users: frozenset[str] = frozenset()


def membership_moves(
    updates: Sequence[UserUpdate], fenced: Collection[str] = ()
) -> tuple[int, dict[int, list[str]], dict[int, list[str]]]:
    """The segment membership changes of a batch's updates (pure): how many moves, the
    users to add to each segment's set, and the users to remove from each.

    A user can have two updates in one batch (a change in doubt published again, then a
    new decision); only where they end up is added, and every segment they passed
    through is removed, so the removals and additions can go in any order.

    >>> from stream.features import UserState
    >>> a = UserUpdate("a", UserState(segment=2), {}, 1, None, None)
    >>> b = UserUpdate("b", UserState(segment=2), {}, None, None, None)
    >>> membership_moves([a, b])
    (2, {2: ['a', 'b']}, {1: ['a']})
    """
    final: dict[str, int] = {}
    left: dict[str, set[int]] = defaultdict(set)
    moves = 0
    for u in updates:
        if u.user_id in fenced:
            continue
        seg = u.republish_segment if not u.write else u.state.segment
        if seg is None or seg == u.previous_segment:
            continue
        if u.previous_segment is not None:
            left[u.user_id].add(u.previous_segment)
        final[u.user_id] = seg
        moves += 1
    added: dict[int, list[str]] = defaultdict(list)
    removed: dict[int, list[str]] = defaultdict(list)
    for uid, seg in final.items():
        added[seg].append(uid)
        for prev in sorted(left[uid] - {seg}):
            removed[prev].append(uid)
    return moves, dict(added), dict(removed)


def pack_commands(commands: Iterable[Sequence[str | bytes]]) -> bytes:
    r"""Commands in the Redis protocol (RESP), ready to send as one pipeline.

    >>> pack_commands([["SET", "k", b"v"], ["GET", "k"]])
    b'*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n'
    """
    out: list[bytes] = []
    add = out.append
    for args in commands:
        add(b"*%d\r\n" % len(args))
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            add(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def write_commands(
    calls: Sequence[tuple[str, str, list[str | bytes]]],
) -> list[list[str | bytes]]:
    """The :data:`FENCED_WRITE_MANY` calls for ``calls`` (user hash key, state key,
    :func:`fenced_write_args`), :data:`WRITE_CHUNK` users a call (pure).

    >>> cmds = write_commands([("h1", "s1", ["0", b"x"]), ("h2", "s2", ["0", b"y"])])
    >>> [c[2:] for c in cmds]
    [['4', 'h1', 's1', 'h2', 's2', '2', '0', b'x', '2', '0', b'y']]
    """
    sha = FENCED_WRITE_MANY_SHA.encode()
    commands: list[list[str | bytes]] = []
    for lo in range(0, len(calls), WRITE_CHUNK):
        keys: list[str | bytes] = []
        argv: list[str | bytes] = []
        for user_key, state_key, args in calls[lo : lo + WRITE_CHUNK]:
            keys += (user_key, state_key)
            argv.append(str(len(args)))
            argv += args
        commands.append([b"EVALSHA", sha, str(len(keys)), *keys, *argv])
    return commands


class UserStates(StoreBase):
    """Users' state and public hash: read in one round trip, written fenced by offset."""

    def load_states(self, user_ids: Sequence[str]) -> dict[str, UserState | None]:
        """Every listed user's stored state (``None`` for users never seen): one round trip.

        On a single server, :data:`READ_CHUNK` keys an ``MGET``: one command and one reply
        for many users, where a ``GET`` each costs the client more than decoding the state.
        A Cluster spreads users' keys over slots, so it reads them a ``GET`` each.
        """
        pipe = self._r.pipeline(transaction=False)
        keys = [self.keys.state(uid) for uid in user_ids]
        if self.cluster:
            for key in keys:
                pipe.get(key)
            raw = run(pipe, "read user states")
        else:
            for lo in range(0, len(keys), READ_CHUNK):
                pipe.mget(keys[lo : lo + READ_CHUNK])
            raw = [blob for chunk in run(pipe, "read user states") for blob in chunk]
        return {
            uid: None if blob is None else decode_state(blob)
            for uid, blob in zip(user_ids, raw, strict=True)
        }

    def write_updates(
        self,
        updates: Sequence[UserUpdate],
        model_version: int,
        now_ms: int,
        watermark_ms: int = 0,
    ) -> WriteResult:
        """Write the batch's user hashes, then the membership moves of those written.

        Each user's hash and state are written by :data:`FENCED_WRITE`, atomically with
        the input offsets that produced them, and only if no stored offset is newer: a
        process that lost a partition in a rebalance cannot overwrite what the new owner
        wrote. Two pipelined round trips in all, whatever the batch size.
        """
        calls: list[tuple[str, str, list[str | bytes]]] = []
        written: list[UserUpdate] = []
        for u in updates:
            if not u.write:
                continue
            args = fenced_write_args(u, encode_state(u.state), model_version, now_ms, watermark_ms)
            calls.append((self.keys.user(u.user_id), self.keys.state(u.user_id), args))
            written.append(u)
        accepted = self._fenced_writes(calls) if calls else []
        fenced = {u.user_id for u, ok in zip(written, accepted, strict=True) if not ok}

        moves, added, removed = membership_moves(updates, fenced)
        if moves:
            pipe = self._r.pipeline(transaction=False)
            # One command per segment: a set is one key, so this holds on a Cluster too.
            for seg, users in removed.items():
                pipe.srem(self.keys.members(seg), *users)
            for seg, users in added.items():
                pipe.sadd(self.keys.members(seg), *users)
            run(pipe, "update segment membership")
        return WriteResult(
            written=len(written) - len(fenced),
            fenced=len(fenced),
            moves=moves,
            fenced_users=frozenset(fenced),
        )

    def _fenced_writes(self, calls: list[tuple[str, str, list[str | bytes]]]) -> list[Any]:
        """Run :data:`FENCED_WRITE` for every (keys, args), pipelined; load it if missing.

        A server that restarted has forgotten the script, so NOSCRIPT is answered by
        loading it (on every primary) and running the pipeline once more.
        """
        for attempt in range(2):
            try:
                if self.cluster:
                    return self._fenced_writes_cluster(calls)
                return self._fenced_writes_packed(calls)
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
                for script in (FENCED_WRITE, FENCED_WRITE_MANY):
                    call(lambda s=script: self._r.script_load(s), "load the write scripts")
            except redis.RedisError as exc:
                raise RedisError(f"Redis failed to write user states: {exc}") from exc
        raise AssertionError("unreachable")

    def _fenced_writes_cluster(self, calls: list[tuple[str, str, list[str | bytes]]]) -> list[Any]:
        # EVALSHA as a raw command: redis-py's cluster pipeline has no script support.
        pipe = self._r.pipeline(transaction=False)
        for user_key, state_key, args in calls:
            pipe.execute_command("EVALSHA", FENCED_WRITE_SHA, 2, user_key, state_key, *args)
        return list(pipe.execute())

    def _fenced_writes_packed(self, calls: list[tuple[str, str, list[str | bytes]]]) -> list[Any]:
        """The batch's writes as one buffer of protocol bytes, and a reply per user.

        Users go :data:`WRITE_CHUNK` to a :data:`FENCED_WRITE_MANY` call. redis-py's
        pipeline spends about a microsecond per argument packing commands, and a user
        write has some twenty-five: this packs the whole batch in one pass instead
        (:func:`pack_commands`), for the one connection that carries it.
        """
        commands = write_commands(calls)
        buf = pack_commands(commands)
        pool = self._r.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([buf])
            replies: list[Any] = []
            error: redis.RedisError | None = None
            for _ in commands:
                try:
                    replies += conn.read_response(disconnect_on_error=False)
                except redis.exceptions.ResponseError as exc:
                    # Read every reply all the same, so the connection stays in step.
                    error = error or exc
            if error is not None:
                raise error
            return replies
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def read_user(self, user_id: str) -> dict[str, str] | None:
        raw = call(lambda: self._r.hgetall(self.keys.user(user_id)), "read a user")
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}
