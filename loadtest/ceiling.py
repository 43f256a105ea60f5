"""The I/O ceiling of one segmenter process: its input and output paths with no logic.

One segmenter process reads every event from Kafka, decodes it, and writes every user a
batch touches to Redis. This module times those I/O paths alone, with the segmenter's own
client configurations and request shapes, and nothing of the logic in between (no
validation, features, model or segment-change messages):

- **consume only**: one Kafka consumer configured as the segmenter's
  (:func:`consumers.app.consumer_config`), draining a backlog with ``consume(batch)``;
- **consume + orjson**: the same, plus ``orjson.loads`` of every message value;
- **Redis fenced writes**: per user, the segmenter's fenced Lua ``HSET``
  (:data:`state.user_states.FENCED_WRITE_MANY` by ``EVALSHA``, several users a call as on
  a single server, arguments laid out as
  :meth:`state.redis_store.RedisStore.write_updates` lays them out, values the size of a
  real user's) and one ``SADD`` to a membership set, pipelined a batch of users at a time;
- **Redis plain writes**: the same with a plain ``HSET``, to show what the script costs.

Each is a *ceiling*: the segmenter does at least this much work per event or per user
update on the same clients, so it cannot go faster than the slowest of these on the same
machine, and every step it adds between them brings it further below.

    python -m loadtest.ceiling --users 50000 --events 500000 --broker auto

The command starts its own Redis and broker on free loopback ports (stopped by PID at the
end), produces a backlog with :func:`loadtest.generator.produce_backlog` exactly as
``loadtest.bench_throughput`` does, and prints each rate, so the two can be compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer

from consumers import topics as topic_admin
from consumers.app import consumer_config
from loadtest.devstack import servers
from loadtest.generator import BACKLOG_DAYS, BACKLOG_SEED, DAY_MS, produce_backlog
from loadtest.personas import ShopperSimulator
from state.keys import Keys
from state.user_states import (
    FENCED_WRITE_MANY,
    OFFSET_FIELD_PREFIX,
    STATE_FIELD,
    for_state_key,
    stored_state,
    user_hash,
    write_commands,
)
from stream.batch import MESSAGE_FEATURES, UserUpdate
from stream.events import DeadLetter, Event, decode
from stream.features import apply_events, compute_features
from stream.messages import SegmentChange, change_id
from stream.settings import Settings, load_settings
from stream.state_codec import encode_state
from stream.stored_change import StoredChange

#: Seed and span of the backlog, as ``loadtest.bench_throughput`` produces it.

#: Membership sets the written users are spread over.
_MEMBERSHIP_SETS = 6

#: How long a consume measurement may wait for its ``n_events`` before giving up.
CONSUME_DEADLINE_S = 600.0


class CeilingError(RuntimeError):
    """A measurement could not be made (too small a backlog, a broker error, ...)."""


@dataclass(frozen=True, slots=True)
class Rate:
    """One timed measurement.

    Attributes
    ----------
    what
        What was timed, for people.
    events
        Events the measurement stands for. For the consume measurements, messages read
        while the clock ran; for the Redis ones, the events the written user updates stand
        for (``users`` times the events per user update it was given, rounded).
    elapsed_s
        Wall time the clock ran, seconds.
    cpu_s
        CPU time of the whole process over the same interval (every thread, librdkafka's
        included), seconds; ``cpu_s / elapsed_s`` is the number of cores kept busy.
    per_s
        ``events / elapsed_s``: the ceiling, in events per second.
    users
        For the Redis measurements, distinct users written; 0 for the consume ones.
    """

    what: str
    events: int
    elapsed_s: float
    cpu_s: float
    per_s: float
    users: int = 0

    @classmethod
    def of(cls, what: str, events: int, elapsed_s: float, cpu_s: float, users: int = 0) -> Rate:
        """A rate with ``per_s`` computed from ``events`` and ``elapsed_s``.

        Examples
        --------
        >>> r = Rate.of("consume", 1000, 0.5, 0.25)
        >>> (r.per_s, r.cores)
        (2000.0, 0.5)
        """
        if not elapsed_s > 0:
            raise ValueError(f"elapsed_s must be positive, got {elapsed_s}")
        if events < 0 or users < 0:
            raise ValueError(f"events and users must be >= 0, got {events}, {users}")
        return cls(what, events, elapsed_s, cpu_s, events / elapsed_s, users)

    @property
    def users_per_s(self) -> float:
        """``users / elapsed_s``: user updates written per second (0 for consume rates)."""
        return self.users / self.elapsed_s

    @property
    def cores(self) -> float:
        """``cpu_s / elapsed_s``: how many cores the process kept busy on average."""
        return self.cpu_s / self.elapsed_s


def events_per_update(user_ids: Sequence[str], batch: int = 5000) -> tuple[float, float]:
    """Events per user update when a stream is handled ``batch`` events at a time.

    The segmenter writes each user of a batch once, whatever their number of events in
    it; so a Redis write stands for ``batch / (distinct users in the batch)`` events.

    Parameters
    ----------
    user_ids
        The user of each event, in stream order.
    batch
        Events per batch.

    Returns
    -------
    ratio, mean_users
        ``mean_users`` is the mean number of distinct users over every whole consecutive
        slice of ``batch`` events, and ``ratio = batch / mean_users``. A stream shorter
        than one batch counts as one slice of its own length; a final partial slice of a
        longer one is left out.

    Examples
    --------
    >>> events_per_update(["a", "a", "b", "b", "b", "c", "d", "d"], batch=4)
    (1.6, 2.5)
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not user_ids:
        raise ValueError("user_ids is empty")
    if len(user_ids) < batch:
        distinct = len(set(user_ids))
        return len(user_ids) / distinct, float(distinct)
    whole = len(user_ids) - len(user_ids) % batch
    mean_users = statistics.fmean(len(set(user_ids[i : i + batch])) for i in range(0, whole, batch))
    return batch / mean_users, mean_users


