"""The segmenter process: consume, decide, publish, write, commit.

One loop turn is one micro-batch, in this order:

1. consume up to ``batch_max_events`` messages (or what arrives within ``batch_timeout_s``);
2. decode each; bad ones become dead letters (values, never exceptions);
3. begin a Kafka transaction;
4. read the batch's users' states from Redis (one round trip);
5. :func:`stream.batch.process_batch`: features, scaling, K-Means, hysteresis, changes;
6. produce dead letters and segment changes (and republish changes whose commit is in
   doubt);
7. write user states with the input offsets that produced them, fenced by those offsets,
   then the membership moves (two round trips);
8. send the input offsets to the transaction and commit it.

Between batches, every ``model_sync_interval_s``, the process merges what its model
learned into the shared checkpoint in Redis and adopts the result
(:mod:`stream.checkpoint`): all processes decide with the same centres and segment ids.

A crash or failure anywhere before 8 leaves nothing visible to ``read_committed`` readers
and nothing committed: the batch is consumed again, users already written skip the
events they applied, and changes triggered by those events are republished as stored.
Without transactions (``transactional=false``, for brokers without them) step 8 becomes a
producer flush before 7 and a consumer commit after it.
"""

from __future__ import annotations

import calendar
import contextlib
import logging
import math
import random
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from threading import Event as StopFlag
from typing import Any

import numpy as np
import orjson
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import CollectorRegistry

from consumers import topics
from consumers.http import Health, serve
from consumers.metrics import Metrics
from state.redis_store import RedisStore
from stream.batch import BatchResult, Clock, SegmentNames, partition_of, process_batch
from stream.checkpoint import merge, refit_due, retired_ids
from stream.errors import BrokerError, ModelError, RedisError, SegmenterError
from stream.events import ADVICE, DeadLetter, Event, Limits, decode, dominant_reason
from stream.feature_registry import DAY_MS
from stream.model import SegmentModel
from stream.naming import profiles
from stream.privacy import user_id_mapper
from stream.reassessment import QueueEntry
from stream.selection import silhouette
from stream.settings import Settings
from stream.watermark import Watermark

log = logging.getLogger("segmenter")

_E2E_SAMPLES = 100
#: Sampled users the live silhouette gauge is computed on (it is quadratic).
_QUALITY_SAMPLE = 1000
#: At shutdown, how long queued users may take to get their segment.
_DRAIN_S = 20.0


@dataclass
class RunStats:
    """Totals of one run, for the CLI and tests."""

    messages: int = 0
    events_applied: int = 0
    dead_letters: int = 0
    changes: int = 0
    moves: int = 0  # changes of users who already had a segment
    swept: int = 0  # users re-decided because their timer came due
    users_updated: int = 0
    batches: int = 0
    started_at: float = field(default_factory=time.monotonic)
    first_batch_at: float | None = None  # monotonic time the first batch arrived
    last_batch_at: float | None = None  # monotonic time the last batch was committed


def consumer_config(settings: Settings) -> dict[str, Any]:
    return {
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # range assigns partition N of every subscribed topic to the same member: with
        # co-partitioned inputs, all of a user's clicks and purchases reach one process.
        "partition.assignment.strategy": "range",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "fetch.min.bytes": 1,
        "statistics.interval.ms": 5000,
        "isolation.level": "read_committed",
        **settings.kafka_client_config(),
    }


def transactional_id(settings: Settings) -> str:
    """Stable across restarts of one process slot, so a restart fences its predecessor."""
    instance = settings.instance_id or f"{socket.gethostname()}-{settings.metrics_port}"
    return f"segmenter-{settings.group_id}-{instance}"


def producer_config(settings: Settings) -> dict[str, Any]:
    txn: dict[str, Any] = {}
    if settings.transactional:
        txn = {
            "transactional.id": transactional_id(settings),
            "transaction.timeout.ms": 15000,
        }
    return {
        **txn,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        **settings.kafka_client_config(),
    }


