"""Rebuilding what Redis lost from what Kafka retains.

:meth:`Rebuild.check` compares, for the input partitions this process owns, the consumer
group's committed offsets with how far Redis holds every write (``seg:applied``) and the
identity of its key space (its field ``_epoch``), through :func:`stream.state_gaps.find_gaps`. It
runs on every assignment, and again whenever a batch finds Redis holding less than it
wrote (:class:`~stream.errors.StateLostError`, raised in
:class:`~consumers.transaction.BatchTransaction`): a restart without persistence, or a
failover to a replica that lacked the last writes.

For each gap the consumer seeks back to where Redis's writes stop (or to the earliest
offset Kafka retains) and *replays* up to the committed offset: those batches write Redis
and publish and commit nothing, since their changes, dead letters and offsets were
published and committed before. The per-user offset fence makes the replay idempotent
for users whose state survived. While a partition replays, ``/readyz`` is false, sweeps
and queued users wait, and ``segmenter_rebuilding_partitions`` counts it.

What readers were told is the reference: replayed users keep the segment of their last
change on ``segments.current``, and before the replay, users of the gap's partitions whose
stored segment is not that one get it back (their change was made without an event, so
no input replays it). Until every input topic of a partition number is replayed, new
messages of that number wait (paused), so no change is decided on half a user's history.

Where Kafka no longer retains what Redis lost, ``SEGMENTER_ON_LOST_HISTORY`` decides:
``stop`` (the default) exits with :class:`HistoryLostError`, naming the partitions and
offsets; ``continue`` rebuilds what there is, says what is missing, and marks the users
it rebuilt there ``state_incomplete``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from consumers.http import Health
from consumers.metrics import Metrics
from consumers.model_sync import ModelSync
from consumers.published import read_published
from consumers.transaction import BatchTransaction
from state.redis_store import RedisStore
from stream.batch import UserUpdate
from stream.errors import BrokerError, SegmenterError
from stream.features import compute_features
from stream.messages import iso_ms
from stream.settings import Settings
from stream.state_gaps import Gap, describe, find_gaps, heard_of, id_floor

log = logging.getLogger("segmenter")

__all__ = ["HistoryLostError", "Rebuild"]

#: Users read from Redis at a time when bringing states in line with segments.current.
_CHUNK = 2_000


class HistoryLostError(SegmenterError):
    """Redis lost writes that Kafka no longer retains, and the settings say stop."""


class Rebuild:
    """The partitions being replayed, each up to the offset the group had committed."""

    def __init__(
        self,
        settings: Settings,
        store: RedisStore,
        metrics: Metrics,
        health: Health,
        txn: BatchTransaction,
        sync: ModelSync,
    ) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.health = health
        self.txn = txn
        self.sync = sync
        #: (topic, partition) -> the committed offset the replay ends at.
        self.ends: dict[tuple[str, int], int] = {}
        self._started = 0.0
        self._replayed = 0
        self._oldest_ms: int | None = None
        #: Partitions whose end of replay the last split reached.
        self._reached: set[tuple[str, int]] = set()
        #: The process's consumer, once it exists: held partitions are paused on it.
        self.consumer: Consumer | None = None
        #: Partitions paused until every topic of their number is replayed.
        self._paused: set[tuple[str, int]] = set()

    @property
    def active(self) -> bool:
        """Whether any owned partition is being replayed."""
        return bool(self.ends)

    def check(self, consumer: Consumer, parts: list[TopicPartition], assigning: bool) -> None:
        """Compare Redis with the committed offsets of ``parts`` and replay what it lost.

        ``assigning``: called from the assignment callback, where the new positions are
        given by assigning again; otherwise the consumer seeks. Failures to reach Redis or
        the broker are logged and leave the check to the next batch, which will not run
        before it succeeds.
        """
        s = self.settings
        inputs = [tp for tp in parts if tp.topic in (s.clicks_topic, s.purchases_topic)]
        if not inputs:
            return
        try:
            committed = consumer.committed(inputs, timeout=10)
            earliest = {
                f"{tp.topic}:{tp.partition}": consumer.get_watermark_offsets(tp, timeout=10)[0]
                for tp in inputs
            }
        except KafkaException as exc:
            self.txn.epoch = None  # the next batch asks again
            log.warning("committed offsets not read (%s); Redis is checked again later", exc)
            return
        by_pos = {f"{tp.topic}:{tp.partition}": (tp.offset, tp.metadata) for tp in committed}
        try:
            epoch, held = self.store.read_applied(by_pos)
            gaps = find_gaps(by_pos, epoch, held, earliest)
            self.txn.epoch = self.store.ensure_epoch()
        except SegmenterError as exc:
            self.txn.epoch = None
            self.metrics.redis_errors.inc()
            log.warning("Redis not checked against the committed offsets (%s); again later", exc)
            return
        self.sync.raise_id_floor(*id_floor(meta for _, meta in by_pos.values()))
        for pos in by_pos:
            if pos in held:
                self.txn.held[pos] = held[pos]
            else:
                self.txn.held.pop(pos, None)
        if not gaps:
            return
        lost = [g for g in gaps if g.lost is not None]
        for g in gaps:
            self.metrics.state_gaps.labels(g.kind).inc()
        for g in lost:
            assert g.lost is not None
            self.metrics.lost_offsets.inc(g.lost[1] - g.lost[0])
        log.warning("Redis holds less than the consumer group committed: %s", describe(gaps))
        if lost and s.on_lost_history == "stop":
            raise HistoryLostError(
                "Redis lost writes that Kafka no longer retains: "
                + describe(lost)
                + ". The users of those partitions would be rebuilt without part of their "
                "history. Set SEGMENTER_ON_LOST_HISTORY=continue to rebuild what Kafka has "
                "and carry on, or restore Redis from a backup."
            )
        if not self.ends:
            self._started = time.monotonic()
            self._replayed = 0
            self._oldest_ms = None
        if lost:
            # ``continue``: what Kafka still has is rebuilt, and its users are marked.
            self.txn.incomplete |= {int(g.position.rpartition(":")[2]) for g in lost}
        if self.txn.published is None:
            self.txn.published = read_published(s)
        try:
            self._heard_of(gaps, by_pos)
        except SegmenterError as exc:
            self.txn.epoch = None  # the next batch checks again
            log.warning("Redis not brought in line with %s (%s); again later", s.current_topic, exc)
            return
        resume: dict[tuple[str, int], int] = {}
        for g in gaps:
            topic, _, num = g.position.rpartition(":")
            self.ends[(topic, int(num))] = g.committed
            resume[(topic, int(num))] = g.resume
        try:
            if assigning:
                for tp in parts:
                    tp.offset = resume.get((tp.topic, tp.partition), tp.offset)
                consumer.assign(parts)
            else:
                for (name, number), off in resume.items():
                    consumer.seek(TopicPartition(name, number, off))
        except KafkaException as exc:
            raise BrokerError(f"could not rewind to rebuild Redis ({exc})") from None
        self._gauge()

    def _heard_of(self, gaps: list[Gap], by_pos: dict[str, tuple[int, str | None]]) -> None:
        """Give users of the gaps' partitions whose stored segment is not the one readers
        last heard of that one (:func:`~stream.state_gaps.heard_of`): changes made without
        an event in what Redis lost are not in Kafka's input to replay. Reads every user
        of ``segments.current``, in chunks, once per rebuild."""
        published = self.txn.published or {}
        numbers = {int(g.position.rpartition(":")[2]) for g in gaps}
        committed = self.txn.committed_with_marks(numbers)
        committed.update({pos: off for pos, (off, _) in by_pos.items()})
        wm, horizon = self.sync.watermark.value, self.settings.rfm_horizon
        users = list(published)
        fixed = 0
        for i in range(0, len(users), _CHUNK):
            found = heard_of(
                self.store.load_states(users[i : i + _CHUNK]), published, numbers, committed
            )
            if not found:
                continue
            self.store.write_updates(
                [
                    UserUpdate(u, st, compute_features(st, wm, horizon), was, None, None)
                    for u, st, was in found
                ],
                self.sync.model.version,
                wm,
            )
            fixed += len(found)
        if fixed:
            log.info(
                "%d users given back the segment of their last published change (made "
                "without an event of theirs, in what Redis lost)",
                fixed,
            )

    def split(
        self,
        msgs: list[Message],
        eofs: Mapping[tuple[str, int], int] | None = None,
    ) -> tuple[list[Message], list[Message], dict[tuple[str, int], int]]:
        """``msgs`` as (to replay, to process as usual, held back): those below their
        partition's end of replay, the rest, and where to read again the messages held.

        A user's events are in the input partition of one number in every input topic, so
        no message of a number is processed as usual while one of its topics still replays:
        the user's state is not whole yet, and a replayed user takes the segment readers
        heard of last, which a change made meanwhile would contradict. Those messages are
        held back (``{(topic, partition): first offset}``) for the consumer to read again.

        A partition stops replaying once the replayed messages before its end are written
        (:meth:`replayed`), not before: when ``msgs`` reach its end, or when the consumer
        reported the end of the partition (``eofs``: the consumer's position there, taken
        with the batch) at or past it. One poll can return the rest of a replay *and* the
        end of the partition after it; the rest is replayed all the same. An end reported
        before the rewind for the replay, and delivered after it, finds the position still
        below: it ends nothing.
        """
        if not self.ends:
            return [], msgs, {}
        replay: list[Message] = []
        rest: list[Message] = []
        reached: set[tuple[str, int]] = set()
        for m in msgs:
            key = (str(m.topic()), int(m.partition() or 0))
            end = self.ends.get(key)
            if end is not None and m.error() is None and int(m.offset() or 0) < end:
                replay.append(m)
            else:
                if end is not None and m.error() is None:
                    reached.add(key)
                rest.append(m)
        for key, position in (eofs or {}).items():
            end = self.ends.get(key)
            if end is not None and position >= end:
                reached.add(key)
        self._reached = reached
        # Numbers with a topic whose replay this poll does not end.
        pending = {key[1] for key in self.ends if key not in reached}
        live: list[Message] = []
        held: dict[tuple[str, int], int] = {}
        for m in rest:
            key = (str(m.topic()), int(m.partition() or 0))
            if m.error() is None and key[1] in pending:
                held.setdefault(key, int(m.offset() or 0))
            else:
                live.append(m)
        if not replay:
            for key in reached:
                self.finish(key)
        return replay, live, held

    def hold(self, held: Mapping[tuple[str, int], int]) -> None:
        """Rewind the partitions :meth:`split` held back to their first message held, and
        pause them until every topic of their number is replayed (:meth:`finish`), so the
        consumer does not fetch them again and again meanwhile."""
        if not held or self.consumer is None:
            return
        # A partition that cannot be sought or paused was revoked: its next owner rebuilds.
        with contextlib.suppress(KafkaException):
            for (topic, part), off in held.items():
                self.consumer.seek(TopicPartition(topic, part, off))
            # Every time: an assignment since may have resumed it.
            self.consumer.pause([TopicPartition(*key) for key in held])
        self._paused.update(held)

    def _release(self, number: int) -> None:
        """Resume the held partitions of input partition ``number``."""
        keys = [k for k in self._paused if k[1] == number]
        if not keys:
            return
        self._paused.difference_update(keys)
        if self.consumer is not None:
            with contextlib.suppress(KafkaException):
                self.consumer.resume([TopicPartition(*key) for key in keys])

    def replayed(
        self, last: dict[tuple[str, int], int], events: int, oldest_ms: int | None
    ) -> None:
        """Count a replayed batch; partitions whose replay it ended stop replaying."""
        self._replayed += events
        self.metrics.replayed_events.inc(events)
        if oldest_ms is not None and (self._oldest_ms is None or oldest_ms < self._oldest_ms):
            self._oldest_ms = oldest_ms
        done = {key for key, off in last.items() if off + 1 >= self.ends.get(key, off + 2)}
        for key in done | self._reached:
            self.finish(key)
        self._reached = set()

    def finish(self, key: tuple[str, int]) -> None:
        """Partition ``key`` replayed up to its end (or reached its end of log)."""
        end = self.ends.pop(key, None)
        if end is None:
            return
        self._gauge()
        log.info("%s:%d replayed up to offset %d", key[0], key[1], end)
        if not any(k[1] == key[1] for k in self.ends):
            self._release(key[1])
        if self.ends:
            return
        self.txn.published = None
        self.txn.incomplete = set()
        took = time.monotonic() - self._started
        oldest = ""
        if self._oldest_ms is not None:
            oldest = (
                f"; the oldest event replayed is from {iso_ms(self._oldest_ms)} (features "
                f"reach back 365 days, RFM over {self.settings.rfm_horizon})"
            )
        log.info(
            "rebuilt Redis from Kafka: %d events replayed in %.1fs%s", self._replayed, took, oldest
        )

    def forget(self, parts: list[TopicPartition]) -> None:
        """Revoked partitions: their next owner finds the same gap and replays it."""
        for tp in parts:
            self.ends.pop((tp.topic, tp.partition), None)
            self._paused.discard((tp.topic, tp.partition))
        self._gauge()

    def _gauge(self) -> None:
        self.health.rebuilding = len(self.ends)
        self.metrics.rebuilding.set(len(self.ends))