# -- Kafka ---------------------------------------------------------------------------------


def _consumer_settings(bootstrap: str, group_id: str | None) -> Settings:
    return load_settings({}).replace(
        kafka_bootstrap=bootstrap, group_id=group_id or f"ceiling-{uuid.uuid4().hex[:12]}"
    )


def _consume(
    bootstrap: str,
    topics: list[str],
    n_events: int,
    batch: int,
    group_id: str | None,
    decode_values: bool,
) -> Rate:
    if n_events < 1 or batch < 1:
        raise ValueError(f"n_events and batch must be >= 1, got {n_events}, {batch}")
    s = _consumer_settings(bootstrap, group_id)
    consumer = Consumer(consumer_config(s))
    consumer.subscribe(topics)
    loads = orjson.loads
    timeout = s.batch_timeout_s
    what = "consume + orjson.loads" if decode_values else "consume only"
    try:
        deadline = time.monotonic() + CONSUME_DEADLINE_S
        seen = counted = 0
        started = cpu_started = None
        while seen < n_events:
            msgs = consumer.consume(batch, timeout)
            if not msgs:
                if time.monotonic() > deadline:
                    raise CeilingError(
                        f"{what}: only {seen} of {n_events} messages arrived within "
                        f"{CONSUME_DEADLINE_S:.0f}s"
                    )
                continue
            if decode_values:
                try:
                    for m in msgs:
                        loads(m.value() or b"")  # an empty or missing value is not JSON
                except (orjson.JSONDecodeError, TypeError):
                    errors = [str(m.error()) for m in msgs if m.error() is not None]
                    raise CeilingError(
                        f"{what}: undecodable message ({'; '.join(errors[:3]) or 'not JSON'})"
                    ) from None
            seen += len(msgs)
            if started is None:
                # The first batch ends the group join; the clock starts after it.
                started, cpu_started = time.perf_counter(), time.process_time()
                continue
            counted += len(msgs)
        if started is None or cpu_started is None or counted == 0:
            raise CeilingError(
                f"{what}: the first batch held all {seen} messages; nothing left to time "
                "(produce more events than one batch)"
            )
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    finally:
        consumer.close()
    return Rate.of(what, counted, elapsed, cpu)


