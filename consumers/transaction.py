"""The commit protocol: one batch, one Kafka transaction; nothing lost, nothing counted twice.

Every piece of work that changes what readers see goes through :meth:`BatchTransaction.run`:
a batch of input events, a sweep of users whose timers came due, a batch of queued users.
Its steps, in this order:

1. begin a Kafka transaction (first a fresh producer, if the brokers were all down);
2. read the users' states from Redis (one round trip), and the group's committed *marks*
   of their partitions: a change made without an event of the user's (a sweep, a queue
   entry) is stored at a mark, and whether its transaction committed is the mark's
   committed offset;
3. :func:`stream.batch.process_batch`: features, scaling, K-Means, hysteresis, changes
   (pure: no I/O);
4. produce dead letters and segment changes, and republish changes whose commit is in
   doubt (stored with their user, under the same change id);
5. queue users seen before the warm start (with the batch, so a crash cannot lose them);
6. write user states with the input offsets that produced them, fenced by those offsets,
   then the membership moves (two round trips);
7. send the input offsets (and marks) to the transaction and commit it;
8. only then settle what the commit decided: queue entries leave the queue, timers move on
   to each user's next due time, new users join the model's user sample.

A failure anywhere before 7 leaves nothing visible to ``read_committed`` readers and
nothing committed: :meth:`BatchTransaction.recover` aborts the transaction, rewinds the
consumer to the batch's first offsets and backs off, and the batch is consumed again.
Replaying is safe, so recovery needs no special path: users already written skip the
events they applied (the per-user offset fence), and changes those events triggered are
republished as stored. A crash after 7 and before 8 leaves queue entries and timers as
they were: a change made without an event is published once more, with the same id.

Step 6 ends by raising each input partition's applied offset in Redis (``seg:applied``)
past the batch, so Redis records how far it holds every write; each committed offset
carries the key space's epoch and the model's id floor (:mod:`stream.state_gaps`). After
step 2 a batch reads them back: a Redis holding less than this process last had it write
(restarted without persistence, failed over to a lagging replica) stops the batch with
:class:`~stream.errors.StateLostError`, and the consumer rebuilds from Kafka what Redis lost
(:meth:`consumers.rebuild.Rebuild.check`); and the script raising the offsets refuses
unless the epoch is still the one the batch read, so a Redis emptied during a batch never
records offsets it does not hold. A *replaying* batch, one below the group's
committed offset, writes Redis alone: its changes and dead letters were published, and
its offsets committed, before Redis lost them.

Without transactions (``SEGMENTER_TRANSACTIONAL=false``, for brokers without them), step
7 becomes a producer flush before 6 and a consumer commit after it: flush, write, commit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from threading import Event as StopFlag

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from consumers.wiring import Wiring
from stream.batch import BatchResult, Clock, partition_of, process_batch
from stream.errors import BrokerError, RedisError, StateLostError
from stream.events import DeadLetter, Event
from stream.features import UserState
from stream.reassessment import QueueEntry
from stream.settings import Settings
from stream.state_gaps import Published, adopt_published, commit_metadata, mark_incomplete

__all__ = ["BatchTransaction", "producer_config", "transactional_id"]

log = logging.getLogger("segmenter")


def transactional_id(settings: Settings) -> str:
    """Stable across restarts of one process slot, so a restart fences its predecessor."""
    instance = settings.instance_id or f"{socket.gethostname()}-{settings.metrics_port}"
    return f"segmenter-{settings.group_id}-{instance}"


def producer_config(settings: Settings) -> dict[str, object]:
    txn: dict[str, object] = {}
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


#: Longest a Kafka transaction's commit may block before the process exits. The calls
#: have timeouts of their own (30 s and 60 s), but after a broker outage librdkafka can
#: block in send_offsets_to_transaction past them, for good (issues 5456 and 5511).
STUCK_S = 120.0


def _exit_stuck(what: str, seconds: float) -> None:
    log.error(
        "%s blocked for %.0f s (librdkafka can hang there after a broker outage): exiting "
        "with code 1 for the supervisor to restart this process. Nothing is lost: the batch "
        "was not committed and is read again.",
        what,
        seconds,
    )
    logging.shutdown()
    os._exit(1)


@contextlib.contextmanager
def watchdog(
    what: str, seconds: float, on_stuck: Callable[[str, float], None] = _exit_stuck
) -> Iterator[None]:
    """Call ``on_stuck(what, seconds)`` from another thread if the block takes longer than
    ``seconds``; by default that exits the process, as no Python code can interrupt a
    blocked librdkafka call.

    >>> stuck = []
    >>> with watchdog("waiting", 0.01, lambda what, s: stuck.append(what)):
    ...     threading.Event().wait(0.2)
    False
    >>> with watchdog("done in time", 5.0, lambda what, s: stuck.append(what)):
    ...     pass
    >>> stuck
    ['waiting']
    """
    timer = threading.Timer(seconds, on_stuck, args=(what, seconds))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class BatchTransaction:
    """The producer, the committed positions, and :meth:`run`, the protocol itself.

    Parameters
    ----------
    wiring
        The process's settings, Redis store, metrics, model, segment names and clock: a
        batch decides with the model and the clock as they are when it runs.
    """

    def __init__(
        self,
        wiring: Wiring,
    ) -> None:
        self.settings = settings = wiring.settings
        self.store = wiring.store
        self.metrics = wiring.metrics
        self.model = wiring.model
        self.names = wiring.names
        self.watermark = wiring.watermark
        #: Input positions ("topic:partition") -> offset below which this process has
        #: committed their batches; stored changes triggered below it are delivered. Mark
        #: positions too, read from the group when first needed.
        self.committed: dict[str, int] = {}
        #: The key space's epoch, and per input position the offset below which this
        #: process knows Redis holds every write (set by Rebuild.check).
        self.epoch: str | None = None
        self.held: dict[str, int] = {}
        #: While a rebuild replays: each user's last published segment (segments.current).
        self.published: dict[str, Published] | None = None
        #: While a rebuild replays: input partitions whose history Kafka no longer wholly
        #: retains (SEGMENTER_ON_LOST_HISTORY=continue); users it rebuilds there are marked.
        self.incomplete: set[int] = set()
        #: After a failed batch, its last offsets: the retry reads no further (``recover``).
        self.retry_until: dict[tuple[str, int], int] = {}
        #: Users in the model's sample, as of the last batch that added some.
        self.sample_size = 0
        self._sample_rng = random.Random(settings.seed)
        self._producer: Producer | None = None
        #: The process's consumer: its group metadata goes into each transaction, and a
        #: failed batch rewinds it. Set once it exists.
        self.consumer: Consumer | None = None
        self._delivery_errors: list[str] = []
        self._renew_producer = False
        self._last_kafka_error: int | None = None
        self._failures = 0

    # -- the producer ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the producer, fencing any previous incarnation with the same id."""
        self._producer = self._new_producer()

    def on_kafka_error(self, err: KafkaError) -> None:
        """librdkafka's error callback, for the consumer and the producer."""
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
        producer = Producer({**producer_config(self.settings), "error_cb": self.on_kafka_error})
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

    def close(self) -> None:
        if self._producer is not None:
            try:
                self._producer.flush(10)
            except KafkaException as exc:
                # A fenced or failed producer: nothing of it is committed; say so, once.
                log.warning("the producer was not flushed on the way out: %s", exc.args[0].str())
            self._producer = None

    # -- one transaction ------------------------------------------------------------------

    def run(
        self,
        by_user: dict[str, list[Event]],
        dead: list[DeadLetter],
        last: dict[tuple[str, int], int],
        now_ms: int,
        reassess: dict[str, QueueEntry] | None = None,
        sweep: dict[str, int] | None = None,
        replaying: bool = False,
        known: Mapping[str, UserState | None] | None = None,
    ) -> BatchResult:
        """One batch in one transaction (the steps in the module docstring).

        ``last`` is the last offset read of each input partition (``(topic, partition)``);
        ``reassess`` the queued users to decide, ``sweep`` the users whose timer is due.
        ``replaying``: the events are below the group's committed offset (a rebuild):
        Redis is written, nothing is published or committed.
        ``known``: states the caller has just read from Redis (the sweep and the queue
        read them to see which partitions the users are on), not read again.
        Raises :class:`~stream.errors.SegmenterError` or ``KafkaException`` when a step
        fails; then nothing was committed, and :meth:`recover` is the way on.
        """
        assert self._producer is not None and self.consumer is not None, "call start() first"
        if self._renew_producer:
            self._renew_producer = False
            self._producer = self._new_producer()
            log.info("brokers were all down: started a fresh producer")
        s = self.settings
        txn = s.transactional and not replaying
        if txn:
            self._producer.begin_transaction()
        inputs = {
            f"{t}:{p}": off + 1
            for (t, p), off in last.items()
            if t in (s.clicks_topic, s.purchases_topic)
        }
        # States first, then the check: states read before Redis lost them are caught by
        # the check, and a loss after it by the epoch the applied offsets are raised under.
        known = known or {}
        wanted = [*by_user, *(reassess or {}), *(sweep or {})]
        states = {u: known[u] for u in wanted if u in known}
        states.update(self.store.load_states([u for u in wanted if u not in known]))
        epoch = self._check_held(inputs)
        self._load_marks({partition_of(st) for st in states.values() if st and st.offsets})
        marks: dict[str, tuple[str, int]] = {}
        for u in (*(reassess or {}), *(sweep or {})):
            st = states.get(u)
            if st is not None and st.offsets:
                pos = self._mark(partition_of(st))
                marks[u] = (pos, self.committed[pos])
        for pos, seq in set(marks.values()):
            # Committed with the batch: the group's mark moves past every change it made.
            last[(s.marks_topic, int(pos.rpartition(":")[2]))] = seq
        clock = Clock(self.watermark.value, s.rfm_horizon)
        result = process_batch(
            by_user,
            states,
            self.model,
            self.names,
            s.hysteresis_margin,
            s.dedupe_window,
            now_ms,
            reassess=list(reassess or {}),
            queued=reassess,
            committed=self.committed,
            clock=clock,
            sweep=list(sweep or {}),
            timers=sweep,
            marks=marks,
            mark_topic=s.marks_topic,
            learn_budget=s.learn_budget,
        )
        if not replaying:
            self._publish(dead, result)
        elif self.published is not None:
            # Rebuilt users keep the segment downstream readers last heard of; those who
            # never heard of one are decided once the rebuild is over.
            self.model.unassigned += adopt_published(result.updates, self.published)
            if self.incomplete:
                self.metrics.incomplete_users.inc(mark_incomplete(result.updates, self.incomplete))
        if self.model.unassigned:
            self.store.queue(self.model.unassigned, self.model.version)
            self.model.unassigned = []
        if not txn and not replaying:
            self._flush()
        written = self.store.write_updates(result.updates, self.model.version, clock.watermark_ms)
        if written.fenced:
            self.metrics.fenced_writes.inc(written.fenced)
            log.warning("%d user writes fenced off: newer state exists", written.fenced)
        wait = (0, 0) if replaying else (s.redis_wait_replicas, s.redis_wait_timeout_ms)
        self.store.raise_applied(inputs, epoch, wait)
        for pos, off in inputs.items():
            self.held[pos] = max(self.held.get(pos, off), off)
        meta = commit_metadata(
            self.epoch or "", self.model.checkpoint.next_id, self.model.checkpoint.version
        )
        offsets = (
            []
            if replaying
            else [TopicPartition(t, p, off + 1, metadata=meta) for (t, p), off in last.items()]
        )
        if txn and self._renew_producer:
            # The brokers went away while this batch ran: a producer that lived through it
            # can hang in send_offsets_to_transaction. Abort, and retry with a fresh one.
            raise BrokerError(
                "every Kafka broker was down during the batch; it is read again with a fresh "
                "producer"
            )
        if txn:
            with watchdog("committing a Kafka transaction", STUCK_S):
                if offsets:
                    self._producer.send_offsets_to_transaction(
                        offsets, self.consumer.consumer_group_metadata(), 30
                    )
                self._producer.commit_transaction(60)
            if self._delivery_errors:
                raise BrokerError(f"delivery failed: {'; '.join(self._delivery_errors[:3])}")
        elif offsets and not replaying:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        for tp in offsets:
            self.committed[f"{tp.topic}:{tp.partition}"] = tp.offset
        for key, off in last.items():
            if self.retry_until.get(key, off + 1) <= off:
                del self.retry_until[key]  # the failed batch's range is done
        self._failures = 0
        # Step 8: what the commit decided. Users whose write was fenced off belong to a
        # newer owner, which settles them itself.
        fenced = written.fenced_users
        self.store.settle({u: v for u, v in result.settle.items() if u not in fenced})
        self.store.set_timers({u: v for u, v in result.timers.items() if u not in fenced})
        new_users = [u for u in by_user if states.get(u) is None and u not in fenced]
        if new_users:
            self.sample_size = self.store.sample_users(
                new_users, s.reservoir_size, self._sample_rng
            )
        self.metrics.republished_changes.inc(result.republished)
        return result

    def recover(
        self,
        exc: Exception,
        first: Mapping[tuple[str, int], int],
        stop: StopFlag,
        last: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        """Abort what a failed :meth:`run` started, rewind the consumer to ``first`` (the
        batch's first offsets), and back off (longer after each failure in a row) before
        the batch is consumed again. Raises :class:`~stream.errors.BrokerError` when the
        producer was fenced: another process took over this transactional id.

        ``last``: the batch's last offsets. Until they are committed, no batch reads past
        them (:attr:`retry_until`): a user holds one change in doubt at a time, so a retry
        that also took their next events would store the next change over the one never
        committed, and a second failure would lose it."""
        assert self._producer is not None and self.consumer is not None
        for key, off in (last or {}).items():
            self.retry_until[key] = max(self.retry_until.get(key, off), off)
        self._failures += 1
        self.metrics.batch_failures.inc()
        if isinstance(exc, RedisError):
            self.metrics.redis_errors.inc()
        if self.settings.transactional:
            try:
                with watchdog("aborting a Kafka transaction", STUCK_S):
                    self._producer.abort_transaction(30)
            except KafkaException as abort_exc:
                if abort_exc.args[0].fatal():
                    raise BrokerError(
                        f"the producer was fenced or failed fatally ({abort_exc.args[0].str()}):"
                        " another process took over this transactional id; exiting"
                    ) from None
        for (topic, part), off in first.items():
            with contextlib.suppress(KafkaException):
                self.consumer.seek(TopicPartition(topic, part, off))
        delay = min(0.2 * 2 ** (self._failures - 1), 5.0)
        log.warning("batch not committed (%s); replaying it in %.1fs", exc, delay)
        stop.wait(delay)

    def _check_held(self, inputs: Mapping[str, int]) -> str:
        """Raise :class:`StateLostError` if Redis holds less than this process had it write:
        another key space, or an applied offset below the one it last raised. Returns the
        key space's epoch."""
        if self.epoch is None:
            # The last comparison with the committed offsets failed (Redis or the broker
            # away): nothing is written before one succeeds.
            raise StateLostError("Redis not yet compared with the committed offsets")
        known = {pos: self.held[pos] for pos in inputs if pos in self.held}
        epoch, held = self.store.read_applied(known)
        if epoch != self.epoch:
            raise StateLostError(
                f"Redis's key space changed (epoch {self.epoch} -> {epoch or 'none'}): "
                "it lost its data; rebuilding from Kafka"
            )
        behind = {p: (held.get(p), off) for p, off in known.items() if held.get(p, -1) < off}
        if behind:
            raise StateLostError(
                "Redis holds less than was written ("
                + ", ".join(f"{p}: {h} < {o}" for p, (h, o) in sorted(behind.items()))
                + "); rebuilding from Kafka"
            )
        return self.epoch

    # -- positions ------------------------------------------------------------------------

    def forget(self, parts: list[TopicPartition]) -> None:
        """Forget the committed positions (and marks) of revoked partitions: their next
        owner moves them on, so they are read again if the partitions come back."""
        for tp in parts:
            self.committed.pop(f"{tp.topic}:{tp.partition}", None)
            self.committed.pop(self._mark(tp.partition), None)
            self.held.pop(f"{tp.topic}:{tp.partition}", None)
            self.retry_until.pop((tp.topic, tp.partition), None)

    def positions(self, positions: set[str]) -> dict[tuple[str, int], int]:
        """The last consumed offset of each input position (``topic:partition``) that has
        one, in the form :meth:`run` commits (it adds one): a batch without input commits
        the positions it has, which fences it off if the partitions moved on."""
        assert self.consumer is not None
        parts = []
        for pos in positions:
            topic, _, part = pos.rpartition(":")
            parts.append(TopicPartition(topic, int(part)))
        return {
            (tp.topic, tp.partition): tp.offset - 1
            for tp in self.consumer.position(parts)
            if tp.offset >= 0
        }

    def _mark(self, partition: int) -> str:
        """The mark position of an input partition (see :func:`stream.batch.process_batch`)."""
        return f"{self.settings.marks_topic}:{partition}"

    def committed_with_marks(self, partitions: set[int]) -> dict[str, int]:
        """The committed offsets this process knows, with the group's marks of
        ``partitions`` read where it knows none: what a stored change is checked against."""
        self._load_marks(partitions)
        return dict(self.committed)

    def _load_marks(self, partitions: set[int]) -> None:
        """Read the group's committed marks of ``partitions`` this process does not know."""
        assert self.consumer is not None
        missing = [p for p in partitions if self._mark(p) not in self.committed]
        if not missing:
            return
        topic = self.settings.marks_topic
        try:
            got = self.consumer.committed([TopicPartition(topic, p) for p in missing], 10)
        except KafkaException as exc:
            raise BrokerError(f"could not read the committed marks ({exc.args[0].str()})") from None
        for tp in got:
            self.committed[self._mark(tp.partition)] = max(tp.offset, 0)

    # -- producing ------------------------------------------------------------------------

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
