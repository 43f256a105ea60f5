"""Producing shop events to the input topics: ``segmenter replay``, and the generator
(``python -m loadtest.dev generate``).

Both send events the way the pipeline needs them: purchases to the purchases topic, every
other type to the clicks topic (:func:`input_topic`), keyed by user id so that a user's
events share a partition number on both topics. Both use one producer configuration
(:func:`event_producer_config`: idempotent, ``acks=all``), one send loop with optional
pacing (:func:`send`), and count an event as sent only once the broker has confirmed it
(:class:`Deliveries`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, Message

from stream.errors import BrokerError

#: Messages between pacing checks, delivery-report polls and progress calls, at most.
MAX_CHUNK = 1000
#: At a set rate, pace in bursts this long at most.
_CHUNK_SECONDS = 0.01
#: How long the final flush may wait for the broker's acknowledgements.
FLUSH_TIMEOUT_S = 120.0
#: Delivery errors quoted in a :class:`DeliveryError`; the rest are only counted.
_KEPT_ERRORS = 5

#: A librdkafka property value.
ConfigValue = str | int | float | bool


class DeliveryError(BrokerError):
    """Some messages were refused by the broker, or still unconfirmed after the flush."""


class EventProducer(Protocol):
    """What :func:`send` and :meth:`Deliveries.confirm` use of a ``confluent_kafka.Producer``."""

    def produce(self, topic: str, value: bytes, key: bytes | None) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


def event_producer_config(
    bootstrap: str, extra: Mapping[str, ConfigValue] | None = None
) -> dict[str, ConfigValue]:
    """librdkafka properties for a producer of input events.

    Parameters
    ----------
    bootstrap
        Kafka bootstrap servers; wins over any ``bootstrap.servers`` in ``extra``.
    extra
        Properties merged over the defaults (security settings, for example).

    Examples
    --------
    >>> c = event_producer_config("h:1", {"linger.ms": 5})
    >>> c["enable.idempotence"], c["acks"], c["linger.ms"], c["bootstrap.servers"]
    (True, 'all', 5, 'h:1')
    """
    config: dict[str, ConfigValue] = {
        "enable.idempotence": True,  # broker retries must not duplicate events
        "acks": "all",  # confirmed = on every in-sync replica: a confirmed event is not lost
        "linger.ms": 20,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }
    config.update(extra or {})
    config["bootstrap.servers"] = bootstrap
    return config


def input_topic(event_type: object, clicks_topic: str, purchases_topic: str) -> str:
    """The input topic of an event of type ``event_type``.

    >>> input_topic("purchase", "c", "p"), input_topic("view", "c", "p")
    ('p', 'c')
    """
    return purchases_topic if event_type == "purchase" else clicks_topic


class Deliveries:
    """The delivery reports of one producer: pass :meth:`report` as its ``on_delivery``.

    Attributes
    ----------
    delivered
        Messages the broker confirmed.
    failed
        Messages refused (by the broker, or by the client before sending).
    errors
        The first few failures, in words.
    """

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.errors: list[str] = []

    def report(self, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's delivery callback: count the outcome of one message."""
        if err is None:
            self.delivered += 1
        else:
            self.fail(f"{msg.topic()}: {err.str()}")

    def fail(self, error: str) -> None:
        """Count one message that will never be delivered."""
        self.failed += 1
        if len(self.errors) < _KEPT_ERRORS:
            self.errors.append(error)

    def confirm(self, producer: EventProducer, sent: int, timeout: float = FLUSH_TIMEOUT_S) -> None:
        """Flush ``producer`` and check that every one of the ``sent`` messages arrived.

        Raises
        ------
        DeliveryError
            If any message failed, or was still unconfirmed ``timeout`` seconds later.
        """
        deadline = time.monotonic() + timeout
        remaining = producer.flush(timeout)
        while remaining and time.monotonic() < deadline:
            remaining = producer.flush(max(0.0, deadline - time.monotonic()))
        problems = []
        if self.failed:
            quoted = "; ".join(self.errors)
            problems.append(f"{self.failed} of {sent} messages failed delivery ({quoted})")
        if remaining:
            problems.append(f"{remaining} still undelivered after {timeout:.0f}s")
        if problems:
            raise DeliveryError(" and ".join(problems))


def send(
    producer: EventProducer,
    messages: Iterable[tuple[str, bytes, bytes | None]],
    deliveries: Deliveries,
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Produce ``(topic, value, key)`` messages, paced at ``rate`` per second if given.

    Never drops a message for a full local queue: it serves delivery reports until there
    is room. A message the client refuses outright (larger than ``message.max.bytes``,
    for example) is counted as failed in ``deliveries`` and the others still go.
    Call :meth:`Deliveries.confirm` afterwards.

    Parameters
    ----------
    producer
        The producer, built with ``on_delivery=deliveries.report``.
    messages
        What to send, in order.
    deliveries
        Where failures are counted.
    rate
        Messages per second; ``None`` sends as fast as the producer takes them.
    progress
        Called with the number of messages produced so far, at least every
        :data:`MAX_CHUNK` messages.

    Returns
    -------
    int
        The number of messages produced (handed to the client, not yet confirmed).
    """
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be positive or None, got {rate}")
    chunk = MAX_CHUNK if rate is None else max(1, min(MAX_CHUNK, int(rate * _CHUNK_SECONDS)))
    produce = producer.produce  # looked up once: this loop runs once per event
    sent = 0
    started = time.monotonic()
    for topic, value, key in messages:
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room, never drop.
                producer.poll(0.05)
            except KafkaException as exc:
                deliveries.fail(f"{topic}: {exc.args[0].str()}")
                break
        sent += 1
        if sent % chunk == 0:
            producer.poll(0)
            if progress is not None:
                progress(sent)
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    return sent