def consume_rate(
    bootstrap: str,
    topics: list[str],
    n_events: int,
    batch: int = 5000,
    group_id: str | None = None,
) -> Rate:
    """Read a backlog with the segmenter's consumer configuration, doing nothing else.

    A fresh consumer group (``group_id``, else a random ``ceiling-...`` one) subscribes to
    ``topics`` from the earliest offsets with :func:`consumers.app.consumer_config` and
    calls ``consume(batch, batch_timeout_s)`` until it has seen ``n_events`` messages. The
    first non-empty batch only ends the group join: the clock starts when it has been
    handled and its messages are not counted, so ``events`` is ``n_events`` (or a little
    more) less that batch.

    This is the ceiling of the input side: the segmenter consumes the same way, then does
    everything else with the messages; no configuration of its loop can read faster.

    Parameters
    ----------
    bootstrap
        Kafka bootstrap servers.
    topics
        Topics to subscribe to (the segmenter's two input topics).
    n_events
        Messages to read; the topics must hold at least this many.
    batch
        Messages per ``consume`` call (the segmenter's ``batch_max_events``).
    group_id
        Consumer group; by default a fresh one, so every call reads from the start.

    Returns
    -------
    Rate
        Messages per second and the process's CPU time over the timed part.

    Raises
    ------
    CeilingError
        If fewer than ``n_events`` messages arrive within :data:`CONSUME_DEADLINE_S`, or
        all of them came in the first batch.
    """
    return _consume(bootstrap, topics, n_events, batch, group_id, decode_values=False)


def consume_decode_rate(
    bootstrap: str,
    topics: list[str],
    n_events: int,
    batch: int = 5000,
    group_id: str | None = None,
) -> Rate:
    """As :func:`consume_rate`, plus ``orjson.loads`` of every message value.

    Parsing the JSON is the least the segmenter does with an event before anything else
    (its decoder validates fields on top), so this is the ceiling of the input side with
    decoding: the difference from :func:`consume_rate` is the parser's cost alone.

    Raises
    ------
    CeilingError
        As :func:`consume_rate`, and if a message value is not JSON.
    """
    return _consume(bootstrap, topics, n_events, batch, group_id, decode_values=True)


# -- Redis ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WritePayload:
    """The arguments of one user's state write, as the segmenter sends them.

    Attributes
    ----------
    offsets
        ``(field, offset)`` pairs: ``_o:<topic>:<partition>`` and the last input offset
        applied from it, the fence the script checks.
    fields
        The other ``(field, value)`` pairs of the user hash
        (:func:`state.user_states.user_hash`).
    segment
        The user's segment, whose membership set gets the user.
    state
        The user's encoded state as stored (:func:`state.user_states.stored_state`): base64
        text for the user hash, or bytes for the state key when long.
    """

    offsets: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str | bytes, str | bytes], ...]
    segment: int
    state: bytes = b""

    @property
    def in_key(self) -> bool:
        """Whether the state goes to the state key rather than the user hash."""
        return for_state_key(self.state)

    def hset_args(self) -> list[str | bytes]:
        """Field/value pairs of a plain ``HSET``: the state field (empty when the state is
        in the state key), offset pairs, then the others.

        >>> WritePayload((("_o:c:0", "7"),), (("a", "1"),), 2, b"Bf8=").hset_args()
        ['_s', b'Bf8=', '_o:c:0', '7', 'a', '1']
        """
        state = b"" if self.in_key else self.state
        return [STATE_FIELD, state, *self._pairs()]

    def _pairs(self) -> list[str | bytes]:
        return [x for pair in (*self.offsets, *self.fields) for x in pair]

    def fenced_args(self) -> list[str | bytes]:
        """ARGV of :data:`state.user_states.FENCED_WRITE`: the number of offset pairs, the
        state, the offset pairs, then the other fields.

        >>> WritePayload((("_o:c:0", "7"),), (("a", "1"),), 2, b"s").fenced_args()
        ['1', b's', '_o:c:0', '7', 'a', '1']
        """
        return [str(len(self.offsets)), self.state, *self._pairs()]

    @property
    def nbytes(self) -> int:
        """Bytes of field names and values written per user, the state included."""
        hashed = sum(len(x.encode() if isinstance(x, str) else x) for x in self.hset_args())
        return hashed + (len(self.state) if self.in_key else 0)


