"""What downstream readers last heard of each user: the compacted ``segments.current``.

A rebuild (:mod:`consumers.rebuild`) reads it once, so that users rebuilt from Kafka keep
the segment of their last published change (:func:`stream.state_gaps.adopt_published`).
"""

from __future__ import annotations

import logging
import time

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from stream.errors import BrokerError
from stream.events import parse_timestamp
from stream.settings import Settings
from stream.state_gaps import Published

log = logging.getLogger("segmenter")

__all__ = ["read_published"]


def read_published(settings: Settings, timeout_s: float = 600.0) -> dict[str, Published]:
    """Each user's last change on ``settings.current_topic`` (committed records only), up
    to the end the topic has now; users whose last record is a tombstone (erased) are left
    out. About 150 bytes of memory per user, until the rebuild ends."""
    topic = settings.current_topic
    consumer = Consumer(
        {
            "group.id": f"{settings.group_id}-published-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            **settings.kafka_client_config(),
        }
    )
    started = time.monotonic()
    out: dict[str, Published] = {}
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return out
        parts = sorted(meta.partitions)
        pending = set()
        for p in parts:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                pending.add(p)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts if p in pending])
        while pending:
            if time.monotonic() - started > timeout_s:
                raise BrokerError(f"reading {topic} took over {timeout_s:.0f}s")
            for m in consumer.consume(10_000, 1.0):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                    continue
                key = (m.key() or b"").decode()
                value = m.value()
                if value is None:
                    out.pop(key, None)
                    continue
                doc = orjson.loads(value)
                since = parse_timestamp(doc["event_time"]) if doc.get("event_time") else 0
                out[key] = Published(int(doc["segment"]), str(doc.get("segment_name", "")), since)
    except KafkaException as exc:
        raise BrokerError(f"could not read {topic} ({exc})") from None
    finally:
        consumer.close()
    log.info(
        "read the last published segment of %d users from %s in %.1fs",
        len(out),
        topic,
        time.monotonic() - started,
    )
    return out
