"""The segmenter process: the loop that consumes, decides, publishes, writes and commits.

One loop turn is one micro-batch:

1. consume up to ``batch_max_events`` messages: what is ready, at once when that is at
   least ``batch_min_events``, else what arrives within ``batch_timeout_s`` too;
2. decode each; bad ones become dead letters (values, never exceptions);
3. move the group's event-time clock (:class:`stream.watermark.Watermark`);
4. run the batch in one transaction (:mod:`consumers.transaction`, which writes its
   order of steps down once: decide, produce, write to Redis, commit offsets);
5. housekeeping between batches: share the watermark, sync the model
   (:mod:`consumers.model_sync`), decide queued users, sweep users whose timers came due
   (each in a transaction of its own), refresh the segment catalogue.
"""

from __future__ import annotations

import calendar
import contextlib
import gc
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from threading import Event as StopFlag
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from prometheus_client import CollectorRegistry

from consumers import topics
from consumers.http import Health, serve
from consumers.metrics import Metrics
from consumers.model_sync import ModelSync
from consumers.rebuild import Rebuild
from consumers.transaction import BatchTransaction
from consumers.wiring import Wiring
from state.redis_store import RedisStore
from stream.batch import BatchResult, SegmentNames
from stream.errors import RedisError, SegmenterError, StateLostError
from stream.events import ADVICE, DeadLetter, Event, Limits, decode, dominant_reason
from stream.model import SegmentModel
from stream.privacy import user_id_mapper
from stream.settings import Settings
from stream.watermark import Watermark

log = logging.getLogger("segmenter")

_E2E_SAMPLES = 100
#: At shutdown, how long queued users may take to get their segment.
_DRAIN_S = 20.0

#: The garbage collector's thresholds while a segmenter runs (Python's are 700, 10, 10).
#: A batch keeps thousands of containers alive until it ends (states, their bucket maps,
#: feature dicts), and nearly all are freed by reference counting, not by the collector.
#: At Python's thresholds they set off a young collection every 700 allocations and,
#: promoted as survivors, full collections of everything the process holds.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Set the garbage collector for a segmenter process: what start-up made (modules, the
    model, connections) is frozen out of its sight, as it lives as long as the process,
    and young objects are collected every :data:`GC_THRESHOLDS` allocations.

    Process-wide: call it once, from the process's entry point, after start-up. On the hot
    path of live traffic (``loadtest.hotpath``, no I/O) it took CPU per event from 159 to
    122 µs, in pairs of runs alternating with Python's defaults.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


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


