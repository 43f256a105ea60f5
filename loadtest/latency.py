"""End-to-end latency of one segmenter process at fixed input rates, measured from outside.

Starts its own Redis and broker on free loopback ports (Apache Kafka where Java 17 is
here, else Tansu; stopped by PID at the end), creates the input topics, and starts one
``segmenter run`` process on them, as an operator would. Then, for each rate in turn:

1. the shopper simulator's next events (:class:`loadtest.personas.ShopperSimulator`: the
   realistic mix of searches, views, clicks, carts and purchases) are produced *live* at
   that rate, paced every 2 ms, each with event time = the wall clock when it is sent
   (made strictly increasing per user, by a millisecond where two would tie);
2. for ``--warmup`` seconds nothing is measured (the model needs its first 200 users
   for its warm start, and each rate its batches to settle);
3. for ``--duration`` seconds, one event in ``--sample-every`` is a sample: the monotonic
   clock is read just before its ``produce()``, and an observer thread polls Redis
   (pipelined ``HMGET``, every ``--poll-ms``, at most 64 samples a poll in turn) until
   that user's hash shows it applied: ``last_event_time`` (ISO-8601, milliseconds,
   UTC) at or after the sample's event
   time, and a ``segment``. The latency is the time from before ``produce()`` to the
   poll's reply that showed it; a sample not seen within ``--timeout`` seconds counts as
   unobserved;
4. at the end of the window, the consumer group's lag (input messages not yet committed)
   says whether the segmenter kept up; then the input is left to drain before the next
   rate.

The latency therefore covers the producer's linger (5 ms, librdkafka's default), the
broker, the segmenter's batch (which waits up to ``SEGMENTER_BATCH_TIMEOUT_S``, 0.02 s, for
more events when fewer than ``SEGMENTER_BATCH_MIN_EVENTS`` are ready), its work and its
Redis writes, and is up to one poll interval late (the observer sees a write
at its next poll; a few intervals when more than 64 samples are pending, which happens
only when the segmenter is seconds behind). The load generator and the observer run on
the same machine as the segmenter, the broker and Redis, and take their share of its
cores.

    python -m loadtest.latency --rates 2000,5000,10000,20000,30000 --duration 20
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import orjson
import redis
from confluent_kafka import KafkaError, Message, Producer

from loadtest.personas import ShopperSimulator
from loadtest.stack import (
    OffsetWatcher,
    SegmenterProcess,
    Stack,
    StackError,
    cpu_seconds,
    local_stack,
    produce,
    producer_config,
    wait_assigned,
)
from state.keys import Keys
from stream.messages import iso_ms
from stream.settings import Settings

DEFAULT_RATES = (2_000, 5_000, 10_000, 20_000, 30_000)
#: Seed of the live traffic (not the backlog's: this is another day's shoppers).
LIVE_SEED = 23
#: Event time span the simulator is asked for: only the order and mix of its events are
#: used (each event's time is replaced by the wall clock when it is sent).
_SIM_DAYS_MS = 30 * 86_400_000
_PACE_S = 0.002
#: Samples polled per round at most: bounds the observer's load on Redis and on the
#: cores it shares with the segmenter when the segmenter falls behind and samples pile
#: up (each is then polled every ceil(pending / this) rounds).
_MAX_PER_POLL = 64
#: Longest a step waits for its input to drain before the next rate.
_DRAIN_TIMEOUT_S = 120.0
#: Longest the first warm-up is stretched while the model has no centres yet.
_MODEL_READY_TIMEOUT_S = 120.0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values``, interpolated linearly between ranks.

    The same definition as ``numpy.percentile``'s default ("linear"): the value at rank
    ``q / 100 * (n - 1)`` of the sorted values. Infinite values (samples never seen)
    sort last, and a percentile that reaches into them is infinite.

    Raises
    ------
    ValueError
        If ``values`` is empty or ``q`` is outside ``[0, 100]``.

    Examples
    --------
    >>> percentile([3.0, 1.0, 2.0, 4.0], 50)
    2.5
    >>> percentile([10.0], 99)
    10.0
    >>> percentile([1.0, 2.0, float("inf")], 50), percentile([1.0, 2.0, float("inf")], 99)
    (2.0, inf)
    """
    if not values:
        raise ValueError("no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    lo = math.floor(rank)
    frac = rank - lo
    if frac == 0.0:
        return ordered[lo]
    low, high = ordered[lo], ordered[lo + 1]
    if math.isinf(high):
        return math.inf  # (inf - x) * frac, without the NaN that inf - inf would give
    return low + (high - low) * frac


@dataclass(frozen=True, slots=True)
class LatencyStep:
    """One rate's measurement.

    Attributes
    ----------
    rate
        Events/s asked for.
    achieved
        Events/s produced over the measured window.
    produced
        Events produced in the measured window.
    duration_s
        Length of the measured window.
    samples
        Events timed in it.
    latencies_ms
        End-to-end latency of every observed sample, milliseconds, in sending order.
    unobserved
        Samples not seen applied within the timeout.
    applied_without_segment
        Of those, samples whose event was applied but whose user had no segment yet.
    lag_start, lag_end
        Input messages the segmenter's group had not committed when the window started and
        ended.
    drain_s
        Seconds after the window until the lag was 0 (``None``: not within the timeout).
    segmenter_cores
        CPU seconds of the segmenter process per second of the window.
    batches, batch_ms, own_latency_ms
        From the segmenter's ``/metrics`` over the window: batches it committed, their
        mean duration (poll return to commit), and the mean of its own end-to-end
        latency histogram (the input's Kafka timestamp to durable effects).
    """

    rate: float
    achieved: float
    produced: int
    duration_s: float
    samples: int
    latencies_ms: list[float] = field(repr=False)
    unobserved: int
    applied_without_segment: int
    lag_start: int
    lag_end: int
    drain_s: float | None
    segmenter_cores: float
    batches: int = 0
    batch_ms: float | None = None
    own_latency_ms: float | None = None

    def quantile_ms(self, q: float) -> float | None:
        """The ``q``-th percentile latency over every sample, ms.

        A sample never seen counts as infinitely late, so the percentile is ``inf`` when
        it reaches into them; ``None`` without samples.

        >>> step = LatencyStep(1, 1, 1, 1.0, 4, [10.0, 20.0, 30.0], 1, 0, 0, 0, 0.0, 0.1)
        >>> step.quantile_ms(50), step.quantile_ms(99)
        (25.0, inf)
        """
        values = [*self.latencies_ms, *([math.inf] * self.unobserved)]
        return percentile(values, q) if values else None

    @property
    def p50_ms(self) -> float | None:
        """Median latency, ms."""
        return self.quantile_ms(50)

    @property
    def p95_ms(self) -> float | None:
        """95th percentile latency, ms."""
        return self.quantile_ms(95)

    @property
    def p99_ms(self) -> float | None:
        """99th percentile latency, ms."""
        return self.quantile_ms(99)

    @property
    def max_ms(self) -> float | None:
        """Largest latency, ms (``inf`` if a sample was never seen)."""
        return self.quantile_ms(100)

    @property
    def unobserved_share(self) -> float:
        """Share of samples never seen applied within the timeout."""
        return self.unobserved / self.samples if self.samples else 0.0

    @property
    def kept_up(self) -> bool:
        """True when the lag at the window's end was under one second of input.

        >>> step = LatencyStep(1000, 990, 990, 1.0, 20, [], 0, 0, 10, 400, 0.1, 0.2)
        >>> step.kept_up
        True
        """
        return self.lag_end < self.rate

    def line(self) -> str:
        """One line for people."""

        def ms(x: float | None) -> str:
            return "n/a" if x is None else "never seen" if math.isinf(x) else f"{x:.0f}"

        return (
            f"{self.rate:>7.0f}/s asked, {self.achieved:>7.0f}/s sent: "
            f"p50 {ms(self.p50_ms)} ms, p95 {ms(self.p95_ms)} ms, p99 {ms(self.p99_ms)} ms, "
            f"max {ms(self.max_ms)} ms over {len(self.latencies_ms)} of {self.samples} "
            f"samples ({self.unobserved_share:.1%} unobserved); lag at end {self.lag_end}, "
            f"{'kept up' if self.kept_up else 'FELL BEHIND'}; segmenter "
            f"{self.segmenter_cores:.2f} cores, {self.batches} batches of "
            f"{ms(self.batch_ms)} ms, its own latency {ms(self.own_latency_ms)} ms"
        )


@dataclass(frozen=True, slots=True)
class LatencyResult:
    """Every rate's step, and how they were measured."""

    steps: list[LatencyStep]
    users: int
    partitions: int
    warmup_s: float
    duration_s: float
    sample_every: int
    poll_ms: float
    timeout_s: float
    broker: str

    def step_at(self, rate: float) -> LatencyStep | None:
        """The step measured at ``rate`` (``None`` if there was none)."""
        return next((s for s in self.steps if s.rate == rate), None)


# -- the observer --------------------------------------------------------------------------


@dataclass(slots=True)
class _Sample:
    key: str
    event_time: bytes  # iso_ms of the event time, as Redis returns it
    sent: float  # time.monotonic() just before produce()


class Observer:
    """Polls Redis for sampled events until each is seen applied, on its own thread.

    Parameters
    ----------
    client
        A Redis client for the observer's thread alone.
    poll_s
        Pause between polls.
    timeout_s
        A sample not seen applied this long after it was sent is given up.
    """

    def __init__(self, client: redis.Redis, poll_s: float, timeout_s: float) -> None:
        self._client = client
        self._poll_s = poll_s
        self._timeout_s = timeout_s
        self._incoming: collections.deque[_Sample] = collections.deque()
        self._stop = threading.Event()
        self.latencies_ms: list[float] = []
        self.unobserved = 0
        self.applied_without_segment = 0
        self._thread = threading.Thread(target=self._run, name="latency-observer", daemon=True)
        self._thread.start()

    def add(self, key: str, event_time_ms: int, sent: float) -> None:
        """Watch for the event at ``event_time_ms`` in ``key``, sent at ``sent``."""
        self._incoming.append(_Sample(key, iso_ms(event_time_ms).encode(), sent))

    def finish(self) -> None:
        """Wait until every sample is seen or given up, then stop the thread."""
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # Oldest first; a sample still pending after its poll goes to the back, so when
        # more than _MAX_PER_POLL are pending, each is polled every few rounds in turn.
        pending: collections.deque[_Sample] = collections.deque()
        while True:
            stopping = self._stop.is_set()
            while self._incoming:
                pending.append(self._incoming.popleft())
            if pending:
                batch = [pending.popleft() for _ in range(min(len(pending), _MAX_PER_POLL))]
                pending.extend(self._poll(batch))
            elif stopping:
                return
            time.sleep(self._poll_s)

    def _poll(self, batch: list[_Sample]) -> list[_Sample]:
        """One pipelined round trip for ``batch``; returns the samples still pending."""
        pipe = self._client.pipeline(transaction=False)
        for s in batch:
            pipe.hmget(s.key, "last_event_time", "segment")
        replies = pipe.execute()
        seen = time.monotonic()
        left = []
        for s, (last, segment) in zip(batch, replies, strict=True):
            # Same fixed-width ISO format on both sides: string order is time order.
            applied = last is not None and last >= s.event_time
            if applied and segment is not None:
                self.latencies_ms.append((seen - s.sent) * 1000.0)
            elif seen - s.sent > self._timeout_s:
                self.unobserved += 1
                self.applied_without_segment += applied
            else:
                left.append(s)
        return left


# -- the load ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Prepared:
    key: bytes
    user: str
    purchase: bool
    head: bytes  # the event's JSON without its closing brace; ``,"ts":<ms>}`` follows


def _prepare(events: Iterator[dict[str, object]], n: int) -> list[_Prepared]:
    """Serialise ``n`` events ahead of time, all but their event time."""
    out = []
    for ev in itertools.islice(events, n):
        user = str(ev["user_id"])
        body = {k: v for k, v in ev.items() if k != "ts"}
        out.append(
            _Prepared(user.encode(), user, ev["type"] == "purchase", orjson.dumps(body)[:-1])
        )
    return out


class LiveProducer:
    """Sends prepared events at a fixed rate with event time = now, sampling some."""

    def __init__(self, s: Settings, keys: Keys) -> None:
        self._s = s
        self._keys = keys
        self._failed: list[str] = []
        self._last_ts: dict[str, int] = {}
        # linger.ms 5, librdkafka's default: the latency includes what a producer waits.
        self._producer = Producer(
            {**producer_config(s.kafka_bootstrap, 5), "on_delivery": self._on_delivery}
        )

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and len(self._failed) < 5:
            self._failed.append(err.str())

    def send(
        self, events: list[_Prepared], rate: float, observer: Observer | None, sample_every: int
    ) -> tuple[int, float]:
        """Send ``events`` paced at ``rate``; returns (events sent, seconds taken).

        Every ``sample_every``-th event is handed to ``observer`` (when there is one).
        """
        chunk = max(1, int(rate * _PACE_S))
        producer, poll = self._producer, self._producer.poll
        clicks, purchases = self._s.clicks_topic, self._s.purchases_topic
        last_ts, user_key = self._last_ts, self._keys.user
        started = time.monotonic()
        for i, ev in enumerate(events):
            if i % chunk == 0:
                poll(0)
                ahead = started + i / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            now = time.time_ns() // 1_000_000
            prev = last_ts.get(ev.user, 0)
            ts = now if now > prev else prev + 1
            last_ts[ev.user] = ts
            value = ev.head + b',"ts":' + str(ts).encode() + b"}"
            topic = purchases if ev.purchase else clicks
            sent = time.monotonic()
            produce(producer, topic, value, ev.key)
            if observer is not None and i % sample_every == 0:
                observer.add(user_key(ev.user), ts, sent)
        elapsed = time.monotonic() - started
        poll(0)
        return len(events), elapsed

    def close(self) -> None:
        """Deliver what is in flight and let go of the producer (before the broker stops)."""
        self._producer.flush(10)
        # The producer holds our delivery callback, which holds us: break the cycle so
        # that it is destroyed now, not at some later garbage collection.
        del self._producer

    def flush(self) -> None:
        """Deliver everything sent; raise :class:`StackError` if anything failed."""
        left = self._producer.flush(60)
        if left or self._failed:
            raise StackError(
                f"live events: {left} undelivered, failures: {'; '.join(self._failed) or 'none'}"
            )


# -- the measurement -----------------------------------------------------------------------


def measure(
    stack: Stack,
    rates: Sequence[float],
    duration_s: float = 20.0,
    warmup_s: float = 10.0,
    users: int = 100_000,
    partitions: int = 4,
    sample_every: int = 50,
    poll_ms: float = 5.0,
    timeout_s: float = 10.0,
    env: Mapping[str, str] | None = None,
    progress: bool = True,
) -> LatencyResult:
    """Measure the end-to-end latency at each of ``rates`` on ``stack`` (see the module).

    ``env`` holds ``SEGMENTER_*`` settings for the segmenter process (defaults otherwise).

    Raises
    ------
    StackError
        If the segmenter process exits, never takes its partitions, or its model never
        becomes ready; or if live events cannot be delivered.
    """
    if not rates or min(rates) <= 0 or duration_s <= 0 or warmup_s < 0 or sample_every < 1:
        raise ValueError("need positive rates and duration, warmup >= 0, sample_every >= 1")
    s = stack.settings(env)
    stack.create_inputs(s, partitions)
    seg = SegmenterProcess(s, stack.workdir / "segmenter-latency.log")
    watcher = OffsetWatcher(s, partitions)
    steps: list[LatencyStep] = []
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(watcher.close)
        cleanup.callback(seg.stop)
        wait_assigned([seg], 2 * partitions)
        now = time.time_ns() // 1_000_000
        # Plus a minute at the first rate, for a warm-up stretched while the model seeds.
        total = int(sum(r * (warmup_s + duration_s) for r in rates) + rates[0] * 60)
        sim = ShopperSimulator(users, LIVE_SEED, now - _SIM_DAYS_MS, now)
        events = sim.events(total)
        live = LiveProducer(s, Keys(s.redis_prefix))
        cleanup.callback(live.close)
        for rate in rates:
            warm = _prepare(events, int(rate * warmup_s))
            timed = _prepare(events, int(rate * duration_s))
            live.send(warm, rate, None, sample_every)
            _wait_model_ready(seg, live, rate, events)
            steps.append(
                _step(stack, seg, watcher, live, rate, timed, sample_every, poll_ms, timeout_s)
            )
            if progress:
                print(steps[-1].line(), flush=True)
    return LatencyResult(
        steps=steps,
        users=users,
        partitions=partitions,
        warmup_s=warmup_s,
        duration_s=duration_s,
        sample_every=sample_every,
        poll_ms=poll_ms,
        timeout_s=timeout_s,
        broker=stack.broker.kind,
    )


def _step(
    stack: Stack,
    seg: SegmenterProcess,
    watcher: OffsetWatcher,
    live: LiveProducer,
    rate: float,
    timed: list[_Prepared],
    sample_every: int,
    poll_ms: float,
    timeout_s: float,
) -> LatencyStep:
    seg.check()
    lag_start = watcher.lag()
    with contextlib.closing(stack.client()) as client:
        observer = Observer(client, poll_ms / 1000.0, timeout_s)
        cpu0, m0 = cpu_seconds(seg.pid), seg.metrics()
        try:
            produced, elapsed = live.send(timed, rate, observer, sample_every)
            cpu, m1 = cpu_seconds(seg.pid) - cpu0, seg.metrics()
            live.flush()
            lag_end = watcher.lag()
        finally:
            observer.finish()
    drain_s = _drain(watcher, seg)
    samples = len(observer.latencies_ms) + observer.unobserved
    return LatencyStep(
        rate=rate,
        achieved=produced / elapsed,
        produced=produced,
        duration_s=elapsed,
        samples=samples,
        latencies_ms=observer.latencies_ms,
        unobserved=observer.unobserved,
        applied_without_segment=observer.applied_without_segment,
        lag_start=lag_start,
        lag_end=lag_end,
        drain_s=drain_s,
        segmenter_cores=cpu / elapsed,
        batches=int(_delta(m0, m1, "segmenter_batch_duration_seconds_count")),
        batch_ms=_mean_ms(m0, m1, "segmenter_batch_duration_seconds"),
        own_latency_ms=_mean_ms(m0, m1, "segmenter_end_to_end_latency_seconds"),
    )


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def _mean_ms(before: dict[str, float], after: dict[str, float], histogram: str) -> float | None:
    """Mean of a Prometheus histogram's observations between two scrapes, in ms."""
    n = _delta(before, after, f"{histogram}_count")
    return _delta(before, after, f"{histogram}_sum") / n * 1000.0 if n > 0 else None


def _wait_model_ready(
    seg: SegmenterProcess, live: LiveProducer, rate: float, events: Iterator[dict[str, object]]
) -> None:
    """Keep the warm-up traffic going until the model has its centres.

    Users seen before the warm start get no segment until it, so their latency would say
    nothing about the steady state; the first rate's warm-up is stretched if need be.
    """
    deadline = time.monotonic() + _MODEL_READY_TIMEOUT_S
    while seg.metrics().get("segmenter_model_ready", 0.0) < 1.0:
        seg.check()
        if time.monotonic() > deadline:
            raise StackError(f"the model was not ready {_MODEL_READY_TIMEOUT_S:.0f}s into warm-up")
        # One more second of warm-up traffic (new events: resent ones would be duplicates).
        more = _prepare(events, max(1, int(rate)))
        if not more:
            raise StackError("the simulator ran out of events before the model was ready")
        live.send(more, rate, None, 1)


def _drain(watcher: OffsetWatcher, seg: SegmenterProcess) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < _DRAIN_TIMEOUT_S:
        seg.check()
        if watcher.lag() == 0:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


# -- the command ---------------------------------------------------------------------------


def parse_rates(text: str) -> list[float]:
    """``--rates``: comma-separated positive numbers.

    >>> parse_rates("2000, 20000")
    [2000.0, 20000.0]
    """
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The options of :func:`measure`, for this command and the suite."""
    ap.add_argument(
        "--rates",
        type=parse_rates,
        default=list(DEFAULT_RATES),
        help="events/s, comma-separated (default 2000,5000,10000,20000,30000)",
    )
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per rate")
    ap.add_argument("--warmup", type=float, default=10.0, help="unmeasured seconds per rate")
    ap.add_argument("--live-users", type=int, default=100_000, help="shoppers in the live stream")
    ap.add_argument("--sample-every", type=int, default=50, help="time one event in N")
    ap.add_argument("--poll-ms", type=float, default=5.0, help="observer's Redis poll period")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a sample is lost")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a segmenter setting, e.g. --set batch_timeout_s=0.05 (repeatable)",
    )


def settings_env(pairs: Sequence[str]) -> dict[str, str]:
    """``--set`` pairs as ``SEGMENTER_*`` variables.

    >>> settings_env(["batch_timeout_s=0.05"])
    {'SEGMENTER_BATCH_TIMEOUT_S': '0.05'}
    """
    return {f"SEGMENTER_{k.upper()}": v for k, v in (p.split("=", 1) for p in pairs)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.latency",
        description="End-to-end latency of one segmenter process at fixed input rates.",
    )
    add_arguments(ap)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    args = ap.parse_args(argv)
    sys.setswitchinterval(0.001)  # the observer thread must not wait 5 ms for the GIL
    with local_stack("segmenter-latency-", args.broker) as stack:
        print(
            f"broker: {stack.broker.kind}; cores: {os.cpu_count()}; live users "
            f"{args.live_users}; {args.warmup:.0f}s warm-up + {args.duration:.0f}s per rate; "
            f"one event in {args.sample_every} timed, Redis polled every {args.poll_ms:.0f} ms",
            flush=True,
        )
        measure(
            stack,
            args.rates,
            duration_s=args.duration,
            warmup_s=args.warmup,
            users=args.live_users,
            partitions=args.partitions,
            sample_every=args.sample_every,
            poll_ms=args.poll_ms,
            timeout_s=args.timeout,
            env=settings_env(args.set),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
