"""Users' hash ``seg:user:{id}`` (the fields campaign engines read) and state (windows,
applied offsets, de-duplication keys): in the hash's ``_s`` field as base64 when short, as
most are, otherwise as bytes in ``seg:user:{id}:state``.

A user's state, features, current segment and the input offsets that produced them are
written together by one script (:data:`FENCED_WRITE`) on the user's own keys, which Redis
applies atomically; so a replay after a crash finds the offsets beside the state they
produced and skips what was already applied. Membership sets
(``seg:segment:{n}:members``) are updated in the next pipeline, after the hashes.
"""

from __future__ import annotations

import binascii
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
    update: UserUpdate, model_version: int, *, watermark_ms: int = 0
) -> dict[str | bytes, str | bytes]:
    """The public fields of ``seg:user:{id}`` for one update, all text (pure).

    The internal state is added beside them by :func:`fenced_write_args`.
    """
    s = update.state
    fields: dict[str | bytes, str | bytes] = {
        "last_event_time": iso_ms(s.last_event_ms),
        # The event time the features are taken as of: the group's watermark, or the
        # user's own last event when that is later.
        "features_as_of": iso_ms(max(watermark_ms, s.last_event_ms)),
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
    update: UserUpdate, state: bytes, model_version: int, *, watermark_ms: int = 0
) -> list[str | bytes]:
    """ARGV of :data:`FENCED_WRITE` for one user: the offset pair count, the encoded
    ``state`` as stored (:func:`stored_state`), the offset pairs, then the other hash
    fields and ``_on`` (pure)."""
    offsets = update.state.offsets
    args: list[str | bytes] = [str(len(offsets)), stored_state(state)]
    for pos, off in offsets.items():
        args += [OFFSET_FIELD_PREFIX + pos, str(off)]
    for k, v in user_hash(update, model_version, watermark_ms=watermark_ms).items():
        args += [k, v]
    args += [OFFSETS_KNOWN_FIELD, str(len(offsets))]
    return args


def stored_state(blob: bytes) -> bytes:
    """An encoded state (:func:`~stream.state_codec.encode_state`) as it is stored: in the
    user hash as base64 text when it is at most :data:`INLINE_STATE_MAX` bytes, otherwise
    as it is, for the state key (pure).

    Base64, so that readers who decode every reply as text can read the whole hash. A
    blob starts with its format byte, below 32, which base64 never does: so the write
    script and :func:`loaded_state` tell the two apart.

    >>> stored_state(b"\\x05\\xff"), loaded_state(stored_state(b"\\x05\\xff"))
    (b'Bf8=', b'\\x05\\xff')
    >>> big = b"\\x03" * (INLINE_STATE_MAX + 1)
    >>> stored_state(big) == big == loaded_state(big)
    True
    """
    if len(blob) > INLINE_STATE_MAX:
        return blob
    return binascii.b2a_base64(blob, newline=False)


def loaded_state(stored: bytes) -> bytes:
    """The encoded state in a value :func:`stored_state` made (its inverse)."""
    return stored if for_state_key(stored) else binascii.a2b_base64(stored)


def for_state_key(stored: bytes) -> bool:
    """Whether a value :func:`stored_state` made goes to the state key (raw bytes, which
    start with their format byte, below 32) rather than the user hash (pure)."""
    return bool(stored) and stored[0] < 32


#: Encoded states up to this many bytes are kept in the user hash (:data:`STATE_FIELD`),
#: longer ones in the state key. A key of its own costs Redis a fixed overhead, base64 a
#: third of the state's size. Measured (Redis 7.0, 64-bit): states of 200-256 bytes take
#: 35 bytes less in the hash, states of 448-512 bytes 81 bytes more. A user of one or two
#: events has a state of about 130 bytes.
INLINE_STATE_MAX = 256
#: Field of the user hash holding the internal state (:func:`stored_state`), or ``""``
#: when the state is in the state key.
STATE_FIELD = "_s"
#: Prefix of the user-hash fields holding the last applied offset per input partition.
OFFSET_FIELD_PREFIX = "_o:"
#: Field holding how many input partitions the stored state has applied events from.
OFFSETS_KNOWN_FIELD = "_on"