def realistic_payload(
    events: Sequence[Mapping[str, object]],
    clicks_topic: str = "shop.clicks",
    purchases_topic: str = "shop.purchases",
    partition: int = 0,
    first_offset: int = 100_000,
    segment: int = 2,
    segment_name: str = "high_value",
    model_version: int = 40,
) -> WritePayload:
    """The write the segmenter would send for a user with these generator events.

    The events go through the segmenter's own decoder, :func:`stream.features.apply_events`
    and :func:`stream.features.compute_features`; the user is given a segment and the
    stored segment change that goes with it (as a user who has been segmented carries),
    and the hash is built by :func:`state.user_states.user_hash`, so every field has the
    size it has in production for a user with this history.

    Parameters
    ----------
    events
        One user's events as :meth:`loadtest.personas.ShopperSimulator.events` yields
        them, in order.
    clicks_topic, purchases_topic, partition, first_offset
        Where the events are taken to have been read: purchases from ``purchases_topic``,
        the rest from ``clicks_topic``, partition ``partition``, at consecutive offsets
        from ``first_offset`` (only their lengths matter).
    segment, segment_name, model_version
        The values written for them.

    Raises
    ------
    ValueError
        If ``events`` is empty or one of them does not decode.
    """
    if not events:
        raise ValueError("events is empty")
    decoded: list[Event] = []
    for i, doc in enumerate(events):
        raw = orjson.dumps(doc)
        user = str(doc["user_id"])
        topic = purchases_topic if doc["type"] == "purchase" else clicks_topic
        r = decode(raw, user.encode(), topic, partition, first_offset + i, now_ms=_now_ms())
        if isinstance(r, DeadLetter):
            raise ValueError(f"event {i} does not decode: {r.reason} ({r.detail})")
        decoded.append(r)
    state = apply_events(None, decoded).state
    features = compute_features(state)
    last = decoded[-1]
    state.segment, state.segment_name, state.segment_since_ms = (
        segment,
        segment_name,
        state.last_event_ms,
    )
    change = SegmentChange(
        change_id=change_id(last.user_id, last.event_id, segment - 1, segment),
        user_id=last.user_id,
        previous_segment=segment - 1,
        previous_segment_name="new",
        segment=segment,
        segment_name=segment_name,
        model_version=model_version,
        event_time_ms=last.ts_ms,
        emitted_at_ms=_now_ms(),
        distance_margin=0.4321,
        runner_up_segment=segment - 1,
        top_features=MESSAGE_FEATURES[:3],
        features={k: features[k] for k in MESSAGE_FEATURES},
    )
    pos = f"{last.topic}:{last.partition}"
    state.last_change = StoredChange.of(pos, last.offset, change)
    update = UserUpdate(last.user_id, state, features, segment - 1, change, None)
    offsets = tuple((OFFSET_FIELD_PREFIX + pos, str(off)) for pos, off in state.offsets.items())
    fields = tuple(user_hash(update, model_version).items())
    return WritePayload(offsets, fields, segment, stored_state(encode_state(state)))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _redis_rate(
    redis_url: str,
    n_users: int,
    batch_users: int,
    payload: WritePayload,
    events_per_update: float,
    fenced: bool,
) -> Rate:
    if n_users < 1 or batch_users < 1:
        raise ValueError(f"n_users and batch_users must be >= 1, got {n_users}, {batch_users}")
    if not events_per_update > 0:
        raise ValueError(f"events_per_update must be positive, got {events_per_update}")
    client: Any = redis.Redis.from_url(redis_url, socket_timeout=10.0, socket_connect_timeout=5.0)
    keys = Keys(f"ceiling:{uuid.uuid4().hex[:8]}:")
    users = [(f"c{i:07d}", i % _MEMBERSHIP_SETS) for i in range(n_users)]
    user_keys = [keys.user(uid) for uid, _ in users]
    state_keys = [keys.state(uid) for uid, _ in users]
    args = payload.fenced_args() if fenced else payload.hset_args()
    plain = "Redis plain HSET + SET + SADD" if payload.in_key else "Redis plain HSET + SADD"
    what = "Redis fenced write + SADD" if fenced else plain
    try:
        if fenced:
            client.script_load(FENCED_WRITE_MANY)
        cpu_started, started = time.process_time(), time.perf_counter()
        for lo in range(0, n_users, batch_users):
            hi = min(lo + batch_users, n_users)
            # Round trip 1: every user's hash (write_updates' _fenced_writes), users
            # WRITE_CHUNK to a script call as on a single server.
            pipe = client.pipeline(transaction=False)
            pairs = list(zip(user_keys[lo:hi], state_keys[lo:hi], strict=True))
            if fenced:
                for command in write_commands([(k, sk, args) for k, sk in pairs]):
                    pipe.execute_command(*command)
                accepted = [ok for reply in pipe.execute() for ok in reply]
            else:
                for key, state_key in pairs:
                    pipe.execute_command("HSET", key, *args)
                    if payload.in_key:
                        pipe.execute_command("SET", state_key, payload.state)
                accepted = pipe.execute()[:: 2 if payload.in_key else 1]
            # Round trip 2: membership of the users written.
            pipe = client.pipeline(transaction=False)
            for (uid, seg), ok in zip(users[lo:hi], accepted, strict=True):
                if ok:
                    pipe.sadd(keys.members(seg), uid)
            pipe.execute()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        stored = sum(int(client.scard(keys.members(s))) for s in range(_MEMBERSHIP_SETS))
        if stored != n_users:
            raise CeilingError(f"{what}: {stored} of {n_users} users were written")
    finally:
        members = (keys.members(s) for s in range(_MEMBERSHIP_SETS))
        _delete(client, [*user_keys, *state_keys, *members])
        client.close()
    return Rate.of(what, round(n_users * events_per_update), elapsed, cpu, users=n_users)