class Segmenter:
    """One member of the consumer group, wired to Redis, the producer and metrics."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        for topic in (settings.deadletter_topic, settings.changes_topic, settings.current_topic):
            self.metrics.produce_errors.labels(topic)  # exported as 0 before any error
        self.health = Health()
        self.limits = Limits(
            max_event_bytes=settings.max_event_bytes,
            max_future_skew_ms=int(settings.max_future_skew_s * 1000),
            min_ts_ms=calendar.timegm((settings.min_event_year, 1, 1, 0, 0, 0)) * 1000,
        )
        self.store = RedisStore.from_settings(settings)
        # Raw user id -> its pseudonym, the id stored and published; None: ids as they are.
        self._stored_id = user_id_mapper(settings.user_id_key)
        self.model = SegmentModel(settings.model_params())
        self.names = SegmentNames()
        #: The group's event-time clock: every feature is taken as of it.
        self.watermark = Watermark(
            int(settings.watermark_lateness_s * 1000), int(settings.watermark_idle_s * 1000)
        )
        self._last_watermark_sync = 0.0
        self._sample_rng = random.Random(settings.seed)
        self._sample_size = 0
        self._last_refit_wall = 0.0
        #: Whether every user of this process's partitions is to be re-decided (the
        #: segments changed).
        self._resweep = False
        #: The watermark at which the sweep last found nobody due (-1: look again).
        self._nothing_due_at = -1
        self.stats = RunStats()
        self._delivery_errors: list[str] = []
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._last_catalogue = 0.0
        self._last_sync = time.monotonic()
        self._reassess_pending = False
        #: Retired segments whose members are still to be queued, and the retiring version.
        self._to_queue: dict[int, int] = {}
        self._moves_at_refresh = (0, 0)
        self._failures = 0
        #: Dead-letter reasons already reported as covering most of a batch.
        self._reasons_said: set[str] = set()
        # Input positions ("topic:partition") -> offset below which this process has
        # committed their batches; stored changes triggered below it are delivered.
        self._committed: dict[str, int] = {}
        #: Assigned input positions with a backlog, and the offset it ends at.
        self._backlog_ends: dict[str, int] = {}
        self._stop = StopFlag()
        self._renew_producer = False
        self._last_kafka_error: int | None = None

    # -- start-up -------------------------------------------------------------------------

    def start(self) -> None:
        """Check Redis and the topics, restore the model, and subscribe."""
        s = self.settings
        self.store.ping()
        advice = self.store.encoding_advice()
        if advice:
            log.info(advice)
        admin = topics.admin_client(s)
        counts = topics.partition_counts(admin, s.kafka_bootstrap)
        partitions = topics.check_input_topics(counts, s)
        created = topics.ensure_output_topics(admin, counts, s, partitions)
        if created:
            log.info("created output topics: %s", ", ".join(created))
        self._sample_size = self.store.sample_size()
        checkpoint = self.store.load_model()
        if checkpoint is not None:
            self.model.adopt(checkpoint)
            self.names.refresh(self.model)
            self._reassess_pending = self.model.ready
            log.info(
                "adopted model version %d (%d segments)", self.model.version, self.model.n_clusters
            )
        self._model_gauges()
        self._producer = self._new_producer()
        self._consumer = Consumer(
            {
                **consumer_config(s),
                # The end of a partition ends its backlog (see _past_ends).
                "enable.partition.eof": True,
                "stats_cb": self._on_stats,
                "error_cb": self._on_kafka_error,
            }
        )
        self._consumer.subscribe(
            [s.clicks_topic, s.purchases_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        self.health.started = True

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            # After the brokers come back, a transactional producer can keep a stale
            # group coordinator and block in send_offsets_to_transaction past its timeout
            # (librdkafka issues 5456 and 5511): start a fresh producer before the next
            # batch. Its init_transactions fences the old one.
            self._renew_producer = True
        if err.code() != self._last_kafka_error:
            log.warning("kafka: %s", err.str())
        self._last_kafka_error = err.code()

    def _new_producer(self) -> Producer:
        producer = Producer({**producer_config(self.settings), "error_cb": self._on_kafka_error})
        if self.settings.transactional:
            try:
                # Aborts whatever a previous incarnation with this id left open.
                producer.init_transactions(30)
            except KafkaException as exc:
                raise BrokerError(
                    f"could not start Kafka transactions ({exc.args[0].str()}); a broker "
                    "without transaction support needs SEGMENTER_TRANSACTIONAL=false"
                ) from None
        return producer

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self.metrics.assigned_partitions.set(len(parts))
        self._nothing_due_at = -1  # new partitions, new timers
        self._backlog_ends = self._backlog(consumer, parts)
        now_ms = int(time.time() * 1000)
        for pos in self._backlog_ends:
            self.watermark.behind(pos, now_ms)
        log.info("assigned %s", _fmt_parts(parts))
        if self._backlog_ends:
            log.info(
                "%d of them have a backlog: the watermark waits for each", len(self._backlog_ends)
            )

    def _backlog(self, consumer: Consumer, parts: list[TopicPartition]) -> dict[str, int]:
        """The end offset of each assigned partition with records left to read.

        The consumer reads one partition's fetch after another, so in a backlog a partition
        read first can be days of event time ahead of one not read yet: such a partition is
        never idle to the watermark (:meth:`Watermark.behind`) until it is read to here.
        """
        try:
            committed = consumer.committed(parts, timeout=10)
        except KafkaException as exc:
            log.warning("committed offsets not read (%s): the watermark may run ahead", exc)
            return {}
        ends: dict[str, int] = {}
        for tp in committed:
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
            except KafkaException as exc:
                log.warning("end of %s not read (%s)", _fmt_parts([tp]), exc)
                continue
            start = tp.offset if tp.offset >= 0 else low
            if high > start:
                ends[f"{tp.topic}:{tp.partition}"] = high
        return ends

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        # Batches are committed before the next poll, so nothing is in flight to drop.
        self.metrics.assigned_partitions.set(0)
        for tp in parts:
            self._committed.pop(f"{tp.topic}:{tp.partition}", None)
            self._backlog_ends.pop(f"{tp.topic}:{tp.partition}", None)
            # The next owner moves the partition's mark on: read it again if it comes back.
            self._committed.pop(self._mark(tp.partition), None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        log.info("revoked %s", _fmt_parts(parts))

    def _on_stats(self, raw: str) -> None:
        # librdkafka's own consumer_lag counts from the committed offset it last fetched,
        # which it never learns again when offsets are committed in the producer's
        # transaction. Count from the loop's position instead (a batch commits before the
        # next poll), else the committed offset, else the start (auto.offset.reset), up to
        # the last stable offset (read_committed).
        stats = orjson.loads(raw)
        for tname, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                end = p.get("ls_offset", -1)
                if pid == "-1" or not p.get("desired") or end < 0:
                    continue
                fields = ("app_offset", "committed_offset", "lo_offset")
                pos = next((p[f] for f in fields if p.get(f, -1) >= 0), None)
                if pos is not None:
                    self.metrics.consumer_lag.labels(tname, pid).set(max(end - pos, 0))

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: StopFlag, idle_exit_s: float | None = None) -> RunStats:
        """Consume until ``stop`` is set (or nothing arrived for ``idle_exit_s``)."""
        assert self._consumer is not None, "call start() first"
        self._stop = stop
        s = self.settings
        last_data = time.monotonic()
        while not stop.is_set():
            self.health.beat()
            msgs = self._consumer.consume(s.batch_max_events, s.batch_timeout_s)
            if msgs:
                self.handle(msgs)
                last_data = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                break
            self._housekeeping()
        self.sync_model(final=True)
        # Users queued for a segment (warm-up, retired segments) get it before exit, and
        # so do stragglers the catalogue finds in retired segments (moved there by a
        # process on an older version, after the members were listed).
        self.refresh_catalogue()
        self._queue_retired()
        self._reassess_pending = self.model.ready
        deadline = time.monotonic() + _DRAIN_S
        while self._reassess_pending and self.model.ready and time.monotonic() < deadline:
            self.reassess_users()
        self.refresh_catalogue()
        return self.stats

    def _past_ends(self, msgs: list[Message]) -> list[Message]:
        """``msgs`` without the ends of partitions, each of which ends that partition's
        backlog (offsets alone cannot tell: transaction markers take offsets too)."""
        out = []
        for m in msgs:
            err = m.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                self._backlog_ends.pop(f"{m.topic()}:{m.partition()}", None)
            else:
                out.append(m)
        return out

    def handle(self, msgs: list[Message]) -> BatchResult:
        """Process one batch of messages end to end, then commit their offsets.

        If any step fails (Redis or the broker away, a delivery refused, a transaction
        fenced), nothing is committed: the transaction is aborted, the consumer is rewound
        to the batch's first offsets, and the batch is consumed again after a backoff.
        Replaying is safe, so recovery needs no special path.
        """
        msgs = self._past_ends(msgs)
        started = time.monotonic()
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = started
        now_ms = int(time.time() * 1000)
        by_user: dict[str, list[Event]] = defaultdict(list)
        dead: list[DeadLetter] = []
        first: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], int] = {}
        high: dict[tuple[str, int], int] = {}  # highest event time per input partition
        for m in msgs:
            err = m.error()
            if err is not None:
                log.warning("consume error: %s", err.str())
                continue
            topic, part, off = str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)
            first.setdefault((topic, part), off)
            last[(topic, part)] = off
            r = decode(m.value(), m.key(), topic, part, off, now_ms, self.limits)
            if isinstance(r, DeadLetter):
                dead.append(r)
            else:
                by_user[r.user_id].append(r)
                if r.ts_ms > high.get((topic, part), -1):
                    high[(topic, part)] = r.ts_ms
        if not last:
            return BatchResult()
        for (topic, part), ts in high.items():
            self.watermark.observe(f"{topic}:{part}", ts, now_ms)
        for (topic, part), off in last.items():
            end = self._backlog_ends.get(f"{topic}:{part}")
            if end is not None and off + 1 >= end:
                del self._backlog_ends[f"{topic}:{part}"]
        for pos in self._backlog_ends:
            self.watermark.behind(pos, now_ms)
        self.watermark.advance(now_ms)
        self._say_dead_letters(dead, len(msgs))
        if self._stored_id is not None:
            # Once per user of the batch (after decode checked the key against the raw
            # id), before anything is read, stored or published.
            by_user = {self._stored_id(u): evs for u, evs in by_user.items()}
        try:
            result = self._apply(by_user, dead, last, now_ms)
        except (SegmenterError, KafkaException) as exc:
            self._recover(exc, first)
            return BatchResult()
        self._failures = 0
        self._record(msgs, dead, result, started)
        return result

    def _say_dead_letters(self, dead: list[DeadLetter], total: int) -> None:
        """Log once per reason when most of a batch is dead-lettered for that reason."""
        found = dominant_reason(dead, total)
        if found is None or found[0] in self._reasons_said:
            return
        reason, n = found
        self._reasons_said.add(reason)
        example = next(d.detail for d in dead if d.reason == reason)
        log.warning(
            "%d of %d messages in a batch went to %s as %s (e.g. %s): %s. Said once per "
            "reason; segmenter_dead_letters_total{reason} keeps counting.",
            n,
            total,
            self.settings.deadletter_topic,
            reason,
            example,
            ADVICE.get(reason, "see the dead letters' detail header"),
        )

    def _apply(
        self,
        by_user: dict[str, list[Event]],
        dead: list[DeadLetter],
        last: dict[tuple[str, int], int],
        now_ms: int,
        reassess: dict[str, QueueEntry] | None = None,
        sweep: dict[str, int] | None = None,
    ) -> BatchResult:
        """One batch in one transaction: read, decide, publish, write, commit offsets; then
        what the commit settles (queue entries, timers, the user sample)."""
        assert self._producer is not None and self._consumer is not None
        if self._renew_producer:
            self._renew_producer = False
            self._producer = self._new_producer()
            log.info("brokers were all down: started a fresh producer")
        txn = self.settings.transactional
        if txn:
            self._producer.begin_transaction()
        states = self.store.load_states([*by_user, *(reassess or {}), *(sweep or {})])
        # Changes made without an event are stored at a mark; whether their transaction
        # committed is the group's committed mark (known for every owned partition).
        self._load_marks({partition_of(st) for st in states.values() if st and st.offsets})
        marks: dict[str, tuple[str, int]] = {}
        for u in (*(reassess or {}), *(sweep or {})):
            st = states.get(u)
            if st is not None and st.offsets:
                pos = self._mark(partition_of(st))
                marks[u] = (pos, self._committed[pos])
        for pos, seq in set(marks.values()):
            # Committed with the batch: the group's mark moves past every change it made.
            last[(self.settings.marks_topic, int(pos.rpartition(":")[2]))] = seq
        clock = Clock(self.watermark.value, self.settings.rfm_horizon)
        result = process_batch(
            by_user,
            states,
            self.model,
            self.names,
            self.settings.hysteresis_margin,
            self.settings.dedupe_window,
            now_ms,
            reassess=list(reassess or {}),
            queued=reassess,
            committed=self._committed,
            clock=clock,
            sweep=list(sweep or {}),
            timers=sweep,
            marks=marks,
            mark_topic=self.settings.marks_topic,
        )
        self._publish(dead, result)
        if self.model.unassigned:
            # Queued with the batch, before its offsets commit: a crash cannot lose them.
            self.store.queue(self.model.unassigned, self.model.version)
            self.model.unassigned = []
        if not txn:
            self._flush()
        written = self.store.write_updates(
            result.updates, self.model.version, now_ms, clock.watermark_ms
        )
        if written.fenced:
            self.metrics.fenced_writes.inc(written.fenced)
            log.warning("%d user writes fenced off: newer state exists", written.fenced)
        offsets = [TopicPartition(t, p, off + 1) for (t, p), off in last.items()]
        if txn:
            if offsets:
                self._producer.send_offsets_to_transaction(
                    offsets, self._consumer.consumer_group_metadata(), 30
                )
            self._producer.commit_transaction(60)
            if self._delivery_errors:
                raise BrokerError(f"delivery failed: {'; '.join(self._delivery_errors[:3])}")
        elif offsets:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        for tp in offsets:
            self._committed[f"{tp.topic}:{tp.partition}"] = tp.offset
        # Committed: queue entries whose users were decided leave the queue, and those whose
        # in-doubt assignment went out again get a fresh token; timers move on to each
        # user's next due time. (A crash right here leaves them as they were: a change made
        # without an event would be published once more.)
        fenced = written.fenced_users
        self.store.settle({u: v for u, v in result.settle.items() if u not in fenced})
        self.store.set_timers({u: v for u, v in result.timers.items() if u not in fenced})
        new_users = [u for u in by_user if states.get(u) is None and u not in fenced]
        if new_users:
            self._sample_size = self.store.sample_users(
                new_users, self.settings.reservoir_size, self._sample_rng
            )
        self.metrics.republished_changes.inc(result.republished)
        return result

    def _mark(self, partition: int) -> str:
        """The mark position of an input partition (see :func:`stream.batch.process_batch`)."""
        return f"{self.settings.marks_topic}:{partition}"

    def _load_marks(self, partitions: set[int]) -> None:
        """Read the group's committed marks of ``partitions`` this process does not know."""
        assert self._consumer is not None
        missing = [p for p in partitions if self._mark(p) not in self._committed]
        if not missing:
            return
        topic = self.settings.marks_topic
        try:
            got = self._consumer.committed([TopicPartition(topic, p) for p in missing], 10)
        except KafkaException as exc:
            raise BrokerError(f"could not read the committed marks ({exc.args[0].str()})") from None
        for tp in got:
            self._committed[self._mark(tp.partition)] = max(tp.offset, 0)

    def _recover(self, exc: Exception, first: dict[tuple[str, int], int]) -> None:
        """Abort what the failed batch started, rewind, and back off before retrying."""
        assert self._producer is not None and self._consumer is not None
        self._failures += 1
        self.metrics.batch_failures.inc()
        if isinstance(exc, RedisError):
            self.metrics.redis_errors.inc()
        if self.settings.transactional:
            try:
                self._producer.abort_transaction(30)
            except KafkaException as abort_exc:
                if abort_exc.args[0].fatal():
                    raise BrokerError(
                        f"the producer was fenced or failed fatally ({abort_exc.args[0].str()}):"
                        " another process took over this transactional id; exiting"
                    ) from None
        for (topic, part), off in first.items():
            with contextlib.suppress(KafkaException):
                self._consumer.seek(TopicPartition(topic, part, off))
        delay = min(0.2 * 2 ** (self._failures - 1), 5.0)
        log.warning("batch not committed (%s); replaying it in %.1fs", exc, delay)
        self._stop.wait(delay)

    def _publish(self, dead: list[DeadLetter], result: BatchResult) -> None:
        s = self.settings
        self._delivery_errors.clear()
        for d in dead:
            headers: list[tuple[str, str | bytes | None]] = [
                ("reason", d.reason.encode()),
                ("detail", d.detail.encode()),
                ("source_topic", d.topic.encode()),
                ("source_partition", str(d.partition).encode()),
                ("source_offset", str(d.offset).encode()),
            ]
            self._produce(s.deadletter_topic, d.key, d.value, headers)
        for u in result.updates:
            key = u.user_id.encode()
            if u.republish is not None:
                cid = orjson.loads(u.republish)["change_id"]
                self._produce(s.changes_topic, key, u.republish, [("change_id", cid)])
                self._produce(s.current_topic, key, u.republish, [("change_id", cid)])
            if u.change is not None:
                value = u.change.to_json()
                headers = [("change_id", u.change.change_id)]
                self._produce(s.changes_topic, key, value, headers)
                self._produce(s.current_topic, key, value, headers)

    def _flush(self) -> None:
        assert self._producer is not None
        remaining = self._producer.flush(60)
        if remaining or self._delivery_errors:
            raise BrokerError(
                f"{remaining} messages undelivered after 60s and {len(self._delivery_errors)} "
                f"failed ({'; '.join(self._delivery_errors[:3])})"
            )

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]],
    ) -> None:
        assert self._producer is not None
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=self._on_dr)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _on_dr(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err.str()}")
            self.metrics.produce_errors.labels(msg.topic()).inc()

    def _record(
        self, msgs: list[Message], dead: list[DeadLetter], result: BatchResult, started: float
    ) -> None:
        m = self.metrics
        done = time.time()
        m.batch_duration.observe(time.monotonic() - started)
        m.batch_size.observe(len(msgs))
        m.last_batch_time.set(done)
        step = max(1, len(msgs) // _E2E_SAMPLES)
        for msg in msgs[::step]:
            kind, ts = msg.timestamp()
            if kind != 0 and ts > 0:
                m.end_to_end.observe(max(0.0, done - ts / 1000))
        for d in dead:
            m.dead_letters.labels(d.reason).inc()
            m.events.labels(d.topic, "unknown", "dead_letter").inc()
        for (topic, etype), n in result.applied.items():
            m.events.labels(topic, etype, "processed").inc(n)
        for outcome, n in (
            ("duplicate", result.duplicates),
            ("replayed", result.replayed),
            ("late", result.late),
        ):
            if n:
                m.events.labels("all", "all", outcome).inc(n)
        changes, moves = result.changes, result.moves
        m.segment_moves.inc(moves)
        m.segment_changes.inc(changes)
        m.users_updated.inc(sum(1 for u in result.updates if u.write))
        st = self.stats
        st.messages += len(msgs)
        st.events_applied += sum(result.applied.values())
        st.dead_letters += len(dead)
        st.changes += changes
        st.moves += moves
        st.users_updated += sum(1 for u in result.updates if u.write)
        st.batches += 1
        st.last_batch_at = time.monotonic()

    # -- periodic work ---------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        # Until the warm start, sync after every batch: the sooner the user sample is
        # full, the sooner users get segments.
        # After it, sync every model_sync_interval_s, or sooner when this process has learned
        # from model_sync_updates users (a backlog moves through days of event time fast).
        s = self.settings
        warming = not self.model.ready and self.model.dirty
        if (
            warming
            or self.model.observed >= s.model_sync_updates
            or now - self._last_sync >= s.model_sync_interval_s
        ):
            self.sync_model()
        if now - self._last_watermark_sync >= s.watermark_sync_interval_s:
            self.sync_watermark()
        if self._caught_up(now):
            self._last_refit_wall = now  # one try per interval, even if Redis is away
            self.sync_model(caught_up=True)
        self._queue_retired()
        if self._reassess_pending and self.model.ready:
            self.reassess_users()
        if self.model.ready:
            if self._resweep:
                self._make_all_due()
            self.sweep_timers()
        if now - self._last_catalogue >= self.settings.catalogue_interval_s:
            self.refresh_catalogue()
            # Queued users whose partitions came to this process in a rebalance.
            self._reassess_pending = self.model.ready

    def sync_model(self, caught_up: bool = False, final: bool = False) -> None:
        """Merge what this process learned into the shared model, and adopt the result.

        The merge runs under a version fence (:meth:`RedisStore.commit_model`), so when
        several processes sync at once each merge sees the others' and none is lost. A
        process with nothing new only adopts a newer version if there is one. If Redis is
        away the local learning is kept and merged at the next sync.

        ``caught_up``: the input is idle and the watermark moved a day or more since the
        last fit: refit now (if it lowers the inertia), so a backlog just drained, or a
        quiet night, ends on centres fitted to the users as they are now.

        ``final``: the process is stopping; it merges its learning but changes no segment
        (no re-seed, no refit), as it could no longer move the members of one it retired.
        """
        self._last_sync = time.monotonic()
        model, s = self.model, self.settings
        now_ms = int(time.time() * 1000)
        try:
            if not model.dirty and not caught_up:
                doc = self.store.load_model()
                if doc is not None and int(doc["merges"]) != model.merges:
                    self._adopt(doc, [])
                return
            delta = model.delta()
            params = model.params
            wm = self.watermark.value
            refit_allowed = (
                caught_up
                or time.monotonic() - self._last_refit_wall >= s.model_refit_min_interval_s
            )
            tried = {"refit": False}  # whether the build that was committed tried a refit

            def build(
                current: dict[str, Any] | None,
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
                seeding = (current is None or not current["ready"]) and (
                    self._sample_size >= params.warmup_users
                )
                refit = (
                    not final
                    and refit_allowed
                    and (caught_up or refit_due(current, params, delta.updates, wm))
                )
                snapshot = (
                    self.store.snapshot(wm, s.rfm_horizon, used=params.features)
                    if seeding or refit
                    else None
                )
                tried["refit"] = refit
                if refit:
                    self._last_refit_wall = time.monotonic()
                return merge(
                    current,
                    delta,
                    snapshot,
                    params,
                    now_ms,
                    wm,
                    refit=caught_up,
                    structural=not final,
                )

            doc, events = self.store.commit_model(
                build, int(s.checkpoint_interval_s * 1000), now_ms
            )
        except (RedisError, ModelError) as exc:
            self.metrics.model_syncs.labels("failed").inc()
            if isinstance(exc, RedisError):
                self.metrics.redis_errors.inc()
            log.warning("model not synced: %s", exc)
            return
        self.metrics.model_syncs.labels("merged").inc()
        if tried["refit"]:
            kept = any("refit" in str(e.get("cause", "")) for e in events)
            self.metrics.refits.labels("kept" if kept else "not_kept").inc()
        self._adopt(doc, events)

    def _adopt(self, doc: dict[str, Any], events: list[dict[str, Any]]) -> None:
        before = self.model.centres() if self.model.ready else None
        ids = list(self.model.ids)
        was_ready, version, epoch = self.model.ready, self.model.version, self.model.epoch
        self.model.adopt(doc)
        if was_ready and self.model.ready and self.model.epoch != epoch:
            # The segments themselves changed (a refit, a re-seed, a rollback): every user
            # is re-decided by the sweep, not only those who send an event.
            self._resweep = True
        if before is not None and ids == self.model.ids:
            drift = float(np.sqrt(((self.model.centres() - before) ** 2).sum(axis=1)).max())
            self.metrics.model_sync_drift.set(drift)
        for e in events:
            self.metrics.lineage_events.labels(str(e["event"])).inc()
            log.info(
                "segment %s %s (%s)",
                e.get("segment"),
                e["event"],
                ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("event", "segment")),
            )
        # Every process queues the members of the segments its adoption retires, not only
        # the one whose merge retired them: users this process moved into such a segment
        # while it still had it joined its members after the retiring process listed them.
        retired = sorted(set(ids) - set(self.model.ids)) if was_ready else []
        retired = sorted({*retired, *retired_ids(events)})
        for seg in retired:
            self._to_queue[seg] = self.model.version
        self._queue_retired()
        if self.model.ready and self.model.version != version:
            # Entries left for a newer version than the one this process had are due now.
            self._reassess_pending = True
        if self.model.ready and (not was_ready or ids != self.model.ids):
            if not was_ready:
                log.info("model seeded: %s", (doc.get("k_choice") or {}).get("reason", ""))
            self.refresh_catalogue()
        self._model_gauges()

    def _queue_retired(self) -> None:
        """Queue the members of retired segments; what Redis refuses is tried again later."""
        if not self._to_queue:
            return
        segments = sorted(self._to_queue)
        version = max(self._to_queue.values())
        try:
            n = self.store.queue_members(segments, version)
        except RedisError as exc:
            self.metrics.redis_errors.inc()
            log.warning("members of retired segments %s not queued yet: %s", segments, exc)
            return
        self._to_queue.clear()
        self._reassess_pending = True
        log.info(
            "segments %s retired at model version %d: %d more members queued to move",
            segments,
            version,
            n,
        )

    def _model_gauges(self) -> None:
        m = self.metrics
        m.model_version.set(self.model.version)
        m.model_epoch.set(self.model.epoch)
        m.model_ready.set(1 if self.model.ready else 0)
        m.model_segments.set(self.model.n_clusters)

    def _caught_up(self, now: float) -> bool:
        """Whether the input has been idle a while and the watermark moved a day or more
        past the last fit (see :meth:`sync_model`)."""
        s, model = self.settings, self.model
        last = self.stats.last_batch_at
        return (
            model.ready
            and last is not None
            and now - last >= 2 * s.model_sync_interval_s
            and now - self._last_refit_wall >= s.model_refit_min_interval_s
            and self.watermark.value - int(model.doc.get("fitted_at_event_ms", 0)) >= DAY_MS
        )

    def sync_watermark(self) -> None:
        """Share this process's partition clocks through Redis and take the others'."""
        self._last_watermark_sync = time.monotonic()
        try:
            shared = self.store.share_watermark(self.watermark.take_moved())
        except RedisError as exc:
            self.metrics.redis_errors.inc()
            log.warning("watermark not shared: %s", exc)
            return
        self.watermark.merge(shared)
        wm = self.watermark.advance(int(time.time() * 1000))
        self.metrics.watermark.set(wm / 1000)

    def _owned_partitions(self) -> set[int]:
        """Input partition numbers this process owns on every input topic."""
        assert self._consumer is not None
        s = self.settings
        by_topic: dict[str, set[int]] = defaultdict(set)
        for tp in self._consumer.assignment():
            by_topic[tp.topic].add(tp.partition)
        return by_topic[s.clicks_topic] & by_topic[s.purchases_topic]

    def _make_all_due(self) -> None:
        assert self._consumer is not None
        wm = self.watermark.value
        try:
            n = self.store.make_due(self._owned_partitions(), wm)
        except RedisError as exc:
            self.metrics.redis_errors.inc()
            log.warning("users not yet brought forward for the new segments: %s", exc)
            return
        self._resweep = False
        self._nothing_due_at = -1
        log.info(
            "model version %d changed the segments: %d users due for a new look",
            self.model.version,
            n,
        )

    def sweep_timers(self) -> None:
        """Re-decide users whose event-time timer the watermark passed (at most
        ``sweep_batch`` a call, so live events are never starved), in a transaction like a
        batch's; their changes say why (:mod:`stream.timers`)."""
        assert self._consumer is not None
        wm = self.watermark.value
        if not wm or wm == self._nothing_due_at:
            return  # timers only come due as the watermark moves (or are brought forward)
        try:
            parts = self._owned_partitions()
            due = self.store.due_users(parts, wm, self.settings.sweep_batch)
            if not due:
                self.metrics.timers_due.set(0)
                self._nothing_due_at = wm
                return
            states = self.store.load_states(list(due))
            owned = {f"{tp.topic}:{tp.partition}" for tp in self._consumer.assignment()}
            inputs = {u: set(st.offsets) for u, st in states.items() if st is not None}
            mine = {u: d for u, d in due.items() if inputs.get(u) and inputs[u] <= owned}
            if not mine:
                return
            positions = self._positions(set().union(*(inputs[u] for u in mine)))
            result = self._apply({}, [], positions, int(time.time() * 1000), sweep=mine)
            self.metrics.timers_due.set(self.store.timers_due_count(parts, wm))
        except (SegmenterError, KafkaException) as exc:
            self._recover(exc, {})
            return
        changes, moves = result.changes, result.moves
        self.metrics.swept_users.inc(len(mine))
        self.metrics.segment_changes.inc(changes)
        self.metrics.segment_moves.inc(moves)
        self.stats.changes += changes
        self.stats.moves += moves
        self.stats.swept += len(mine)
        if changes:
            log.info("swept %d users due by the watermark: %d segment changes", len(mine), changes)

    def reassess_users(self, batch: int = 1000) -> None:
        """Decide queued users: seen during warm-up, or members of a retired segment.

        Runs like a batch without input, in one transaction; entries leave the queue only
        after it committed (:mod:`stream.reassessment`), so a crash leaves them queued
        (and a replay republishes the same change ids). A process decides only users
        whose input partitions it owns: the owner also handles their events, in the same
        thread, so a user is never decided by two processes at once. The transaction
        commits the consumer's positions of those partitions (already committed, so
        nothing moves): a process that lost them in a rebalance is fenced off by the
        group, as for any batch. Entries for a newer model version than this process's
        wait until it adopts that version.
        """
        assert self._consumer is not None
        try:
            queued = self.store.reassess_batch(batch)
            owned = {f"{tp.topic}:{tp.partition}" for tp in self._consumer.assignment()}
            states = self.store.load_states(list(queued)) if queued else {}
            inputs = {u: set(st.offsets) for u, st in states.items() if st is not None}
            due = {
                u: e
                for u, e in queued.items()
                if inputs.get(u) and inputs[u] <= owned and e.version <= self.model.version
            }
            if not due:
                # Nothing to do here now; other processes' users wait for their owners, and
                # entries for a newer version for this process's next adoption.
                self._reassess_pending = False
                return
            positions = self._positions(set().union(*(inputs[u] for u in due)))
            result = self._apply({}, [], positions, int(time.time() * 1000), reassess=due)
        except (SegmenterError, KafkaException) as exc:
            self._recover(exc, {})
            return
        changes, moves = result.changes, result.moves
        self.metrics.segment_changes.inc(changes)
        self.metrics.segment_moves.inc(moves)
        self.stats.changes += changes
        self.stats.moves += moves
        log.info("assessed %d queued users: %d segment changes", len(due), changes)

    def _positions(self, positions: set[str]) -> dict[tuple[str, int], int]:
        """The last consumed offset of each input position (``topic:partition``) that has
        one, in the form :meth:`_apply` commits (it adds one)."""
        assert self._consumer is not None
        parts = []
        for pos in positions:
            topic, _, part = pos.rpartition(":")
            parts.append(TopicPartition(topic, int(part)))
        return {
            (tp.topic, tp.partition): tp.offset - 1
            for tp in self._consumer.position(parts)
            if tp.offset >= 0
        }

    def refresh_catalogue(self) -> None:
        """Rename segments from their profiles, publish sizes to ``seg:segments``, and
        update the quality gauges."""
        self._last_catalogue = time.monotonic()
        if not self.model.ready:
            return
        model, m = self.model, self.metrics
        self.names.refresh(model)
        profs = profiles(model.centres(), model.scaler, model.ids, population=model.population)
        # Segment ids this model does not have: their membership sets must be empty.
        retired = sorted(set(range(int(model.doc["next_id"]))) - set(model.ids))
        try:
            sizes = self.store.segment_sizes(model.ids)
            self.store.write_catalogue(profs, sizes)
            sample = self.store.snapshot(
                self.watermark.value,
                self.settings.rfm_horizon,
                limit=_QUALITY_SAMPLE,
                used=model.params.features,
            )
            left = self.store.segment_sizes(retired) if retired else []
        except RedisError as exc:
            m.redis_errors.inc()
            log.warning("catalogue not refreshed: %s", exc)
            return
        # A process still on an older version can move users into a segment after the
        # retiring process (and every other that adopted the retirement) listed its
        # members, and die before it adopts the retirement itself: those users are found
        # here, by whichever process looks next.
        for seg, n in zip(retired, left, strict=True):
            if n:
                self._to_queue[seg] = model.version
        m.segment_users.clear()
        for p, size in zip(profs, sizes, strict=True):
            m.segment_users.labels(str(p.segment), p.name).set(size)
        total = sum(sizes)
        if total and model.n_clusters > 1:
            probs = [n / total for n in sizes if n]
            m.size_entropy.set(-sum(p * math.log(p) for p in probs) / math.log(model.n_clusters))
        if len(sample) > model.n_clusters:
            z = model.scale(sample)
            labels = np.argmin(model.distances(z), axis=1)
            if len(set(labels.tolist())) > 1:
                m.silhouette.set(silhouette(z, labels))
        moves, updated = self.stats.moves, self.stats.users_updated
        d_moves, d_updated = moves - self._moves_at_refresh[0], updated - self._moves_at_refresh[1]
        if d_updated > 0:
            m.flap_ratio.set(d_moves / d_updated)
        self._moves_at_refresh = (moves, updated)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
        self.store.close()

    def serve_http(self) -> Any:
        _, stop = serve(
            self.settings.metrics_host, self.settings.metrics_port, self.registry, self.health
        )
        return stop


def _fmt_parts(parts: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in parts) or "nothing"
