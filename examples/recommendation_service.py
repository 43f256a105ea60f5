"""Example: a recommendation service that keeps its own view of every user's segment.

The segmenter publishes a message on ``segments.changes`` each time a user enters a
segment, and the same message on the compacted ``segments.current``, which therefore
holds the latest one per user. A service that needs "which segment is user X in?" at
memory speed keeps its own copy, user -> (segment, name, model version), like this:

1. **Bootstrap.** Note where ``segments.changes`` ends now, then read ``segments.current``
   from its beginning to its end: the latest change of every user. A null value (a
   tombstone, written by ``segmenter forget``) means the user was erased: drop them.
2. **Follow.** Read ``segments.changes`` from the offsets noted in step 1, and
   ``segments.current`` on from where step 1 stopped, for tombstones only (its other
   messages repeat ``segments.changes``).

Both read ``read_committed``: the segmenter writes each batch in a Kafka transaction, and
such a reader never sees a change that was rolled back.

**Ordering.** Both topics are keyed by user id, so one user's messages are in order on
one partition of each topic, in the order the segmenter decided them. :class:`SegmentView`
applies a change only if it is newer than what it holds:

- a change whose ``change_id`` it already holds or recently applied is a duplicate (a
  segmenter replaying its input publishes the same change again, byte for byte): skipped;
- a user's first changes on ``segments.changes`` after the bootstrap may be *older* than
  what ``segments.current`` gave (step 2 starts where ``segments.changes`` ended *before*
  step 1): until a user's first newer change, changes are compared by ``emitted_at``
  and older ones skipped. After that, arrival order is decision order and every new
  change applies;
- a tombstone erases only what was decided before it (its Kafka timestamp against
  ``emitted_at``), and a change decided before a tombstone cannot bring the user back;
  a user who shops again after being forgotten gets a new first segment.

Run it against a running segmenter (``make demo`` leaves one running locally)::

    .venv/bin/python -m examples.recommendation_service --bootstrap 127.0.0.1:9092

It prints the users per segment after the bootstrap, then each change as it applies it.
The logic is in :class:`SegmentView` (no I/O) and :class:`SegmentFeed` (the Kafka side).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition


def epoch_ms(iso: str) -> int:
    """Epoch milliseconds of an ISO-8601 time such as a change's ``emitted_at``.

    >>> epoch_ms("2023-11-14T22:13:20.123Z")
    1700000000123
    """
    return round(datetime.fromisoformat(iso).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Held:
    """What the view holds for one user: their latest change.

    Attributes
    ----------
    segment, segment_name, model_version
        As in the change message.
    change_id
        The change's id, to recognise it if it comes again.
    emitted_at_ms
        When the segmenter decided it.
    live
        False while it comes from the bootstrap and ``segments.changes`` has not yet
        brought anything newer for this user: until then, changes are compared by time.
    """

    segment: int
    segment_name: str
    model_version: int
    change_id: str
    emitted_at_ms: int
    live: bool


class SegmentView:
    """User id -> :class:`Held`, kept from change messages and tombstones (no I/O).

    Parameters
    ----------
    remember
        How many applied change ids to remember for de-duplication, besides the one each
        user holds.

    Examples
    --------
    >>> view = SegmentView()
    >>> a = {"change_id": "a", "user_id": "u1", "segment": 1, "segment_name": "new",
    ...      "model_version": 3, "emitted_at": "2026-01-01T00:00:00.000Z"}
    >>> b = {**a, "change_id": "b", "segment": 2, "segment_name": "high_value",
    ...      "emitted_at": "2026-01-02T00:00:00.000Z"}
    >>> view.load("u1", b)  # bootstrap: segments.current holds b
    >>> view.apply(a), view.apply(b), view.get("u1").segment  # older, then a duplicate
    (False, False, 2)
    """

    def __init__(self, remember: int = 100_000) -> None:
        self.users: dict[str, Held] = {}
        #: Tombstone times of erased users (epoch ms), so older changes cannot revive them.
        self.forgotten: dict[str, int] = {}
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._remember = remember
        #: Changes applied, and skipped as duplicates or as older than what was held.
        self.stats: Counter[str] = Counter()

    def get(self, user_id: str) -> Held | None:
        """The user's current segment, or None for a user never seen or erased."""
        return self.users.get(user_id)

    def sizes(self) -> Counter[tuple[int, str]]:
        """Users per (segment, name)."""
        return Counter((h.segment, h.segment_name) for h in self.users.values())

    def _hold(self, msg: Mapping[str, Any], live: bool) -> None:
        user_id, change_id = msg["user_id"], msg["change_id"]
        self.users[user_id] = Held(
            msg["segment"],
            msg["segment_name"],
            msg["model_version"],
            change_id,
            epoch_ms(msg["emitted_at"]),
            live,
        )
        self.forgotten.pop(user_id, None)
        self._recent[change_id] = None
        if len(self._recent) > self._remember:
            self._recent.popitem(last=False)

    def load(self, user_id: str, msg: Mapping[str, Any] | None, timestamp_ms: int = 0) -> None:
        """One record of ``segments.current`` read during the bootstrap (``None``: a
        tombstone written at ``timestamp_ms``). A later record of a user replaces an
        earlier one: the topic is read in order."""
        if msg is None:
            self.forget(user_id, timestamp_ms)
        else:
            self._hold(msg, live=False)

    def apply(self, msg: Mapping[str, Any]) -> bool:
        """One message of ``segments.changes``; True if it changed the view."""
        user_id, change_id = msg["user_id"], msg["change_id"]
        held = self.users.get(user_id)
        if change_id in self._recent or (held is not None and held.change_id == change_id):
            self.stats["duplicate"] += 1
            return False
        emitted = epoch_ms(msg["emitted_at"])
        older_than_held = held is not None and not held.live and emitted < held.emitted_at_ms
        if older_than_held or emitted <= self.forgotten.get(user_id, -1):
            self.stats["older"] += 1
            return False
        self._hold(msg, live=True)
        self.stats["applied"] += 1
        return True

    def forget(self, user_id: str, timestamp_ms: int) -> bool:
        """A tombstone for ``user_id`` written at ``timestamp_ms``; True if it erased them.

        A user whose held change was decided after the tombstone came back (new events
        after ``segmenter forget``) and is kept.
        """
        held = self.users.get(user_id)
        if held is not None and held.emitted_at_ms > timestamp_ms:
            return False
        self.users.pop(user_id, None)
        self.forgotten[user_id] = max(timestamp_ms, self.forgotten.get(user_id, timestamp_ms))
        self.stats["forgotten"] += held is not None
        return held is not None


