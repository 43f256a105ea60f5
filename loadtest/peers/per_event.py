"""The job as most teams write it first: a confluent-kafka poll loop, one event at a time.

One ``Consumer`` in the consumer group, subscribed to the clicks and purchases topics,
with the client's defaults (``range`` assignment, ``enable.auto.commit``: offsets are
stored as messages are handed out and committed in the background every 5 s) and
``auto.offset.reset=earliest`` so that a new group reads the backlog. For each message:

1. decode and validate it with :func:`stream.events.decode` (invalid ones are counted
   and skipped);
2. ``GET`` the user's state key from Redis;
3. fold the event in, compute the features, scale them, River ``KMeans.predict_one``
   then ``learn_one`` (:class:`~loadtest.peers.OnlineSegmentation`);
4. ``SET`` the state and ``HSET`` the user hash (``segment``, ``features``), and ``SREM``/``SADD``
   the membership sets when the segment changed;
5. produce the change message (key = user id) to the changes topic when it changed.

Every Redis command is one network round trip and every event one model update: this is
the loop of the client libraries' getting-started guides with the job's logic inside it,
which is why it is the baseline the segmenter is compared with.
"""

from __future__ import annotations

import time

import orjson
import redis
from confluent_kafka import Consumer, KafkaException, Producer

from loadtest.peers import Deliveries, OnlineSegmentation, PeerResult, read_state, write_user
from state.keys import Keys
from stream.events import DeadLetter, decode

NAME = "per_event"
_POLL_S = 1.0
_FLUSH_S = 60.0


def consumer_config(bootstrap: str, group_id: str) -> dict[str, str | int | float | bool]:
    """The consumer's configuration: the client's defaults, plus where and which group.

    >>> consumer_config("127.0.0.1:9092", "g")["auto.offset.reset"]
    'earliest'
    """
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
    }


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
    """Consume ``n_events`` messages one at a time, doing the whole job for each.

    Timing starts at the first message received (group join excluded) and ends when
    every change message is delivered and the consumer has committed and closed.

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
    closed = False
    try:
        consumer.subscribe([clicks_topic, purchases_topic])
        while seen < n_events:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{NAME}: {seen} of {n_events} messages processed in {timeout_s:.0f}s"
                )
            msg = consumer.poll(_POLL_S)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue
            if started is None:
                started = time.perf_counter()
                cpu0 = time.process_time()
            seen += 1
            now_ms = time.time_ns() // 1_000_000
            event = decode(
                msg.value(), msg.key(), msg.topic() or "", msg.partition() or 0,
                msg.offset() or 0, now_ms,
            )  # fmt: skip
            if isinstance(event, DeadLetter):
                invalid += 1
                continue
            outcome = job.step(read_state(client, keys, event.user_id), event, now_ms)
            if outcome is None:
                continue
            write_user(client, keys, outcome)
            if outcome.change is not None:
                producer.produce(
                    changes_topic, orjson.dumps(outcome.change), event.user_id.encode()
                )
                changes += 1
            producer.poll(0)
        remaining = producer.flush(_FLUSH_S)
        consumer.close()
        closed = True
    finally:
        if not closed:
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
