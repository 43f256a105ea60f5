"""The job in Quix Streams, the most used pure-Python Kafka stream-processing library.

Written as its documentation shows: an ``Application`` with a consumer group and
``auto_offset_reset="earliest"``, one topic definition per input with the JSON
deserializer, the two input ``StreamingDataFrame`` s joined with ``.concat()`` (the
library then reads partition *n* of both topics in timestamp order, which is what
co-partitioned clicks and purchases need), then ``.apply()`` and ``.filter()`` steps and
``.to_topic()`` for the changes, with the library's defaults for everything else
(at-least-once: offsets committed every 5 s after the producer is flushed).

Per message the steps do what :mod:`loadtest.peers.per_event` does:

1. validate the deserialised document with :func:`stream.events.decode` (it takes
   bytes, so the document is serialised again for it: about a microsecond, against
   hundreds for the Redis round trips); a payload that is not JSON never reaches the
   dataframe and is counted as invalid by the consumer-error callback;
2. ``GET`` the user's state key, fold the event in, scale, River ``KMeans.predict_one``
   then ``learn_one`` (:class:`~loadtest.peers.OnlineSegmentation`);
3. ``HSET`` the user hash and ``SREM``/``SADD`` the membership sets on a change;
4. when the segment changed, pass the change message on to ``.to_topic()`` (key = the
   input message's key, the user id).

The per-user state stays in Redis rather than in Quix's RocksDB state stores: the user
hash and membership sets are the job's output (campaign engines read them), so a Quix
version of the job writes them either way, and keeping the state beside them is the
same one round trip a state store would save only by adding a changelog topic.

The run is bounded by counting processed messages in ``on_message_processed`` and
calling ``Application.stop()`` at ``n_events`` (``Application.run(count=...)`` counts
*outputs*, and most messages produce none here). ``Application.run()`` installs signal
handlers, so it must run on the main thread; :func:`run` restores the previous ones.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import redis

from loadtest.peers import OnlineSegmentation, PeerResult, read_state, write_user
from state.keys import Keys
from stream.events import DeadLetter, Event, decode

NAME = "quix"


class BoundedRun:
    """Counts processed input messages and calls ``stop`` once, at the ``limit``-th.

    Also records when (wall and CPU clock) the first message was seen.

    >>> stops = []
    >>> b = BoundedRun(2, lambda: stops.append(1))
    >>> b.processed(); b.processed(); b.processed()
    >>> (b.count, len(stops))
    (3, 1)
    """

    def __init__(self, limit: int, stop: Callable[[], None]) -> None:
        self.limit = limit
        self.count = 0
        self.started: float | None = None
        self.cpu_started = 0.0
        self._stop = stop

    def first_seen(self) -> None:
        """Start the clocks at the first message (a no-op afterwards)."""
        if self.started is None:
            self.started = time.perf_counter()
            self.cpu_started = time.process_time()

    def processed(self, *_: object) -> None:
        """One input message is done (usable as ``on_message_processed``)."""
        self.first_seen()
        self.count += 1
        if self.count == self.limit:
            self._stop()


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


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
    """Run the Quix Streams application until it has processed ``n_events`` messages.

    Timing starts at the first message and ends when ``Application.run()`` returns,
    after its final checkpoint (producer flushed, offsets committed) and consumer close.

    Raises
    ------
    RuntimeError
        If Quix Streams is not installed (``pip install 'streaming-segmenter[bench]'``).
    ValueError
        If ``n_events`` is less than 1.
    TimeoutError
        If ``n_events`` messages were not processed within ``timeout_s`` seconds.
    """
    try:
        with warnings.catch_warnings(record=True):
            # Its schema-registry dependency (authlib) warns about its own imports on
            # import, with an "always" filter: record the warnings, and drop them.
            from quixstreams import Application, message_context
    except ImportError as exc:
        raise RuntimeError(
            "the Quix Streams peer needs the quixstreams package: "
            "pip install 'streaming-segmenter[bench]'"
        ) from exc
    if n_events < 1:
        raise ValueError(f"n_events must be >= 1, got {n_events}")

    client = redis.Redis.from_url(redis_url)
    keys = Keys()
    job = OnlineSegmentation()
    invalid = changes = 0
    app: Any = None

    def stop() -> None:
        app.stop()

    bounded = BoundedRun(n_events, stop)

    def validate(value: Any, key: Any, timestamp: int, headers: Any) -> Event | None:
        nonlocal invalid
        bounded.first_seen()
        ctx = message_context()
        event = decode(
            orjson.dumps(value), key, ctx.topic, ctx.partition, ctx.offset,
            time.time_ns() // 1_000_000,
        )  # fmt: skip
        if isinstance(event, DeadLetter):
            invalid += 1
            return None
        return event

    def segment(event: Event) -> dict[str, Any] | None:
        nonlocal changes
        outcome = job.step(read_state(client, keys, event.user_id), event, event_now())
        if outcome is None:
            return None
        write_user(client, keys, outcome)
        if outcome.change is not None:
            changes += 1
        return outcome.change

    def on_consumer_error(exc: Exception, message: Any, logger: logging.Logger) -> bool:
        nonlocal invalid
        if message is None or message.error() is not None:
            return False  # a Kafka error, not a bad payload: let the library raise it
        invalid += 1  # the JSON deserializer rejected the value: skip it, as decode would
        bounded.processed()
        return True

    with tempfile.TemporaryDirectory(prefix="quix-state-") as state_dir:
        app = Application(
            broker_address=bootstrap,
            consumer_group=group_id,
            auto_offset_reset="earliest",
            state_dir=state_dir,
            loglevel="WARNING",
            on_message_processed=bounded.processed,
            on_consumer_error=on_consumer_error,
        )
        clicks = app.topic(clicks_topic, value_deserializer="json")
        purchases = app.topic(purchases_topic, value_deserializer="json")
        changes_out = app.topic(changes_topic, value_serializer="json")

        sdf = app.dataframe(clicks).concat(app.dataframe(purchases))
        sdf = sdf.apply(validate, metadata=True).filter(lambda e: e is not None)
        sdf = sdf.apply(segment).filter(lambda c: c is not None)
        sdf.to_topic(changes_out)

        watchdog = threading.Timer(timeout_s, stop)
        watchdog.daemon = True
        watchdog.start()
        try:
            with _signal_handlers_kept():
                app.run()
        finally:
            watchdog.cancel()
            client.close()
    ended, cpu_ended = time.perf_counter(), time.process_time()
    if bounded.count < n_events:
        raise TimeoutError(
            f"{NAME}: {bounded.count} of {n_events} messages processed in {timeout_s:.0f}s"
        )
    assert bounded.started is not None
    return PeerResult.measured(
        NAME,
        bounded.count,
        ended - bounded.started,
        cpu_ended - bounded.cpu_started,
        changes=changes,
        invalid=invalid,
    )


def event_now() -> int:
    """Wall-clock epoch milliseconds, for the change message's ``emitted_at``."""
    return time.time_ns() // 1_000_000
