"""The job as a Bytewax dataflow: a Rust runtime (Timely Dataflow) driving Python steps.

Written as Bytewax's documentation shows a Kafka job: a ``Dataflow`` with
``op.input`` from a ``KafkaSource`` over both input topics, one ``op.filter_map`` step,
and ``op.output`` to a ``KafkaSink`` for the changes, run by ``bytewax.testing.run_main``
(one worker, in this process). Everything else is the library's default: recovery off, so
no progress survives a restart (Bytewax keeps offsets in its own recovery store, not in
the consumer group, and only when recovery is configured), and the sink flushes its
producer after each batch it writes.

The step does per message what :mod:`loadtest.peers.per_event` does:

1. validate the payload with :func:`stream.events.decode`; a bad one is counted invalid;
2. ``GET`` the user's state key, fold the event in, scale, River ``KMeans.predict_one``
   then ``learn_one`` (:class:`~loadtest.peers.OnlineSegmentation`);
3. ``HSET`` the user hash and ``SREM``/``SADD`` the membership sets on a change;
4. when the segment changed, hand the change message to the sink (key = the user id).

The state stays in Redis rather than in Bytewax's ``stateful_map`` for the reason the
Quix Streams peer gives: the user hash and membership sets are the job's output, so the
job writes them either way.

A ``KafkaSource`` reads whole partitions (``tail=False`` stops at their ends) and has no
"stop after n messages": the step counts the messages it processed, stops its clocks at
the ``n_events``-th, and passes the rest of the backlog through untouched and untimed.

It runs from a virtual environment of its own (``.venv-bytewax``, which the benchmark
suite creates), like the Quix Streams peer.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis

from loadtest.peers import OnlineSegmentation, PeerResult, read_state, write_user
from loadtest.peers.quix import BoundedRun, event_now
from state.keys import Keys
from stream.events import DeadLetter, decode

NAME = "bytewax"


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
    """Run the dataflow over the backlog, timing its first ``n_events`` messages.

    ``group_id`` is unused: a Bytewax ``KafkaSource`` assigns partitions itself.

    Raises
    ------
    RuntimeError
        If Bytewax is not installed (the benchmark suite installs it in ``.venv-bytewax``).
    ValueError
        If ``n_events`` is less than 1.
    TimeoutError
        If fewer than ``n_events`` messages were processed, or not within ``timeout_s``.
    """
    try:
        import bytewax.operators as op
        from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
        from bytewax.dataflow import Dataflow
        from bytewax.testing import run_main
    except ImportError as exc:
        raise RuntimeError(
            "the Bytewax peer needs the bytewax package with its Kafka extra: "
            "pip install 'bytewax[kafka]'"
        ) from exc
    if n_events < 1:
        raise ValueError(f"n_events must be >= 1, got {n_events}")

    client = redis.Redis.from_url(redis_url)
    keys = Keys()
    job = OnlineSegmentation()
    invalid = changes = 0
    ended: tuple[float, float] | None = None

    def stop() -> None:
        nonlocal ended
        ended = (time.perf_counter(), time.process_time())

    bounded = BoundedRun(n_events, stop)

    def segment(msg: Any) -> Any:
        nonlocal invalid, changes
        if bounded.count >= n_events:
            return None  # past the measured part of the backlog
        bounded.first_seen()
        event = decode(msg.value, msg.key, msg.topic, msg.partition, msg.offset, event_now())
        out = None
        if isinstance(event, DeadLetter):
            invalid += 1
        else:
            outcome = job.step(read_state(client, keys, event.user_id), event, event_now())
            if outcome is not None:
                write_user(client, keys, outcome)
                if outcome.change is not None:
                    changes += 1
                    out = KafkaSinkMessage(event.user_id.encode(), orjson.dumps(outcome.change))
        bounded.processed()
        return out

    flow = Dataflow("segmenter_peer")
    messages = op.input(
        "in", flow, KafkaSource([bootstrap], [clicks_topic, purchases_topic], tail=False)
    )
    op.output(
        "out", op.filter_map("segment", messages, segment), KafkaSink([bootstrap], changes_topic)
    )
    deadline = time.monotonic() + timeout_s
    try:
        run_main(flow)
    finally:
        client.close()
    if bounded.count < n_events or ended is None:
        raise TimeoutError(f"{NAME}: {bounded.count} of {n_events} messages in the backlog")
    if time.monotonic() > deadline:
        raise TimeoutError(f"{NAME}: the run took longer than {timeout_s:.0f}s")
    assert bounded.started is not None
    return PeerResult.measured(
        NAME,
        bounded.count,
        ended[0] - bounded.started,
        ended[1] - bounded.cpu_started,
        changes=changes,
        invalid=invalid,
    )
