"""The job as a competent engineer writes it in a day: micro-batches, pipelined Redis.

No design of this project's beyond the shared domain code: one ``Consumer`` in the
consumer group, ``consume()`` of up to :data:`BATCH` messages at a time, and per batch:

1. decode and validate every message with :func:`stream.events.decode` (invalid ones are
   counted and skipped) and group the events by user;
2. one pipelined read of every user's state key (one round trip for the batch);
3. per user, fold all of their events in at once, compute the features, scale them, then
   River ``KMeans.predict_one`` and ``learn_one`` (:meth:`OnlineSegmentation.step_many`):
   one model update per user per batch;
4. one pipelined write of every user's state, hash and membership sets (one round trip);
5. produce the change messages, flush the producer, then commit the batch's offsets
   (``enable.auto.commit`` off): at least once, with the commit after the writes, as a
   careful engineer orders it without transactions.

So it differs from the segmenter in what the segmenter adds: a model shared across
processes with k chosen and segment ids kept, transactions with the offset fence, names,
the event-time watermark and its timers, dead letters.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import cast

import orjson
import redis
from confluent_kafka import Consumer, KafkaException, Producer

from loadtest.peers import (
    Deliveries,
    OnlineSegmentation,
    Outcome,
    PeerResult,
    RedisCommands,
    load_state,
    write_user,
)
from state.keys import Keys
from stream.events import DeadLetter, Event, decode

NAME = "micro_batch"
#: Messages per ``consume()`` call: librdkafka hands out what it has fetched, up to this.
BATCH = 5_000
_CONSUME_S = 1.0
_FLUSH_S = 60.0


def consumer_config(bootstrap: str, group_id: str) -> dict[str, str | int | float | bool]:
    """The consumer's configuration: offsets committed by the loop, after each batch.

    >>> consumer_config("127.0.0.1:9092", "g")["enable.auto.commit"]
    False
    """
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }


def write_batch(pipe: RedisCommands, keys: Keys, outcomes: list[Outcome]) -> None:
    """Queue every user's writes on ``pipe`` (:func:`~loadtest.peers.write_user`'s: the
    state, the hash, the membership sets of those who moved), for one round trip."""
    for o in outcomes:
        write_user(pipe, keys, o)


def run(
    bootstrap: str,
    redis_url: str,
    clicks_topic: str,
    purchases_topic: str,
    changes_topic: str,
    group_id: str,
    n_events: int,
    timeout_s: float,
) -> PeerResult:
    """Consume ``n_events`` messages in micro-batches, doing the whole job for each batch.

    Timing starts at the first message received (group join excluded) and ends when
    every change message is delivered and the last offsets are committed.

    Raises
    ------
    ValueError
        If ``n_events`` is less than 1.
    TimeoutError
        If ``n_events`` messages were not processed within ``timeout_s`` seconds.
    RuntimeError
        If change messages could not be delivered.
    """
    if n_events < 1:
        raise ValueError(f"n_events must be >= 1, got {n_events}")
    deliveries = Deliveries()
    consumer = Consumer(consumer_config(bootstrap, group_id))
    producer = Producer({"bootstrap.servers": bootstrap, "on_delivery": deliveries})
    client = redis.Redis.from_url(redis_url)
    keys = Keys()
    job = OnlineSegmentation()
    seen = invalid = changes = 0
    started: float | None = None
    cpu0 = 0.0
    deadline = time.monotonic() + timeout_s
    remaining = 0
    try:
        consumer.subscribe([clicks_topic, purchases_topic])
        while seen < n_events:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{NAME}: {seen} of {n_events} messages processed in {timeout_s:.0f}s"
                )
            msgs = consumer.consume(min(BATCH, n_events - seen), _CONSUME_S)
            if not msgs:
                continue
            if started is None:
                started = time.perf_counter()
                cpu0 = time.process_time()
            now_ms = time.time_ns() // 1_000_000
            by_user: dict[str, list[Event]] = defaultdict(list)
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    continue
                seen += 1
                event = decode(
                    msg.value(), msg.key(), msg.topic() or "", msg.partition() or 0,
                    msg.offset() or 0, now_ms,
                )  # fmt: skip
                if isinstance(event, DeadLetter):
                    invalid += 1
                else:
                    by_user[event.user_id].append(event)
            users = list(by_user)
            # The client is opened without decode_responses: values come back as bytes.
            blobs = cast(
                "list[bytes | None]", client.mget([keys.state(u) for u in users]) if users else []
            )
            outcomes = []
            for user, blob in zip(users, blobs, strict=True):
                outcome = job.step_many(load_state(blob), by_user[user], now_ms)
                if outcome is not None:
                    outcomes.append(outcome)
            pipe = client.pipeline(transaction=False)
            write_batch(pipe, keys, outcomes)
            pipe.execute()
            for o in outcomes:
                if o.change is not None:
                    producer.produce(changes_topic, orjson.dumps(o.change), o.user_id.encode())
                    changes += 1
            # Flush, then commit: a crash in between re-delivers the batch, never loses it.
            remaining = producer.flush(_FLUSH_S)
            if remaining:
                break
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
        client.close()
    deliveries.check(NAME, remaining)
    assert started is not None
    return PeerResult.measured(
        NAME,
        seen,
        time.perf_counter() - started,
        time.process_time() - cpu0,
        changes=changes,
        invalid=invalid,
    )
