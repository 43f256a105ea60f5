"""Reads and writes of segmenter state in Redis, batched into one round trip each.

A user's state, features, current segment and the input offsets that produced them are
written with one ``HSET`` on the user's own hash, which Redis applies atomically; so a
replay after a crash finds the offsets beside the state they produced and skips what was
already applied. Membership sets are updated in the same pipeline, after the hash.
"""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import redis
from redis.cluster import RedisCluster

from state.keys import Keys
from stream.batch import UserUpdate
from stream.checkpoint import check
from stream.errors import ModelError, RedisError
from stream.features import UserState, compute_features, stored_features
from stream.messages import iso_ms
from stream.naming import SegmentProfile
from stream.reassessment import TOKEN_BITS, QueueEntry
from stream.scaling import MODEL_FEATURES, to_vector
from stream.settings import Settings
from stream.state_codec import decode_state, encode_state
from stream.watermark import PartitionClock


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
    if s.segment is not None:
        fields["segment"] = str(s.segment)
        fields["segment_name"] = s.segment_name or ""
        fields["segment_since"] = iso_ms(s.segment_since_ms or s.last_event_ms)
    # Features go in one JSON field: one HGETALL still reads everything, and a write packs
    # eight fields instead of fifty. Zero window counts are left out (stored_features).
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


#: ``hash-max-listpack-value`` at which user hashes stay in Redis's compact encoding.
RECOMMENDED_LISTPACK_VALUE = 1024

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


#: Set the model checkpoint (KEYS[1]) to ARGV[2] only if the stored one is after merge
#: ARGV[1] (0: no checkpoint yet). Returns 1 when written, 0 when another write came first.
#: Checkpoints are written with ``merges`` as their first field (:func:`_model_blob`), so
#: the script reads it without decoding the whole document.
MODEL_CAS = """
local cur = redis.call('GET', KEYS[1])
local v = 0
if cur then v = tonumber(string.match(cur, '^{"merges":(%d+),')) end
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
_CAS_ATTEMPTS = 20

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

#: Move up to ARGV[2] timers of KEYS[1] due after ARGV[1] to ARGV[1]; return how many.
MAKE_DUE = """
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
for _, member in ipairs(later) do
  redis.call('ZADD', KEYS[1], ARGV[1], member)