class SegmentFeed:
    """Keeps a :class:`SegmentView` up to date from the two topics.

    Parameters
    ----------
    config
        librdkafka properties: at least ``bootstrap.servers`` (and any security ones).
    changes_topic, current_topic
        The segmenter's output topics (``SEGMENTER_CHANGES_TOPIC``,
        ``SEGMENTER_CURRENT_TOPIC``).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        changes_topic: str = "segments.changes",
        current_topic: str = "segments.current",
    ) -> None:
        self.changes_topic, self.current_topic = changes_topic, current_topic
        self.view = SegmentView()
        # No consumer group: the view lives in memory and is rebuilt by a bootstrap at
        # every start, so there are no offsets to commit. (The id is required, unused.)
        self._consumer = Consumer(
            {
                "group.id": f"recommendation-view-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                **config,
            }
        )

    def _ends(self, topic: str, timeout: float = 10.0) -> dict[int, tuple[int, int]]:
        """Partition -> (first, end) offsets of ``topic``; read_committed: the end is the
        last stable offset, before any transaction still open."""
        md = self._consumer.list_topics(topic, timeout=timeout).topics[topic]
        if md.error is not None:
            raise KafkaException(md.error)
        c = self._consumer
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout) for p in md.partitions
        }

    def _reached(self, topic: str, ends: Mapping[int, tuple[int, int]]) -> bool:
        positions = self._consumer.position([TopicPartition(topic, p) for p in ends])
        # position() moves past transaction markers too, which an offset + 1 would not.
        return all(
            tp.offset >= ends[tp.partition][1] or ends[tp.partition][1] <= ends[tp.partition][0]
            for tp in positions
        )

    def bootstrap(self, timeout: float = 120.0) -> int:
        """Step 1, then start following (step 2). Returns the number of users held.

        Raises
        ------
        TimeoutError
            If ``segments.current`` could not be read to its end within ``timeout``.
        """
        follow_from = self._ends(self.changes_topic)  # first: see the module's "Ordering"
        ends = self._ends(self.current_topic)
        self._consumer.assign(
            [TopicPartition(self.current_topic, p, OFFSET_BEGINNING) for p in ends]
        )
        deadline = time.monotonic() + timeout
        while not self._reached(self.current_topic, ends):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.current_topic} not read to its end in {timeout}s")
            for msg in self._consumer.consume(1000, 0.5):
                if (key := _key(msg)) is not None:
                    value = msg.value()
                    self.view.load(key, None if value is None else json.loads(value), _ts(msg))
        positions = self._consumer.position([TopicPartition(self.current_topic, p) for p in ends])
        self._consumer.assign(
            [TopicPartition(self.changes_topic, p, end) for p, (_, end) in follow_from.items()]
            # A partition never fetched (empty) has no position yet: follow it from its end.
            + [
                TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else end)
                for tp, (_, end) in zip(positions, ends.values(), strict=True)
            ]
        )
        return len(self.view.users)

    def poll(self, timeout: float = 1.0, max_messages: int = 1000) -> list[str]:
        """Read what arrived (waiting up to ``timeout`` s); the users whose entry changed."""
        changed = []
        for msg in self._consumer.consume(max_messages, timeout):
            if (user_id := _key(msg)) is None:
                continue
            value = msg.value()
            if value is None:  # a tombstone, on either topic
                if self.view.forget(user_id, _ts(msg)):
                    changed.append(user_id)
            elif msg.topic() == self.changes_topic and self.view.apply(json.loads(value)):
                changed.append(user_id)
        return changed

    def caught_up(self) -> bool:
        """Whether everything committed on both topics so far has been read."""
        return self._reached(self.changes_topic, self._ends(self.changes_topic)) and (
            self._reached(self.current_topic, self._ends(self.current_topic))
        )

    def close(self) -> None:
        self._consumer.close()


def _key(msg: Any) -> str | None:
    """The user id a message is about, or None for an error event to pass over."""
    err = msg.error()
    if err is not None:
        if err.fatal():
            raise KafkaException(err)
        return None  # transient (a partition end, a broker reconnecting): librdkafka retries
    key = msg.key()
    return None if key is None else str(key.decode())


def _ts(msg: Any) -> int:
    """The message's Kafka timestamp, epoch ms (when ``segmenter forget`` wrote it)."""
    kind, ms = msg.timestamp()
    return int(ms) if kind != 0 else 0  # 0: TIMESTAMP_NOT_AVAILABLE


def main(argv: list[str] | None = None) -> int:
    """Bootstrap, print the users per segment, then print changes as they come."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    ap.add_argument("--changes-topic", default="segments.changes")
    ap.add_argument("--current-topic", default="segments.current")
    args = ap.parse_args(argv)
    feed = SegmentFeed(
        {"bootstrap.servers": args.bootstrap}, args.changes_topic, args.current_topic
    )
    try:
        print(f"bootstrapped {feed.bootstrap()} users from {args.current_topic}")
        for (segment, name), n in sorted(feed.view.sizes().items()):
            print(f"  segment {segment} ({name}): {n} users")
        while True:
            for user_id in feed.poll():
                held = feed.view.get(user_id)
                now = "forgotten" if held is None else f"{held.segment} ({held.segment_name})"
                print(f"{user_id} -> {now}")
    except KeyboardInterrupt:
        return 0
    except KafkaException as exc:
        err: KafkaError = exc.args[0]
        print(f"error: {err.str()}", file=sys.stderr)
        return 1
    finally:
        feed.close()


if __name__ == "__main__":
    raise SystemExit(main())
