"""Process RSS and Redis memory of one segmenter process as its users grow to a million.

Starts its own Redis and broker on free loopback ports (stopped by PID at the end),
produces a backlog in which ``--users`` distinct users (default 1,000,000) have one or two
events each, and starts one ``segmenter run`` process on it. While it drains the backlog,
the process's resident set (``VmRSS`` from ``/proc/<pid>/status``), Redis's key count and
Redis's ``used_memory`` are sampled every 0.1 s. Reported at 10k, 50k, 100k, 250k, 500k
and 1M users (those up to ``--users``; each at the first sample at or past it): RSS, and
Redis bytes per user (growth of ``used_memory`` since before the run, divided by users).

The users' events come from the shopper simulator: each user replays a window of one or
two consecutive events of a simulated shopper (cycling through 2,000 of them), under its
own id and event ids, so the mix of event types and the fields are realistic while
every user stays distinct. The segmenter keeps users' state in Redis, not in the process,
so its RSS must stay bounded as users grow: the report says by how much it grew per user.

With ``--settle``, the process then keeps running until the sweep after the backlog is
done, and both are sampled once more: a state keeps its last change until its next write,
and the sweep's write drops it once delivered.

    python -m loadtest.memory --users 1000000 [--settle]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import orjson
from confluent_kafka import KafkaError, Message, Producer

from loadtest.generator import DAY_MS
from loadtest.personas import ShopperSimulator
from loadtest.stack import (
    OffsetWatcher,
    SegmenterProcess,
    Stack,
    StackError,
    local_stack,
    peak_rss_bytes,
    produce,
    producer_config,
    rss_bytes,
    wait_assigned,
)
from state.keys import Keys

#: Users at which figures are reported (those up to the run's number of users).
CHECKPOINTS = (10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000)
#: Simulated shoppers whose events the users replay.
_TEMPLATES = 2000
_SEED = 31
_SAMPLE_S = 0.1
_DRAIN_TIMEOUT_S = 1800.0


@dataclass(frozen=True, slots=True)
class MemorySample:
    """One sample taken while the backlog drained.

    Attributes
    ----------
    elapsed_s
        Seconds since the segmenter started.
    users
        Users in Redis: the key count, times the share of user hashes among the keys at
        the end (exact for the last sample).
    rss_bytes
        The segmenter process's ``VmRSS``.
    redis_used_bytes
        Redis's ``used_memory`` less its value before the run.
    """

    elapsed_s: float
    users: int
    rss_bytes: int
    redis_used_bytes: int

    @property
    def redis_bytes_per_user(self) -> float | None:
        """``redis_used_bytes / users`` (``None`` before the first user).

        >>> MemorySample(1.0, 4, 10, 4000).redis_bytes_per_user
        1000.0
        """
        return self.redis_used_bytes / self.users if self.users else None


@dataclass(frozen=True, slots=True)
class MemoryResult:
    """The samples of one run and its figures.

    Attributes
    ----------
    users, events
        Distinct users and events in the backlog.
    baseline_rss_bytes
        RSS once the segmenter held its partitions, before its first batch.
    peak_rss_bytes
        ``VmHWM`` at the end.
    points
        The first sample at or past each checkpoint (the last sample for the run's
        largest number of users), in order.
    samples
        Every sample, for the plot.
    elapsed_s
        Seconds from the segmenter's start to the backlog drained.
    settled
        With ``settle``: the sample once the sweep after the backlog had re-decided its
        users (no user swept for :data:`SETTLE_QUIET_S`), else ``None``.
    """

    users: int
    events: int
    baseline_rss_bytes: int
    peak_rss_bytes: int
    points: list[MemorySample]
    samples: list[MemorySample]
    elapsed_s: float
    settled: MemorySample | None = None

    @property
    def rss_growth_per_user(self) -> float | None:
        """RSS growth from the first point to the last, per user added between them.

        ``None`` with fewer than two points.

        >>> a, b = MemorySample(1, 10_000, 100, 0), MemorySample(2, 20_000, 200_100, 0)
        >>> MemoryResult(20_000, 30_000, 90, 200_100, [a, b], [a, b], 2.0).rss_growth_per_user
        20.0
        """
        if len(self.points) < 2 or self.points[-1].users <= self.points[0].users:
            return None
        first, last = self.points[0], self.points[-1]
        return (last.rss_bytes - first.rss_bytes) / (last.users - first.users)

    def lines(self) -> list[str]:
        """One line per point, for people."""
        out = []
        for p in self.points:
            per_user = p.redis_bytes_per_user
            out.append(
                f"{p.users:>9} users after {p.elapsed_s:6.1f}s: RSS {p.rss_bytes / 2**20:7.1f} "
                f"MiB; Redis {per_user or 0:.0f} bytes per user"
            )
        growth = self.rss_growth_per_user
        if growth is not None:
            out.append(f"RSS growth from the first point to the last: {growth:.1f} bytes per user")
        if self.settled is not None:
            s = self.settled
            out.append(
                f"once the sweep settled, after {s.elapsed_s:.1f}s: RSS "
                f"{s.rss_bytes / 2**20:.1f} MiB; Redis {s.redis_bytes_per_user or 0:.0f} "
                "bytes per user"
            )
        return out


def checkpoints(users: int, marks: Sequence[int] = CHECKPOINTS) -> list[int]:
    """The checkpoints up to ``users``, and ``users`` itself if it is not one.

    >>> checkpoints(20_000)
    [10000, 20000]
    >>> checkpoints(5_000)
    [5000]
    """
    return [m for m in marks if m < users] + [users]


def pick_points(samples: Sequence[MemorySample], marks: Sequence[int]) -> list[MemorySample]:
    """The first sample at or past each mark; the last sample for the last mark.

    Marks no sample reached are left out.

    >>> s = [MemorySample(t, u, 0, 0) for t, u in enumerate([0, 5, 12, 19, 20])]
    >>> [p.users for p in pick_points(s, [10, 20])]
    [12, 20]
    """
    out = []
    for i, mark in enumerate(marks):
        last = i == len(marks) - 1
        hit = next((s for s in samples if s.users >= mark), None)
        if last and samples and samples[-1].users >= mark:
            hit = samples[-1]
        if hit is not None:
            out.append(hit)
    return out


def user_events(
    users: int,
    now_ms: int,
    seed: int = _SEED,
    shoppers: int = _TEMPLATES,
    name: Callable[[int], str] = lambda k: f"m{k + 1:07d}",
) -> Iterator[dict[str, object]]:
    """One or two events for each of ``users`` distinct users, user by user.

    User *k* (id ``name(k)``: ``m0000001`` upwards) replays the events at positions *j*
    and maybe *j + 1* of simulated shopper ``k mod shoppers``'s history (30 days up to
    ``now_ms``, simulated with ``seed``), with its own id and event ids.
    """
    sim = ShopperSimulator(shoppers, seed, now_ms - 30 * DAY_MS, now_ms)
    histories: dict[object, list[dict[str, object]]] = {}
    for ev in sim.events(shoppers * 15):
        histories.setdefault(ev["user_id"], []).append(ev)
    templates = list(histories.values())
    for k in range(users):
        history = templates[k % len(templates)]
        n = 1 + k % 2
        start = (k // len(templates)) % len(history)
        user = name(k)
        for i, ev in enumerate(history[start : start + n]):
            yield {**ev, "user_id": user, "event_id": f"{user}-{i}"}


def produce_users(bootstrap: str, clicks: str, purchases: str, users: int) -> int:
    """Produce :func:`user_events` to the input topics; returns the events sent."""
    failed: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed.append(err.str())

    producer = Producer({**producer_config(bootstrap, 20), "on_delivery": on_delivery})
    sent = 0
    for ev in user_events(users, int(time.time() * 1000)):
        topic = purchases if ev["type"] == "purchase" else clicks
        produce(producer, topic, orjson.dumps(ev), str(ev["user_id"]).encode())
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or failed:
        raise StackError(f"backlog: {left} undelivered, {len(failed)} failed {failed[:3]}")
    return sent


def measure(
    stack: Stack, users: int, partitions: int = 4, progress: bool = True, settle: bool = False
) -> MemoryResult:
    """Drain a backlog of ``users`` distinct users with one segmenter process, sampling
    its RSS and Redis's memory (see the module). With ``settle``, then keep it running
    until the sweep after the backlog is done (no user swept for :data:`SETTLE_QUIET_S`)
    and sample once more: rewriting a state drops its last change once delivered.

    Raises
    ------
    StackError
        If the process exits early or the backlog does not drain in 30 minutes.
    """
    if users < 1:
        raise ValueError(f"users must be >= 1, got {users}")
    s = stack.settings()
    stack.create_inputs(s, partitions)
    events = produce_users(s.kafka_bootstrap, s.clicks_topic, s.purchases_topic, users)
    if progress:
        print(f"backlog: {events} events of {users} users", flush=True)
    client = stack.client()
    watcher = OffsetWatcher(s, partitions)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(client.close)
        cleanup.callback(watcher.close)
        used0 = int(client.info("memory")["used_memory"])
        ends = watcher.ends()
        seg = SegmenterProcess(s, stack.workdir / "segmenter-memory.log")
        cleanup.callback(seg.stop)
        started = time.monotonic()
        wait_assigned([seg], 2 * partitions)
        baseline = rss_bytes(seg.pid)
        raw: list[tuple[float, int, int, int]] = []
        next_check = time.monotonic()
        while True:
            seg.check()
            used = int(client.info("memory")["used_memory"])
            raw.append((time.monotonic() - started, int(client.dbsize()), rss_bytes(seg.pid), used))
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 1.0
                committed = watcher.committed()
                if all(committed[tp] >= end for tp, end in ends.items()):
                    break
                if time.monotonic() - started > _DRAIN_TIMEOUT_S:
                    raise StackError(f"the backlog did not drain in {_DRAIN_TIMEOUT_S:.0f}s")
            time.sleep(_SAMPLE_S)
        elapsed = time.monotonic() - started
        last = (rss_bytes(seg.pid), int(client.info("memory")["used_memory"]) - used0)
        peak = peak_rss_bytes(seg.pid)
        settled: tuple[float, int, int] | None = None
        if settle:
            at = _wait_swept(seg) - started
            settled = (at, rss_bytes(seg.pid), int(client.info("memory")["used_memory"]) - used0)
        # Users are counted exactly once, at the end (a SCAN of a million keys per sample
        # would load Redis); samples scale the key count by the share of user hashes among
        # keys then (other keys: the state keys of users whose states are long, timer
        # buckets, the catalogue, the model, the membership sets).
        pattern = Keys(s.redis_prefix).user("*")
        user_keys = sum(1 for _ in client.scan_iter(match=pattern, count=10_000))
        share = user_keys / max(1, int(client.dbsize()))
    samples = [MemorySample(t, round(n * share), rss, used - used0) for t, n, rss, used in raw]
    samples.append(MemorySample(elapsed, user_keys, *last))
    result = MemoryResult(
        users=users,
        events=events,
        baseline_rss_bytes=baseline,
        peak_rss_bytes=peak,
        points=pick_points(samples, checkpoints(users)),
        samples=samples,
        elapsed_s=elapsed,
        settled=None if settled is None else MemorySample(settled[0], user_keys, *settled[1:]),
    )
    if progress:
        print("\n".join(result.lines()), flush=True)
    return result


#: The sweep counts as done once no user was swept for this long.
SETTLE_QUIET_S = 10.0


def _wait_swept(seg: SegmenterProcess) -> float:
    """Wait until ``seg`` swept no user for :data:`SETTLE_QUIET_S` (at most
    :data:`_DRAIN_TIMEOUT_S`); return when it last swept one (monotonic)."""
    last, moved_at = -1.0, time.monotonic()
    deadline = moved_at + _DRAIN_TIMEOUT_S
    while time.monotonic() - moved_at < SETTLE_QUIET_S:
        seg.check()
        swept = seg.metrics().get("segmenter_swept_users_total", last)
        if swept != last:
            last, moved_at = swept, time.monotonic()
        if time.monotonic() > deadline:
            raise StackError(f"the sweep did not settle in {_DRAIN_TIMEOUT_S:.0f}s")
        time.sleep(1.0)
    return moved_at


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.memory",
        description="RSS and Redis memory of one segmenter process as its users grow.",
    )
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    ap.add_argument(
        "--settle",
        action="store_true",
        help="after the backlog, wait until the sweep is done and measure again",
    )
    args = ap.parse_args(argv)
    with local_stack("segmenter-memory-", args.broker) as stack:
        print(f"broker: {stack.broker.kind}; cores: {os.cpu_count()}; users {args.users}")
        measure(stack, args.users, args.partitions, settle=args.settle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