end
return #later
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


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a batch write did: users written, users fenced off, membership moves."""

    written: int
    fenced: int
    moves: int
    #: The users whose writes were fenced off.
    fenced_users: frozenset[str] = frozenset()


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


class RedisStore:
    """The segmenter's Redis: user states, membership, catalogue, model checkpoint."""

    def __init__(
        self,
        url: str,
        prefix: str = "seg:",
        socket_timeout: float = 10.0,
        cluster: bool = False,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.cluster = cluster
        # options: redis-py connection arguments (credentials, TLS) the URL leaves out.
        opts = {"socket_timeout": socket_timeout, "socket_connect_timeout": 5.0, **(options or {})}
        # Every write touches one user's keys (one hash slot) or one segment's set, so the
        # same pipelines work on one server and on a Redis Cluster.
        self._r: Any = (
            RedisCluster.from_url(url, **opts) if cluster else redis.Redis.from_url(url, **opts)
        )
        self._script_sha = hashlib.sha1(FENCED_WRITE.encode()).hexdigest()

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStore:
        """The store the settings describe: the URL, plus the user name, password and TLS
        CA file of ``redis_username``, ``redis_password`` and ``redis_tls_ca_file``."""
        options = {
            name: value
            for name, value in (
                ("username", settings.redis_username),
                ("password", settings.redis_password),
                ("ssl_ca_certs", settings.redis_tls_ca_file),
            )
            if value
        }
        return cls(
            settings.redis_url,
            settings.redis_prefix,
            cluster=settings.redis_cluster,
            options=options,
        )

    @property
    def client(self) -> Any:
        return self._r

    def ping(self) -> None:
        """Check Redis answers; raise a readable :class:`RedisError` if not."""
        try:
            self._r.ping()
        except redis.AuthenticationError as exc:
            raise RedisError(
                f"Redis at {_safe(self.url)} refused the credentials ({exc}). Check "
                "SEGMENTER_REDIS_USERNAME and SEGMENTER_REDIS_PASSWORD (or the URL's)."
            ) from None
        except redis.RedisError as exc:
            hint = (
                "Check the server's certificate against SEGMENTER_REDIS_TLS_CA_FILE."
                if "SSL" in str(exc)
                else "Start Redis (segmenter devstack up) or point SEGMENTER_REDIS_URL at a "
                "running server."
            )
            raise RedisError(f"cannot reach Redis at {_safe(self.url)} ({exc}). {hint}") from None

    def encoding_advice(self) -> str | None:
        """A sentence for the operator if user hashes will take more memory than needed.

        User hashes hold values of a few hundred bytes (the state and the features), so
        with Redis's default ``hash-max-listpack-value`` of 64 they are kept as hash
        tables, about a third larger than the compact listpack encoding. Servers that do
        not allow ``CONFIG GET`` (some managed services) give no advice.
        """
        try:
            raw = self._r.config_get("hash-max-listpack-value")
        except redis.RedisError:
            return None
        values = [int(v) for k, v in raw.items() if "listpack-value" in str(k)]
        if not values or min(values) >= RECOMMENDED_LISTPACK_VALUE:
            return None
        return (
            f"Redis has hash-max-listpack-value {min(values)}: user hashes will be kept as "
            "hash tables, about a third more memory per user. Set it to "
            f"{RECOMMENDED_LISTPACK_VALUE} (redis.conf or CONFIG SET) to keep them compact."
        )

    def load_states(self, user_ids: Sequence[str]) -> dict[str, UserState | None]:
        """Every listed user's stored state (``None`` for users never seen): one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for uid in user_ids:
            pipe.get(self.keys.state(uid))
        raw = _run(pipe, "read user states")
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

        pipe = self._r.pipeline(transaction=False)
        moves = 0
        for u in updates:
            if u.user_id in fenced:
                continue
            seg = u.republish_segment if not u.write else u.state.segment
            if seg is None or seg == u.previous_segment:
                continue
            if u.previous_segment is not None:
                pipe.srem(self.keys.members(u.previous_segment), u.user_id)
            pipe.sadd(self.keys.members(seg), u.user_id)
            moves += 1
        if moves:
            _run(pipe, "update segment membership")
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
                _call(lambda: self._r.script_load(FENCED_WRITE), "load the write script")
            except redis.RedisError as exc:
                raise RedisError(f"Redis failed to write user states: {exc}") from exc
        raise AssertionError("unreachable")

    def _fenced_writes_cluster(self, calls: list[tuple[str, str, list[str | bytes]]]) -> list[Any]:
        # EVALSHA as a raw command: redis-py's cluster pipeline has no script support.
        pipe = self._r.pipeline(transaction=False)
        for user_key, state_key, args in calls:
            pipe.execute_command("EVALSHA", self._script_sha, 2, user_key, state_key, *args)
        return list(pipe.execute())

    def _fenced_writes_packed(self, calls: list[tuple[str, str, list[str | bytes]]]) -> list[Any]:
        """The batch's scripts as one buffer of protocol bytes, and their replies.

        redis-py's pipeline spends about a microsecond per argument packing commands, and
        a user write has some twenty-five: this packs the whole batch in one pass instead
        (:func:`pack_commands`), for the one connection that carries it.
        """
        sha = self._script_sha.encode()
        buf = pack_commands(
            [b"EVALSHA", sha, b"2", user_key, state_key, *args]
            for user_key, state_key, args in calls
        )
        pool = self._r.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([buf])
            replies: list[Any] = []
            error: redis.RedisError | None = None
            for _ in calls:
                try:
                    replies.append(conn.read_response(disconnect_on_error=False))
                except redis.exceptions.ResponseError as exc:
                    # Read every reply all the same, so the connection stays in step.
                    error = error or exc
                    replies.append(exc)
            if error is not None:
                raise error
            return replies
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def segment_sizes(self, segments: Sequence[int]) -> list[int]:
        pipe = self._r.pipeline(transaction=False)
        for i in segments:
            pipe.scard(self.keys.members(i))
        return [int(x) for x in _run(pipe, "count segment members")]

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
            k for k in _run(pipe, "write the segment catalogue")[-1] if k.decode() not in entries
        ]
        if stale:
            # Retired segments leave the catalogue (their lineage is in the model's events).
            _call(lambda: self._r.hdel(self.keys.segments, *stale), "trim the segment catalogue")

    def read_catalogue(self) -> list[dict[str, Any]]:
        raw = _call(lambda: self._r.hgetall(self.keys.segments), "read the segment catalogue")
        return sorted((orjson.loads(v) for v in raw.values()), key=lambda e: e["segment"])

    def read_user(self, user_id: str) -> dict[str, str] | None:
        raw = _call(lambda: self._r.hgetall(self.keys.user(user_id)), "read a user")
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    def members(self, segment: int, count: int = 100) -> list[str]:
        it = self._r.sscan_iter(self.keys.members(segment), count=count)
        return [m.decode() for m, _ in zip(it, range(count), strict=False)]

    # -- the shared model --------------------------------------------------------------

    def load_model(self) -> dict[str, Any] | None:
        """The current checkpoint (``seg:model``), or ``None`` before the first one."""
        blob = _call(lambda: self._r.get(self.keys.model), "load the model checkpoint")
        return None if blob is None else _decode_model(blob, self.keys.model)

    def commit_model(
        self,
        build: Callable[[dict[str, Any] | None], tuple[dict[str, Any], list[dict[str, Any]]]],
        history_every_ms: int,
        now_ms: int,
        keep: int = 50,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Read the checkpoint, ``build`` the next one from it, write it under a version fence.

        The write succeeds only if the stored checkpoint is still the one read (its merge
        count, checked by :data:`MODEL_CAS` inside Redis); otherwise another process
        committed first, and the checkpoint is read and built again. A newly published
        version also goes to the history (``seg:model:versions``, last ``keep`` kept) when
        it changed the segments or when the newest kept one is ``history_every_ms`` old.
        """
        for _ in range(_CAS_ATTEMPTS):
            current = self.load_model()
            expected = 0 if current is None else int(current["merges"])
            doc, events = build(current)
            last = int((current or {}).get("history_at_ms", 0))
            new_version = doc["version"] != (current or {}).get("version", 0)
            keep_it = new_version and (bool(events) or now_ms - last >= history_every_ms)
            doc["saved_at_ms"] = now_ms
            doc["history_at_ms"] = now_ms if keep_it else last
            blob = _model_blob(doc)
            ok = _call(
                lambda blob=blob, expected=expected: self._r.eval(
                    MODEL_CAS, 1, self.keys.model, str(expected), blob
                ),
                "write the model checkpoint",
            )
            if int(ok) == 1:
                if keep_it:
                    self._keep_version(doc["version"], blob, keep)
                return doc, events
        raise ModelError(
            f"the model checkpoint changed under {_CAS_ATTEMPTS} merges in a row; "
            "too many processes sync at once (raise SEGMENTER_MODEL_SYNC_INTERVAL_S)"
        )

    def _keep_version(self, version: int, blob: bytes, keep: int) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.hset(self.keys.model_versions, str(version), blob)
        pipe.hkeys(self.keys.model_versions)
        versions = sorted(int(v) for v in _run(pipe, "keep a model version")[-1])
        if len(versions) > keep:
            old = [str(v) for v in versions[: len(versions) - keep]]
            _call(lambda: self._r.hdel(self.keys.model_versions, *old), "trim model versions")

    def model_versions(self) -> list[dict[str, Any]]:
        """Every kept version: version, when saved, updates learned, rolled back from."""
        raw = _call(lambda: self._r.hgetall(self.keys.model_versions), "list model versions")
        out = []
        for blob in raw.values():
            d = orjson.loads(blob)
            out.append(
                {
                    "version": d["version"],
                    "epoch": d.get("epoch"),
                    "saved_at_ms": d.get("saved_at_ms"),
                    "updates": d.get("updates"),
                    "ready": d.get("ready"),
                    "segments": d.get("ids"),
                    "rolled_back_from": d.get("rolled_back_from"),
                }
            )
        return sorted(out, key=lambda v: v["version"])

    def model_version(self, version: int) -> dict[str, Any]:
        """Kept version ``version`` of the checkpoint."""
        blob = _call(
            lambda: self._r.hget(self.keys.model_versions, str(version)), "read a model version"
        )
        if blob is None:
            raise ModelError(f"there is no model version {version}; see: segmenter model versions")
        return _decode_model(blob, self.keys.model_versions)

    # -- the user sample and its snapshot ----------------------------------------------

    def sample_users(self, new_users: Sequence[str], size: int, rng: random.Random) -> int:
        """Offer users seen for the first time to the uniform sample of ``size`` users
        (reservoir sampling over users, not events); returns the sample's size.

        The n-th user ever seen replaces a random slot with probability ``size / n``, so
        every user is in the sample with the same chance, however often they shop.
        """
        if not new_users:
            return self.sample_size()
        total = int(
            _call(
                lambda: self._r.incrby(self.keys.users_seen, len(new_users)),
                "count users seen",
            )
        )
        slots: dict[str, str] = {}
        for i, uid in enumerate(new_users, start=total - len(new_users) + 1):
            slot = i - 1 if i <= size else rng.randrange(i)
            if slot < size:
                slots[str(slot)] = uid
        pipe = self._r.pipeline(transaction=False)
        if slots:
            pipe.hset(self.keys.sample, mapping=slots)
        pipe.hlen(self.keys.sample)
        return int(_run(pipe, "add to the user sample")[-1])

    def sample_size(self) -> int:
        return int(_call(lambda: self._r.hlen(self.keys.sample), "read the user sample"))

    def sampled_users(self) -> list[str]:
        raw = _call(lambda: self._r.hvals(self.keys.sample), "read the user sample")
        return sorted({u.decode() for u in raw})

    def snapshot(
        self,
        watermark_ms: int,
        rfm_horizon: str = "365d",
        limit: int | None = None,
        used: tuple[str, ...] = MODEL_FEATURES,
    ) -> np.ndarray:
        """One model vector per sampled user, as of ``watermark_ms``: what seeds and refits
        are made on (rows in user id order; the first ``limit`` users only, if given;
        ``used``: the model's features)."""
        users = self.sampled_users()[:limit]
        states = self.load_states(users) if users else {}
        rows = [
            to_vector(compute_features(st, watermark_ms, rfm_horizon), used)
            for _, st in sorted(states.items())
            if st is not None
        ]
        return np.stack(rows) if rows else np.empty((0, len(MODEL_FEATURES)))

    # -- event-time timers ----------------------------------------------------------------

    def timer_due(self, users: Mapping[str, int]) -> dict[str, int]:
        """The due times of the timers of ``users`` (user -> input partition) that have one."""
        if not users:
            return {}
        pipe = self._r.pipeline(transaction=False)
        for uid, part in users.items():
            pipe.zscore(self.keys.timers(part), uid)
        raw = _run(pipe, "read user timers")
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
        for rows in _run(pipe, "read due timers"):
            for uid, due in rows:
                out[uid.decode()] = int(due)
        return out

    def timers_due_count(self, partitions: Iterable[int], until_ms: int) -> int:
        """How many users of ``partitions`` are due at or before ``until_ms`` (the sweep's
        backlog)."""
        pipe = self._r.pipeline(transaction=False)
        for part in sorted(partitions):
            pipe.zcount(self.keys.timers(part), "-inf", until_ms)
        return sum(int(n) for n in _run(pipe, "count due timers"))

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
        _run(pipe, "set user timers")

    def make_due(self, partitions: Iterable[int], due_ms: int, chunk: int = 10_000) -> int:
        """Bring every timer of ``partitions`` due later than ``due_ms`` forward to it, so
        the sweep re-decides every user (after the model's segments changed); returns how
        many timers moved. Runs in chunks, so Redis is never blocked for long."""
        moved = 0
        for part in sorted(partitions):
            while True:
                n = int(
                    _call(
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

    # -- the shared watermark -------------------------------------------------------------

    def share_watermark(self, moved: Mapping[str, PartitionClock]) -> dict[str, PartitionClock]:
        """Report the partition clocks that moved here (kept only where higher than the
        stored ones) and return every partition's clock."""
        args: list[str] = []
        for pos, clock in moved.items():
            args += [pos, str(clock.max_event_ms), clock.encode()]
        raw = _call(
            lambda: self._r.eval(SHARE_WATERMARK, 1, self.keys.watermark, *args),
            "share the watermark",
        )
        out: dict[str, PartitionClock] = {}
        for pos, value in zip(raw[::2], raw[1::2], strict=True):
            parsed = PartitionClock.parse(value)
            if parsed is not None:
                out[pos.decode()] = parsed
        return out

    # -- users to (re)assess ------------------------------------------------------------

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
        n = _call(
            lambda: self._r.eval(QUEUE_USERS, 1, self.keys.reassess, *args), "queue users to assess"
        )
        return int(n)

    def queue_entries(self, user_ids: Sequence[str]) -> dict[str, QueueEntry]:
        """The queue entries of those of ``user_ids`` that are queued (one round trip)."""
        if not user_ids:
            return {}
        raw = _call(lambda: self._r.hmget(self.keys.reassess, list(user_ids)), "read queued users")
        entries = {uid: QueueEntry.parse(v) for uid, v in zip(user_ids, raw, strict=True)}
        return {uid: e for uid, e in entries.items() if e is not None}

    def reassess_batch(self, count: int) -> dict[str, QueueEntry]:
        """Up to ``count`` queued users, picked at random, with their entries (they stay
        queued until :meth:`settle` removes them)."""
        raw = _call(
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
        n = _call(
            lambda: self._r.eval(SETTLE_USERS, 1, self.keys.reassess, *args),
            "settle queued users",
        )
        return int(n)

    def queue_length(self) -> int:
        return int(_call(lambda: self._r.hlen(self.keys.reassess), "count queued users"))

    def queue_members(self, segments: Sequence[int], version: int, chunk: int = 1000) -> int:
        """Queue every member of ``segments`` (retired at model ``version``) to move; returns
        how many were not queued already."""
        queued = 0
        for seg in segments:
            cursor = 0
            while True:
                cursor, found = _call(
                    lambda seg=seg, cursor=cursor: self._r.sscan(
                        self.keys.members(seg), cursor, count=chunk
                    ),
                    "list the members of a retired segment",
                )
                queued += self.queue([m.decode() for m in found], version)
                if not cursor:
                    break
        return queued

    # -- erasure ---------------------------------------------------------------------------

    def forget(self, user_id: str) -> Erasure:
        """Remove user ``user_id`` from everything the segmenter keeps in Redis; idempotent.

        ``user_id`` is the id as stored: the pseudonym when ids are pseudonymised. Removed:
        the user hash, the state key (windows, applied offsets, de-duplication keys, last
        change published), the user's membership of every segment the model ever gave out
        (current and retired ones), their entry in the reassessment queue, their
        event-time timer and their slot in the model's user sample. Nothing else holds a
        user id: the model and the catalogue hold aggregates.

        On one server it is one ``MULTI``/``EXEC`` transaction: readers see the user whole
        or not at all. On a Redis Cluster the membership sets and the queue live in other
        hash slots than the user's keys, so no transaction spans them: the memberships and
        the queue entry go first, the state key next and the user hash last. The hash
        names the current segment, so if anything fails half-way, running ``forget`` again
        finds the rest and finishes the job.

        A batch of the segmenter that read the user's state before this call may still
        write it back after it: see :func:`consumers.forget.forget_user`, which checks.
        """
        k = self.keys
        user_key, state_key = k.user(user_id), k.state(user_id)
        segment = _call(lambda: self._r.hget(user_key, "segment"), "read a user")
        # Every partition's timers, found by name rather than from the state (which may be
        # missing or unreadable): there are as many keys as input partitions.
        timer_keys = sorted(
            _call(
                lambda: list(self._r.scan_iter(match=k.timers(0).replace("{0}", "{*}"))),
                "list the timers",
            )
        )

        sample = _call(lambda: self._r.hgetall(k.sample), "read the user sample")
        slots = [slot for slot, uid in sample.items() if uid.decode() == user_id]
        model = self.load_model()
        ids = set(range(int(model["next_id"]))) if model is not None else set()
        if segment is not None:
            ids.add(int(segment))
        segments = sorted(ids)
        pipe = self._r.pipeline(transaction=not self.cluster)
        for i in segments:
            pipe.srem(k.members(i), user_id)
        pipe.hdel(k.reassess, user_id)
        for key in timer_keys:
            pipe.zrem(key, user_id)
        if slots:
            pipe.hdel(k.sample, *slots)
        if self.cluster:
            removed = _run(pipe, "remove a user from the segments")
            removed.append(_call(lambda: self._r.delete(state_key), "delete a user's state"))
            removed.append(_call(lambda: self._r.delete(user_key), "delete a user"))
        else:
            pipe.delete(state_key)
            pipe.delete(user_key)
            removed = _run(pipe, "erase a user")
        counts = [int(n) for n in removed]
        members = counts[: len(segments)]
        queued = counts[len(segments)]
        timers = sum(counts[len(segments) + 1 : len(segments) + 1 + len(timer_keys)])
        sampled = sum(counts[len(segments) + 1 + len(timer_keys) : -2])
        state, user = counts[-2:]
        return Erasure(
            user_key=user_key,
            user_hash=user > 0,
            state=state > 0,
            segments=tuple(i for i, n in zip(segments, members, strict=True) if n),
            reassess=queued > 0,
            timer=timers > 0,
            sample=sampled > 0,
        )

    def close(self) -> None:
        self._r.close()


@dataclass(frozen=True, slots=True)
class Erasure:
    """What :meth:`RedisStore.forget` removed for one user."""

    #: The user's hash key (the state key is this plus ``:state``).
    user_key: str
    #: Whether the user hash existed.
    user_hash: bool
    #: Whether the state key existed.
    state: bool
    #: The segments whose membership sets held the user.
    segments: tuple[int, ...]
    #: Whether the user was queued for reassessment.
    reassess: bool
    #: Whether the user had an event-time timer.
    timer: bool = False
    #: Whether the user was in the model's user sample.
    sample: bool = False

    @property
    def removed_anything(self) -> bool:
        return (
            self.user_hash
            or self.state
            or bool(self.segments)
            or self.reassess
            or self.timer
            or self.sample
        )

    def describe(self) -> list[str]:
        """One line per thing removed, for people (empty when nothing was there)."""
        lines = []
        if self.user_hash:
            lines.append(f"user hash {self.user_key}")
        if self.state:
            lines.append(f"state {self.user_key}:state (features, offsets, de-duplication keys)")
        lines += [f"membership of segment {i}" for i in self.segments]
        if self.reassess:
            lines.append("entry in the reassessment queue")
        if self.timer:
            lines.append("event-time timer")
        if self.sample:
            lines.append("slot in the model's user sample")
        return lines


def _model_blob(doc: dict[str, Any]) -> bytes:
    """The checkpoint as JSON, ``merges`` first (the fence script matches it there)."""
    ordered = {"merges": int(doc["merges"]), **{k: v for k, v in doc.items() if k != "merges"}}
    return orjson.dumps(ordered, option=orjson.OPT_SERIALIZE_NUMPY)


def _decode_model(blob: bytes, key: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(blob)
    except orjson.JSONDecodeError:
        raise ModelError(
            f"{key} does not hold a model checkpoint; delete it to start fresh"
        ) from None
    return check(doc)


def _token() -> int:
    return secrets.randbits(TOKEN_BITS)


def _safe(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def _run(pipe: Any, what: str) -> list[Any]:
    return _call(pipe.execute, what)


def _call(fn: Any, what: str) -> Any:
    try:
        return fn()
    except redis.RedisError as exc:
        raise RedisError(f"Redis failed to {what}: {exc}") from exc