def _delete(client: Any, keys: list[str], chunk: int = 5000) -> None:
    for lo in range(0, len(keys), chunk):
        client.unlink(*keys[lo : lo + chunk])


def redis_write_rate(
    redis_url: str,
    n_users: int,
    batch_users: int,
    payload: WritePayload,
    events_per_update: float = 1.0,
) -> Rate:
    """Write ``n_users`` distinct users as the segmenter writes a batch, and time it.

    Users go ``batch_users`` at a time, each group in the two pipelined round trips of
    :meth:`state.redis_store.RedisStore.write_updates` on a single server: first one
    ``EVALSHA`` of :data:`state.user_states.FENCED_WRITE_MANY` per
    :data:`~state.user_states.WRITE_CHUNK` users (ARGV per user: the number of its
    arguments, then the number of offset pairs, the state, the offset pairs, the other
    field/value pairs of ``payload``), then one ``SADD`` per user
    written to a membership set (users spread over six sets). redis-py is used as the
    store uses it: ``pipeline(transaction=False)`` and ``execute_command``. Argument lists
    are built before the clock starts; the keys are new, under a fresh prefix, and are
    deleted afterwards (untimed).

    This is the ceiling of the output side: the segmenter writes each user of a batch
    this way, with values this size, and also reads the users' states beforehand and does
    a ``SREM`` for users who leave a segment; so it cannot write faster than this.

    Parameters
    ----------
    redis_url
        A Redis server to write to (keys ``ceiling:<random>:...`` only).
    n_users
        Distinct users to write.
    batch_users
        Users per pipeline (the distinct users of one segmenter batch).
    payload
        The arguments written per user (:func:`realistic_payload`).
    events_per_update
        Events one user update stands for (:func:`events_per_update`): converts users
        per second into events per second.

    Returns
    -------
    Rate
        ``users`` is ``n_users`` and ``users_per_s`` the user updates per second;
        ``events`` and ``per_s`` the same in events, through ``events_per_update``.
    """
    return _redis_rate(redis_url, n_users, batch_users, payload, events_per_update, True)


