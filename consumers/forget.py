"""Erasure of one user: ``segmenter forget USER``.

Redis first (:meth:`state.redis_store.RedisStore.forget`), then a tombstone (key = the
user's id as published, value null) on the compacted ``segments.current``, so that log
compaction removes the user's earlier records there. Nothing goes to
``segments.changes``: it is a log of changes in a versioned schema, not a table, and a
null value there would be a message its readers cannot parse; its records age out with
its retention. Readers that keep a per-user copy learn of the erasure from the tombstone.

Every step is idempotent, so a forget that failed half-way is simply run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from consumers import topics
from state.erasure import Erasure
from state.redis_store import RedisStore
from stream.errors import BrokerError
from stream.privacy import user_id_mapper
from stream.settings import Settings

#: How many times a user written back by a batch in flight is erased again before
#: :func:`forget_user` concludes their events are still arriving.
ROUNDS = 3
#: How long the tombstone's delivery may take.
DELIVERY_TIMEOUT_S = 30.0


@dataclass
class ForgetReport:
    """What :func:`forget_user` did."""

    #: The id the segmenter stores and publishes for the user (the pseudonym, or the id).
    stored_id: str
    #: The first erasure, then one per round in which a batch had written the user back.
    erasures: list[Erasure] = field(default_factory=list)
    #: Whether a tombstone went to ``segments.current`` (not when the topic does not exist).
    tombstone: bool = False
    #: False when the user was written back in every round: their events still arrive.
    settled: bool = True

    @property
    def removed_anything(self) -> bool:
        return any(e.removed_anything for e in self.erasures)


def stored_user_id(settings: Settings, user_id: str) -> str:
    """The id under which the segmenter keeps and publishes ``user_id``: its pseudonym
    when ``pseudonymise_user_ids`` is on, else the id itself."""
    mapper = user_id_mapper(settings.user_id_key)
    return user_id if mapper is None else mapper(user_id)


def forget_user(
    settings: Settings,
    user_id: str,
    settle_s: float = 3.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ForgetReport:
    """Erase ``user_id`` (the raw id) from Redis, then tombstone it on ``segments.current``.

    Redis and the broker are both checked first, so that an unreachable one erases
    nothing. Then the user is erased; a batch of a running segmenter that read their
    state just before may still write it back (and publish a change), so after
    ``settle_s`` seconds the erasure is run again, and again while it finds something,
    up to :data:`ROUNDS` times. The tombstone is written last, after any such batch's
    change. ``settle_s`` of 0 skips the check.

    Raises
    ------
    RedisError, BrokerError
        Redis or the broker cannot be reached, or the tombstone was not delivered (then
        Redis is already erased: running it again finishes the job).
    """
    store = RedisStore.from_settings(settings)
    try:
        store.ping()
        admin = topics.admin_client(settings)
        counts = topics.partition_counts(admin, settings.kafka_bootstrap)
        report = ForgetReport(stored_user_id(settings, user_id))
        report.erasures.append(store.forget(report.stored_id))
        if settle_s > 0:
            for _ in range(ROUNDS):
                sleep(settle_s)
                again = store.forget(report.stored_id)
                if not again.removed_anything:
                    break
                report.erasures.append(again)
            else:
                report.settled = False
    finally:
        store.close()
    if settings.current_topic in counts:
        produce_tombstone(settings, report.stored_id.encode())
        report.tombstone = True
    return report


def produce_tombstone(settings: Settings, key: bytes) -> None:
    """Write a record with ``key`` and a null value to ``segments.current`` and wait until
    the broker has it (a readable :class:`BrokerError` if it does not within
    :data:`DELIVERY_TIMEOUT_S`)."""
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    producer = Producer(
        {
            **settings.kafka_client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
        }
    )
    producer.produce(settings.current_topic, None, key, on_delivery=on_delivery)
    undelivered = producer.flush(DELIVERY_TIMEOUT_S + 5)
    if undelivered or failures:
        raise BrokerError(
            f"the tombstone for {settings.current_topic} was not delivered "
            f"({'; '.join(failures) or 'timed out'}); Redis is already erased: run forget "
            "again once the broker is back"
        )