#: Write a user's hash (KEYS[1]) and state unless the stored state is newer than the one
#: written: a stored input offset is newer, or the stored state has applied input from
#: more partitions (``_on``) than the writer knew of (it read an older state).
#: ARGV: number of offset pairs, the state (:func:`stored_state`: base64 text goes to the
#: hash; raw bytes go to the state key, KEYS[2], and the hash's field is left empty), the
#: (field, offset) pairs, then the other field/value pairs; the offset pairs are written
#: too. Returns 1 when written, 0 when fenced off. Both keys share the user's hash tag, so
#: this works on a Redis Cluster too.
FENCED_WRITE = """
local n = tonumber(ARGV[1])
local fields = redis.call('HMGET', KEYS[1], '_on', '_s')
if fields[1] and tonumber(fields[1]) > n then
  return 0
end
for i = 0, n - 1 do
  local cur = redis.call('HGET', KEYS[1], ARGV[3 + 2 * i])
  if cur and tonumber(cur) > tonumber(ARGV[4 + 2 * i]) then
    return 0
  end
end
local state = ARGV[2]
if string.byte(state) < 32 then
  redis.call('SET', KEYS[2], state)
  state = ''
elseif fields[2] == '' then
  redis.call('DEL', KEYS[2])
end
redis.call('HSET', KEYS[1], '_s', state, unpack(ARGV, 3))
return 1
"""

#: The SHA1 :data:`FENCED_WRITE` is run by (``EVALSHA``).
FENCED_WRITE_SHA = hashlib.sha1(FENCED_WRITE.encode()).hexdigest()

#: :data:`FENCED_WRITE` for several users in one call, on a single server (where keys of
#: different users may meet in one script). KEYS: each user's hash and state key, in turn;
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
  local fields = redis.call('HMGET', hk, '_on', '_s')
  if fields[1] and tonumber(fields[1]) > n then
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
    local state = ARGV[a + 2]
    if string.byte(state) < 32 then
      redis.call('SET', sk, state)
      state = ''
    elseif fields[2] == '' then
      redis.call('DEL', sk)
    end
    redis.call('HSET', hk, '_s', state, unpack(ARGV, a + 3, a + nargs))
  end
  out[u] = ok
  a = a + nargs + 1
end
return out
"""
FENCED_WRITE_MANY_SHA = hashlib.sha1(FENCED_WRITE_MANY.encode()).hexdigest()
#: Every user's stored state (:func:`stored_state`), in order, ``false`` for none, in one
#: call (a single server has no multi-key ``HGET``). KEYS: each user's hash and state key,
#: in turn.
READ_STATES = """
local out = {}
for i = 1, #KEYS, 2 do
  local state = redis.call('HGET', KEYS[i], '_s')
  if state == '' then
    state = redis.call('GET', KEYS[i + 1])
  end
  out[#out + 1] = state
end
return out
"""
READ_STATES_SHA = hashlib.sha1(READ_STATES.encode()).hexdigest()
#: Users per :data:`READ_STATES` call when reading users' states from a single server.
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

        On a single server, :data:`READ_CHUNK` users a :data:`READ_STATES` call: one
        command and one reply for many users, where a command each costs the client more
        than decoding the state. A Cluster spreads users over slots, so it reads them an
        ``HGET`` each, and a ``GET`` each for states kept in the state key.
        """
        if self.cluster:
            raw = self._read_states_cluster(user_ids)
        else:
            raw = self._read_states(user_ids)
        return {
            uid: decode_state(loaded_state(stored)) if stored else None
            for uid, stored in zip(user_ids, raw, strict=True)
        }

    def _read_states(self, user_ids: Sequence[str]) -> list[bytes | None]:
        keys = [k for uid in user_ids for k in (self.keys.user(uid), self.keys.state(uid))]
        for attempt in range(2):
            pipe = self._r.pipeline(transaction=False)
            for lo in range(0, len(keys), 2 * READ_CHUNK):
                chunk = keys[lo : lo + 2 * READ_CHUNK]
                pipe.evalsha(READ_STATES_SHA, len(chunk), *chunk)
            try:
                return [stored for reply in run(pipe, "read user states") for stored in reply]
            except RedisError as exc:
                # A server that restarted has forgotten the script: load it, read again.
                if attempt or not isinstance(exc.__cause__, redis.exceptions.NoScriptError):
                    raise
                call(lambda: self._r.script_load(READ_STATES), "load the read script")
        raise AssertionError("unreachable")

    def _read_states_cluster(self, user_ids: Sequence[str]) -> list[bytes | None]:
        pipe = self._r.pipeline(transaction=False)
        for uid in user_ids:
            pipe.hget(self.keys.user(uid), STATE_FIELD)
        raw = run(pipe, "read user states")
        in_key = [i for i, stored in enumerate(raw) if stored == b""]
        if in_key:
            pipe = self._r.pipeline(transaction=False)
            for i in in_key:
                pipe.get(self.keys.state(user_ids[i]))
            for i, stored in zip(in_key, run(pipe, "read user states"), strict=True):
                raw[i] = stored
        return raw

    def write_updates(
        self,
        updates: Sequence[UserUpdate],
        model_version: int,
        watermark_ms: int,
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
            state = encode_state(u.state)
            args = fenced_write_args(u, state, model_version, watermark_ms=watermark_ms)
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