class Segmenter:
    """One member of the consumer group, wired to Redis, the producer and metrics.

    The loop (:meth:`run`) and what it does between batches are here; a batch's commit
    protocol is :class:`~consumers.transaction.BatchTransaction` (``self.txn``), the model's
    sync and the catalogue :class:`~consumers.model_sync.ModelSync` (``self.sync``).
    """

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
        self.stats = RunStats()
        wiring = Wiring(settings, self.store, self.metrics, self.model, self.names, self.watermark)
        self.txn = BatchTransaction(wiring)
        self.sync = ModelSync(
            wiring,
            sample_size=lambda: self.txn.sample_size,
            activity=lambda: (self.stats.last_batch_at, self.stats.moves, self.stats.users_updated),
        )
        self.rebuild = Rebuild(settings, self.store, self.metrics, self.health, self.txn, self.sync)
        self._last_watermark_sync = 0.0
        #: The watermark at which the sweep last found nobody due (-1: look again).
        self._nothing_due_at = -1
        self._consumer: Consumer | None = None
        #: Dead-letter reasons already reported as covering most of a batch.
        self._reasons_said: set[str] = set()
        #: Assigned input positions with a backlog, and the offset it ends at.
        self._backlog_ends: dict[str, int] = {}
        #: Partitions were assigned: once their backlog is read, bring forward the timers
        #: of those not yet re-decided under the model's epoch (:meth:`_make_all_due`).
        self._check_swept = False
        #: Assignments and revocations so far (:meth:`_next_batch` reads it).
        self._rebalances = 0
        self._stop = StopFlag()

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
        self.txn.sample_size = self.store.sample_size()
        self.sync.restore()
        self.txn.start()
        self._consumer = Consumer(
            {
                **consumer_config(s),
                # The end of a partition ends its backlog (see _past_ends).
                "enable.partition.eof": True,
                "stats_cb": self._on_stats,
                "error_cb": self.txn.on_kafka_error,
            }
        )
        self.txn.consumer = self._consumer
        self.rebuild.consumer = self._consumer
        self._consumer.subscribe(
            [s.clicks_topic, s.purchases_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        self.health.started = True

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self._rebalances += 1
        self.metrics.assigned_partitions.set(len(parts))
        self._nothing_due_at = -1  # new partitions, new timers
        self._backlog_ends = self._backlog(consumer, parts)
        self._check_swept = True
        now_ms = int(time.time() * 1000)
        for pos in self._backlog_ends:
            self.watermark.behind(pos, now_ms)
        log.info("assigned %s", _fmt_parts(parts))
        self.rebuild.check(consumer, parts, assigning=True)
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
        # Batches are committed before the next poll, so nothing is in flight to drop (and
        # :meth:`_next_batch` drops what it read before a revocation).
        self._rebalances += 1
        self.metrics.assigned_partitions.set(0)
        self.txn.forget(parts)
        self.rebuild.forget(parts)
        for tp in parts:
            self._backlog_ends.pop(f"{tp.topic}:{tp.partition}", None)
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

    # -- the loop -------------------------------------------------------------------------

    def run(self, stop: StopFlag, idle_exit_s: float | None = None) -> RunStats:
        """Consume until ``stop`` is set (or nothing arrived for ``idle_exit_s``)."""
        assert self._consumer is not None, "call start() first"
        self._stop = stop
        last_data = time.monotonic()
        while not stop.is_set():
            self.health.beat()
            msgs = self._next_batch()
            if msgs:
                self.handle(msgs)
                last_data = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last_data > idle_exit_s:
                break
            if stop.is_set():
                # Stopping: no sync that could refit and retire segments whose members
                # this process could no longer move. The final sync below changes none.
                break
            self._housekeeping()
        self.sync.sync(final=True)
        # Users queued for a segment (warm-up, retired segments) get it before exit, and
        # so do stragglers the catalogue finds in retired segments (moved there by a
        # process on an older version, after the members were listed).
        self.sync.refresh_catalogue()
        if self.txn.retry_until or self.rebuild.active:
            return self.stats  # a failed batch or a rebuild unfinished: decide no one more
        self.sync.queue_retired()
        self.sync.reassess_pending = self.model.ready
        deadline = time.monotonic() + _DRAIN_S
        while self.sync.reassess_pending and self.model.ready and time.monotonic() < deadline:
            self.reassess_users()
        self.sync.refresh_catalogue()
        return self.stats

    def _next_batch(self) -> list[Message]:
        """The messages ready now, topped up for ``batch_timeout_s`` when they are fewer than
        ``batch_min_events``. (``consume`` alone waits out its timeout whenever fewer than
        its maximum are ready: under steady load, the whole wait on every batch.)"""
        s, consumer = self.settings, self._consumer
        assert consumer is not None
        msgs = consumer.consume(s.batch_max_events, 0)
        if len(msgs) < min(s.batch_min_events, s.batch_max_events):
            rebalances = self._rebalances
            more = consumer.consume(s.batch_max_events - len(msgs), s.batch_timeout_s)
            # A rebalance within the wait revoked the partitions the first messages came
            # from: they are read again from the committed offsets by their next owner,
            # this process included, so they are dropped here, never handled twice.
            msgs = more if self._rebalances != rebalances else msgs + more
        return msgs

    def _past_ends(self, msgs: list[Message]) -> tuple[list[Message], dict[tuple[str, int], int]]:
        """``msgs`` without the ends of partitions, each of which ends that partition's
        backlog (offsets alone cannot tell: transaction markers take offsets too), and the
        consumer's position in each partition whose end is among them."""
        out = []
        eofs: dict[tuple[str, int], int] = {}
        for m in msgs:
            err = m.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                self._backlog_ends.pop(f"{m.topic()}:{m.partition()}", None)
                key = (str(m.topic()), int(m.partition() or 0))
                if key in self.rebuild.ends and self._consumer is not None:
                    # Where the consumer is now, not the end's own offset: an end queued
                    # before the rewind for a rebuild may only be delivered after it.
                    (pos,) = self._consumer.position([TopicPartition(*key)])
                    eofs[key] = pos.offset
            else:
                out.append(m)
        return out, eofs

    def handle(self, msgs: list[Message]) -> BatchResult:
        """Process one batch of messages end to end, then commit their offsets.

        If any step fails (Redis or the broker away, a delivery refused, a transaction
        fenced), nothing is committed: the transaction is aborted, the consumer is rewound
        to the batch's first offsets, and the batch is consumed again after a backoff
        (:mod:`consumers.transaction`). Replaying is safe, so recovery needs no special path.
        """
        msgs, eofs = self._past_ends(msgs)
        replay, msgs, held = self.rebuild.split(msgs, eofs)
        self.rebuild.hold(held)
        # A failed batch holds back live messages only: a replay decides nothing in doubt.
        msgs = self._hold_back(msgs)
        if replay and self._batch(replay, replaying=True) is None:
            # Not one event past a replay that failed: it is read again first.
            firsts: dict[tuple[str, int], int] = {}
            for m in msgs:
                if m.error() is None:
                    firsts.setdefault(
                        (str(m.topic()), int(m.partition() or 0)), int(m.offset() or 0)
                    )
            self._rewind(firsts)
            return BatchResult()
        return (self._batch(msgs) if msgs else None) or BatchResult()

    def _hold_back(self, msgs: list[Message]) -> list[Message]:
        """``msgs`` within the range of a failed batch not yet committed
        (:meth:`BatchTransaction.recover`): its partitions, up to its last offsets. The
        consumer is rewound to the rest, other partitions included, as a user's events
        in another partition could decide a change over theirs still in doubt."""
        until = self.txn.retry_until
        if not until:
            return msgs
        keep: list[Message] = []
        rewind: dict[tuple[str, int], int] = {}
        for m in msgs:
            key = (str(m.topic()), int(m.partition() or 0))
            off = int(m.offset() or 0)
            if m.error() is None and off > until.get(key, -1) and key not in rewind:
                rewind[key] = off
            if m.error() is not None or key not in rewind:
                keep.append(m)
        self._rewind(rewind)
        return keep

    def _rewind(self, offsets: dict[tuple[str, int], int]) -> None:
        """Seek the consumer back to read ``{(topic, partition): offset}`` again."""
        if not offsets:
            return
        assert self._consumer is not None
        for (topic, part), off in offsets.items():
            with contextlib.suppress(KafkaException):
                self._consumer.seek(TopicPartition(topic, part, off))

    def _batch(self, msgs: list[Message], replaying: bool = False) -> BatchResult | None:
        """:meth:`handle` of messages of one kind: to process, or to replay (below the
        committed offset of a partition Redis lost writes of: see :mod:`consumers.rebuild`)."""
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
        if not replaying:
            self._say_dead_letters(dead, len(msgs))
        if self._stored_id is not None:
            # Once per user of the batch (after decode checked the key against the raw
            # id), before anything is read, stored or published.
            by_user = {self._stored_id(u): evs for u, evs in by_user.items()}
        try:
            result = self.txn.run(by_user, dead, last, now_ms, replaying=replaying)
        except StateLostError as exc:
            self.txn.recover(exc, first, self._stop, last)
            assert self._consumer is not None
            self.rebuild.check(self._consumer, self._consumer.assignment(), assigning=False)
            return None
        except (SegmenterError, KafkaException) as exc:
            self.txn.recover(exc, first, self._stop, last)
            return None
        if replaying:
            oldest = min((ev.ts_ms for evs in by_user.values() for ev in evs), default=None)
            self.rebuild.replayed(last, sum(map(len, by_user.values())), oldest)
            return result
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
        m.model_updates.labels("learned").inc(result.learned)
        m.model_updates.labels("sampled_out").inc(result.sampled_out)
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

    # -- between batches -----------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        s, sync = self.settings, self.sync
        if sync.due(now):
            sync.sync()
        if now - self._last_watermark_sync >= s.watermark_sync_interval_s:
            self.sync_watermark()
        if sync.caught_up(now):
            sync.refit_tried(now)
            sync.sync(caught_up=True)
        if self.rebuild.active or self.txn.retry_until:
            # Queued users and due timers wait until Redis holds what it lost again, and
            # until a failed batch is committed: deciding a user whose change from it is
            # still in doubt would store a new change over that one.
            return
        sync.queue_retired()
        if sync.reassess_pending and self.model.ready:
            self.reassess_users()
        if self.model.ready:
            if (sync.resweep or self._check_swept) and not self._backlog_ends:
                # Not while the backlog found at assignment is read: its users with
                # events are decided by them anyway, and each refit in a backlog (one
                # every few seconds) would have everyone re-decided again.
                self._make_all_due()
            self.sweep_timers()
        if now - sync.last_catalogue >= s.catalogue_interval_s:
            sync.refresh_catalogue()
            # Queued users whose partitions came to this process in a rebalance.
            sync.reassess_pending = self.model.ready

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
        """Bring forward to the watermark every timer of the owned partitions whose users
        were not all re-decided under the model's epoch yet (of every owned partition when
        the centres moved), so the sweep re-decides them under the current segments.

        Each partition records the epoch once its timers are all brought forward
        (:meth:`~state.timers.Timers.make_due`). So a process that stopped or lost the
        partition before that leaves the partition to its next owner, which brings it
        forward once its own backlog is read.
        """
        assert self._consumer is not None
        wm, epoch, sync = self.watermark.value, self.model.epoch, self.sync
        owned = self._owned_partitions()
        try:
            if sync.resweep_every_partition:
                parts = owned
            else:
                parts = {p for p, e in self.store.swept_epochs(owned).items() if e != epoch}
            n = self.store.make_due(parts, wm, epoch) if parts else 0
        except RedisError as exc:
            self.metrics.redis_errors.inc()
            log.warning("users not yet brought forward for the new segments: %s", exc)
            return
        cause = sync.resweep_cause if sync.resweep else "partitions assigned"
        sync.resweep = sync.resweep_every_partition = self._check_swept = False
        if not parts:
            return
        self._nothing_due_at = -1
        log.info(
            "model version %d: %s; %d users of %d partitions due for a new look",
            self.model.version,
            cause,
            n,
            len(parts),
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
            positions = self.txn.positions(set().union(*(inputs[u] for u in mine)))
            result = self.txn.run(
                {}, [], positions, int(time.time() * 1000), sweep=mine, known=states
            )
            self.metrics.timers_due.set(self.store.timers_due_count(parts, wm))
        except (SegmenterError, KafkaException) as exc:
            self._failed(exc)
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
                self.sync.reassess_pending = False
                return
            positions = self.txn.positions(set().union(*(inputs[u] for u in due)))
            result = self.txn.run(
                {}, [], positions, int(time.time() * 1000), reassess=due, known=states
            )
        except (SegmenterError, KafkaException) as exc:
            self._failed(exc)
            return
        changes, moves = result.changes, result.moves
        self.metrics.segment_changes.inc(changes)
        self.metrics.segment_moves.inc(moves)
        self.stats.changes += changes
        self.stats.moves += moves
        log.info("assessed %d queued users: %d segment changes", len(due), changes)

    def _failed(self, exc: Exception) -> None:
        """A sweep or a queue run failed: abort it, and if Redis lost writes, rebuild."""
        self.txn.recover(exc, {}, self._stop)
        if isinstance(exc, StateLostError):
            assert self._consumer is not None
            self.rebuild.check(self._consumer, self._consumer.assignment(), assigning=False)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self.txn.close()
        self.store.close()

    def serve_http(self) -> Any:
        _, stop = serve(
            self.settings.metrics_host, self.settings.metrics_port, self.registry, self.health
        )
        return stop


def _fmt_parts(parts: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in parts) or "nothing"