def redis_hset_rate(
    redis_url: str,
    n_users: int,
    batch_users: int,
    payload: WritePayload,
    events_per_update: float = 1.0,
) -> Rate:
    """As :func:`redis_write_rate` with a plain ``HSET`` and ``SET`` of the same, no script.

    The difference from :func:`redis_write_rate` is what the fence costs: the Lua call and
    its ``HGET`` of each offset field.
    """
    return _redis_rate(redis_url, n_users, batch_users, payload, events_per_update, False)


# -- the backlog ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BacklogSample:
    """The backlog's user ids in order, and a typical user's events.

    Attributes
    ----------
    user_ids
        The user of every event, in the order produced.
    typical_events
        The events of the user with the median event count among a sample of users.
    """

    user_ids: list[str]
    typical_events: list[dict[str, object]]


def simulate_backlog(
    n_users: int,
    n_events: int,
    seed: int = BACKLOG_SEED,
    days: float = BACKLOG_DAYS,
    sample_users: int = 200,
) -> BacklogSample:
    """Run the shopper simulator as :func:`loadtest.generator.produce_events` does.

    The same users, seed and span give the same traffic; only the span's end (the wall
    clock at the call) differs from the produced backlog's, which moves single draws but
    not the statistics taken from it. Events of users ``u000001`` to ``sample_users``
    (a random sample: personas are shuffled over ids) are kept to pick a typical user.
    """
    end_ms = _now_ms()
    sim = ShopperSimulator(n_users, seed, end_ms - int(days * DAY_MS), end_ms)
    kept = {f"u{i + 1:06d}" for i in range(min(sample_users, n_users))}
    by_user: dict[str, list[dict[str, object]]] = {}
    user_ids: list[str] = []
    for event in sim.events(n_events):
        user = str(event["user_id"])
        user_ids.append(user)
        if user in kept:
            by_user.setdefault(user, []).append(event)
    if not by_user:
        raise CeilingError("no sampled user has any event; raise --events")
    ranked = sorted(by_user.values(), key=len)
    return BacklogSample(user_ids, ranked[len(ranked) // 2])


# -- the command ---------------------------------------------------------------------------


def format_rate(rate: Rate, events_per_update: float | None = None) -> str:
    """One line for ``rate``: what, how many, how long, the rate, the CPU.

    Examples
    --------
    >>> print(format_rate(Rate.of("consume only", 90000, 0.5, 0.6)))
    consume only: 90000 events in 0.50s = 180000 events/s (process CPU 0.60s, 1.20 cores)
    >>> r = Rate.of("Redis plain HSET + SADD", 16000, 0.5, 0.4, users=1000)
    >>> print(format_rate(r, 16.0))
    Redis plain HSET + SADD: 1000 users in 0.50s = 2000 users/s = 32000 events/s at 16.00 \
events per update (process CPU 0.40s, 0.80 cores)
    """
    cpu = f"(process CPU {rate.cpu_s:.2f}s, {rate.cores:.2f} cores)"
    if rate.users:
        per = f" at {events_per_update:.2f} events per update" if events_per_update else ""
        return (
            f"{rate.what}: {rate.users} users in {rate.elapsed_s:.2f}s = "
            f"{rate.users_per_s:.0f} users/s = {rate.per_s:.0f} events/s{per} {cpu}"
        )
    return (
        f"{rate.what}: {rate.events} events in {rate.elapsed_s:.2f}s = "
        f"{rate.per_s:.0f} events/s {cpu}"
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.ceiling",
        description="I/O ceilings of one segmenter process: Kafka consume (and decode) "
        "rate, Redis write rate, on a local stack of its own.",
    )
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch", type=int, default=5000, help="events per consumed batch")
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    args = ap.parse_args(argv)
    if args.users < 1 or args.events <= args.batch or args.partitions < 1 or args.batch < 1:
        ap.error("need --users >= 1, --partitions >= 1 and --events > --batch >= 1")

    with tempfile.TemporaryDirectory(prefix="segmenter-ceiling-") as tmp:
        rds = servers.start_redis(Path(tmp) / "redis")
        broker: servers.Server | None = None
        try:
            broker = servers.start_broker(Path(tmp) / "broker", prefer=args.broker)
            return _run(args, broker, rds)
        finally:
            if broker is not None:
                broker.stop()
            rds.stop()


@dataclass(frozen=True, slots=True)
class CeilingResult:
    """Every ceiling measured on one backlog.

    Attributes
    ----------
    consume, consume_decode
        :func:`consume_rate` and :func:`consume_decode_rate` over the backlog.
    redis_fenced, redis_plain
        :func:`redis_write_rate` and :func:`redis_hset_rate`, one write per user.
    events_per_update, mean_users
        :func:`events_per_update` of the backlog at the batch size.
    batch_users
        Users per Redis pipeline (``mean_users`` rounded).
    payload_fields, payload_bytes, history_events
        Fields (offset ones included) and bytes written per user, and the events of
        history of the typical user whose write it is.
    """

    consume: Rate
    consume_decode: Rate
    redis_fenced: Rate
    redis_plain: Rate
    events_per_update: float
    mean_users: float
    batch_users: int
    payload_fields: int
    payload_bytes: int
    history_events: int

    def describe(self) -> str:
        """The lines the command prints after the backlog, one per figure."""
        return "\n".join(
            [
                f"backlog: batches hold {self.mean_users:.1f} distinct users on average = "
                f"{self.events_per_update:.2f} events per user update; a typical user update "
                f"({self.history_events} events of history) writes {self.payload_fields} "
                f"fields, {self.payload_bytes} bytes",
                format_rate(self.consume),
                format_rate(self.consume_decode),
                f"Redis pipelines: {self.batch_users} users each (the distinct users of one batch)",
                format_rate(self.redis_fenced, self.events_per_update),
                format_rate(self.redis_plain, self.events_per_update),
            ]
        )


def measure(
    s: Settings, redis_url: str, n_users: int, n_events: int, batch: int = 5000
) -> CeilingResult:
    """Measure every ceiling on the backlog already in ``s``' input topics.

    The backlog is :func:`loadtest.generator.produce_backlog` of ``n_users`` users and
    ``n_events`` events; it is simulated again here (not read back) to find the users per
    batch and a typical user's write.
    """
    inputs = [s.clicks_topic, s.purchases_topic]
    sample = simulate_backlog(n_users, n_events)
    ratio, mean_users = events_per_update(sample.user_ids, batch)
    payload = realistic_payload(sample.typical_events, s.clicks_topic, s.purchases_topic)
    consume = consume_rate(s.kafka_bootstrap, inputs, n_events, batch)
    decoded = consume_decode_rate(s.kafka_bootstrap, inputs, n_events, batch)
    batch_users = max(1, round(mean_users))
    fenced = redis_write_rate(redis_url, n_users, batch_users, payload, ratio)
    plain = redis_hset_rate(redis_url, n_users, batch_users, payload, ratio)
    return CeilingResult(
        consume=consume,
        consume_decode=decoded,
        redis_fenced=fenced,
        redis_plain=plain,
        events_per_update=ratio,
        mean_users=mean_users,
        batch_users=batch_users,
        payload_fields=len(payload.offsets) + len(payload.fields),
        payload_bytes=payload.nbytes,
        history_events=len(sample.typical_events),
    )


def _run(args: argparse.Namespace, broker: servers.Server, rds: servers.Server) -> int:
    s = load_settings({}).replace(kafka_bootstrap=broker.address)
    inputs = [s.clicks_topic, s.purchases_topic]
    topic_admin.create_topics(
        topic_admin.admin_client(s), {t: (args.partitions, {}) for t in inputs}
    )
    print(
        f"broker: {broker.kind}; cores: {os.cpu_count()}; users {args.users}; "
        f"events {args.events}; batch {args.batch}; partitions {args.partitions}"
    )
    gen = produce_backlog(s, args.users, args.events)
    print(f"backlog produced: {gen.events_sent} events at {gen.events_per_s:.0f}/s")
    print(
        measure(s, f"redis://{rds.address}/0", args.users, gen.events_sent, args.batch).describe()
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
