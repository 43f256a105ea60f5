"""Read a whole topic, from the start to its current end, for assertions."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition


@dataclass(frozen=True)
class Record:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int


def read_topic(
    bootstrap: str, topic: str, timeout: float = 30.0, quiet_s: float = 1.5
) -> list[Record]:
    """Every record of ``topic``: read past the high watermarks, then until ``quiet_s``
    passes with nothing new (Tansu reports the watermark of a partition as the base
    offset of its last record batch plus one, short of the real end)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        md = c.list_topics(topic, timeout=10)
        parts = sorted(md.topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        pos = {p: 0 for p in parts}
        out: list[Record] = []
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while any(pos[p] < ends[p] for p in parts) or time.monotonic() - quiet_since < quiet_s:
            if time.monotonic() > deadline:
                raise AssertionError(f"reading {topic} timed out at {pos} of {ends}")
            batch = c.consume(1000, 0.2)
            if batch:
                quiet_since = time.monotonic()
            for tp in c.position([TopicPartition(topic, p) for p in parts]):
                if tp.offset >= 0:  # past transaction markers too, unlike offset + 1
                    pos[tp.partition] = tp.offset
            for m in batch:
                if m.error():
                    continue
                out.append(
                    Record(m.key(), m.value(), dict(m.headers() or []), m.partition(), m.offset())
                )
        return out
    finally:
        c.close()


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()
