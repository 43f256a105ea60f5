"""Throughput of the segmenter on the local stack, from a pre-filled backlog.

Starts its own Redis and broker on free loopback ports (stopped by PID at the end),
produces a backlog with the shopper generator, then times one in-process segmenter
draining it: from its first batch to its last, so group join time is not counted.

    python -m loadtest.bench_throughput --users 50000 --events 500000

With ``--processes N`` it instead starts N ``segmenter run`` processes in one consumer
group, as an operator would, and times them two ways: from start to the last committed
offset (start-up and group join included), and *steady*: from the moment every process
holds its partitions and the first 10 % of the backlog is committed to the last batch,
over the events committed in that span only. The steady rate is the one to compare
between runs with different N.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from consumers.app import Segmenter, tune_collector
from loadtest.devstack.servers import free_port
from loadtest.generator import GenerateReport, produce_backlog
from loadtest.stack import (
    OffsetWatcher,
    SegmenterProcess,
    Stack,
    StackError,
    cpu_seconds,
    local_stack,
    peak_rss_bytes,
    wait_assigned,
)
from state.keys import Keys
from stream.settings import Settings

#: How long N processes may take to drain the backlog before the run is called off.
DRAIN_TIMEOUT_S = 1800.0
#: Share of the backlog left out of the steady rate: start-up, group join and the model's
#: warm start (a sync after every batch until it has its first centres) happen in it.
STEADY_SKIP = 0.1


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    """One timed drain of the backlog.

    Attributes
    ----------
    processes
        Segmenter processes (1 for the in-process run).
    in_process
        True for the in-process run, False for ``segmenter run`` child processes.
    events
        Events the timed span stands for: the whole backlog in process; with processes,
        those committed after every process held its partitions and the first 10 % of
        the backlog was committed.
    elapsed_s
        The timed span: first batch to last batch in process; with processes, from the
        start of the steady span to the last batch committed.
    events_per_s
        ``events / elapsed_s``: the sustained rate.
    cpu_s
        CPU time of the segmenter process(es) over the timed span, seconds.
    wall_s
        Start of the segmenter(s) to the last commit, start-up and group join included.
    backlog_events
        Events in the backlog.
    users
        User hashes in Redis afterwards.
    redis_bytes_per_user
        Growth of Redis's ``used_memory`` over the run divided by ``users``.
    peak_rss_bytes
        Largest peak RSS (``VmHWM``) of the segmenter process(es); 0 in process.
    changes
        Segment changes published (in process only; -1 with processes).
    redis_commands
        Commands Redis ran over the timed span, those the write scripts run included
        (``INFO commandstats``); -1 if not counted.
    redis_script_calls
        Of those, the script calls (``EVALSHA``) the segmenter sent; -1 if not counted.
    broker_cpu_s, redis_cpu_s
        CPU time of the broker and of Redis over the timed span, seconds: on a machine
        whose cores they share with the segmenter, what each event costs them is
        CPU the segmenter cannot have. -1 if not measured.
    """

    processes: int
    in_process: bool
    events: int
    elapsed_s: float
    events_per_s: float
    cpu_s: float
    wall_s: float
    backlog_events: int
    users: int
    redis_bytes_per_user: float
    peak_rss_bytes: int = 0
    changes: int = -1
    redis_commands: int = -1
    redis_script_calls: int = -1
    broker_cpu_s: float = -1.0
    redis_cpu_s: float = -1.0

    @property
    def cores(self) -> float:
        """``cpu_s / elapsed_s``: cores the segmenter(s) kept busy.

        >>> ThroughputResult(1, True, 10, 2.0, 5.0, 1.0, 2.0, 10, 1, 1.0).cores
        0.5
        """
        return self.cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def redis_commands_per_event(self) -> float | None:
        """Commands Redis ran per event of the timed span (``None`` if not counted).

        >>> r = ThroughputResult(1, True, 10, 2.0, 5.0, 1.0, 2.0, 10, 1, 1.0)
        >>> r.redis_commands_per_event is None
        True
        >>> r = ThroughputResult(1, True, 10, 2.0, 5.0, 1.0, 2.0, 10, 1, 1.0, 0, -1, 25, 3)
        >>> r.redis_commands_per_event
        2.5
        """
        if self.redis_commands < 0 or not self.events:
            return None
        return self.redis_commands / self.events

    @property
    def redis_script_calls_per_event(self) -> float | None:
        """Script calls the segmenter sent per event of the timed span (``None`` if not
        counted)."""
        if self.redis_script_calls < 0 or not self.events:
            return None
        return self.redis_script_calls / self.events

    def cpu_us_per_event(self) -> dict[str, float]:
        """CPU microseconds per event of the timed span, by process: ``segmenter``, and
        ``broker`` and ``redis`` when measured.

        >>> r = ThroughputResult(1, False, 1000, 2.0, 500.0, 0.05, 2.0, 1000, 1, 1.0,
        ...                      broker_cpu_s=0.02, redis_cpu_s=0.01)
        >>> {k: round(v, 1) for k, v in r.cpu_us_per_event().items()}
        {'segmenter': 50.0, 'broker': 20.0, 'redis': 10.0}
        """
        if not self.events:
            return {}
        out = {"segmenter": self.cpu_s / self.events * 1e6}
        if self.broker_cpu_s >= 0:
            out["broker"] = self.broker_cpu_s / self.events * 1e6
        if self.redis_cpu_s >= 0:
            out["redis"] = self.redis_cpu_s / self.events * 1e6
        return out

    def describe(self) -> str:
        """Two lines for people: the rate, then CPU and Redis figures."""
        if self.in_process:
            head = (
                f"segmenter: {self.events} messages in {self.elapsed_s:.2f}s = "
                f"{self.events_per_s:.0f} events/s"
            )
        else:
            head = (
                f"{self.processes} segmenter processes: {self.backlog_events} events in "
                f"{self.wall_s:.2f}s = {self.backlog_events / self.wall_s:.0f} events/s "
                f"(start-up and group join included); steady, after the first "
                f"{self.backlog_events - self.events}: "
                f"{self.events} events in {self.elapsed_s:.2f}s = {self.events_per_s:.0f} "
                "events/s"
            )
        changes = f"segment changes: {self.changes}; " if self.changes >= 0 else ""
        per_event, scripts = self.redis_commands_per_event, self.redis_script_calls_per_event
        commands = (
            ""
            if per_event is None or scripts is None
            else f"; Redis commands per event: {per_event:.2f} ({scripts:.3f} script calls)"
        )
        per = self.cpu_us_per_event()
        servers = (
            f"\nCPU per event: segmenter {per['segmenter']:.1f} us, broker "
            f"{per['broker']:.1f} us, Redis {per['redis']:.1f} us"
            if "broker" in per and "redis" in per
            else ""
        )
        return (
            f"{head}\n(CPU {self.cpu_s:.1f}s = {self.cores:.2f} cores) {changes}"
            f"users in Redis: {self.users}; Redis memory per user: "
            f"{self.redis_bytes_per_user:.0f} bytes{commands}{servers}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    ap.add_argument(
        "--processes",
        type=int,
        default=0,
        help="run N segmenter processes instead of one in-process segmenter (0)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a segmenter setting for this run, e.g. --set model_refit_updates=0 (repeatable)",
    )
    args = ap.parse_args(argv)
    env = {f"SEGMENTER_{k.upper()}": v for k, v in (a.split("=", 1) for a in args.set)}

    with local_stack("segmenter-bench-", args.broker) as stack:
        s = stack.settings(env, batch_max_events=args.batch)
        print(
            f"broker: {stack.broker.kind}; cores: {os.cpu_count()}; users {args.users}; "
            f"events {args.events}; batch {args.batch}"
        )
        gen = prepare_backlog(stack, s, args.partitions, args.users, args.events)
        print(f"backlog produced: {gen.events_sent} events at {gen.events_per_s:.0f}/s")
        if args.processes:
            result = measure_processes(stack, s, args.processes, args.partitions, gen.events_sent)
        else:
            result = measure_in_process(stack, s, gen.events_sent)
    print(result.describe())
    return 0


def prepare_backlog(
    stack: Stack, s: Settings, partitions: int, users: int, events: int
) -> GenerateReport:
    """Create the input topics and produce the benchmarks' backlog to them."""
    stack.create_inputs(s, partitions)
    return produce_backlog(s, users, events)


def _redis_before(stack: Stack) -> int:
    with contextlib.closing(stack.client()) as c:
        c.flushdb()
        return int(c.info("memory")["used_memory"])


def _redis_after(stack: Stack, s: Settings, before: int) -> tuple[int, float]:
    with contextlib.closing(stack.client()) as c:
        pattern = Keys(s.redis_prefix).user("*")  # user hashes only, not their other keys
        users = sum(1 for _ in c.scan_iter(match=pattern, count=10_000))
        used = int(c.info("memory")["used_memory"])
    return users, (used - before) / max(users, 1)


def redis_commands(stack: Stack) -> tuple[int, int]:
    """Commands Redis has run so far (those scripts run included), and of those the
    script calls (``EVALSHA`` and ``EVAL``), from ``INFO commandstats``."""
    with contextlib.closing(stack.client()) as c:
        stats = c.info("commandstats")
    calls = {str(k).removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return sum(calls.values()), calls.get("evalsha", 0) + calls.get("eval", 0)


def _server_cpu(stack: Stack) -> tuple[float, float]:
    """CPU seconds the broker and Redis have used so far."""
    return cpu_seconds(stack.broker.pid), cpu_seconds(stack.redis.pid)


def measure_in_process(stack: Stack, s: Settings, backlog_events: int) -> ThroughputResult:
    """Drain the backlog with one :class:`~consumers.app.Segmenter` in this process.

    Redis database 0 is emptied first. The span timed is the segmenter's first batch to
    its last, so the group join is left out; CPU is this whole process's. The garbage
    collector is set as ``segmenter run`` sets it (:func:`~consumers.app.tune_collector`).
    """
    before = _redis_before(stack)
    seg = Segmenter(s)
    seg.start()
    tune_collector()
    stop = threading.Event()
    t = threading.Thread(target=seg.run, args=(stop,))
    commands0 = redis_commands(stack)
    servers0 = _server_cpu(stack)
    cpu0 = time.process_time()
    wall0 = time.monotonic()
    t.start()
    try:
        while seg.stats.messages < backlog_events:
            if not t.is_alive():
                raise StackError("the segmenter's loop ended before the backlog was drained")
            time.sleep(0.05)
        cpu = time.process_time() - cpu0
        commands1 = redis_commands(stack)
        servers1 = _server_cpu(stack)
    finally:
        stop.set()
        t.join()
        seg.close()
    assert seg.stats.first_batch_at is not None and seg.stats.last_batch_at is not None
    elapsed = seg.stats.last_batch_at - seg.stats.first_batch_at
    users, per_user = _redis_after(stack, s, before)
    return ThroughputResult(
        processes=1,
        in_process=True,
        events=seg.stats.messages,
        elapsed_s=elapsed,
        events_per_s=seg.stats.messages / elapsed,
        cpu_s=cpu,
        wall_s=seg.stats.last_batch_at - wall0,
        backlog_events=backlog_events,
        users=users,
        redis_bytes_per_user=per_user,
        changes=seg.stats.changes,
        redis_commands=commands1[0] - commands0[0],
        redis_script_calls=commands1[1] - commands0[1],
        broker_cpu_s=servers1[0] - servers0[0],
        redis_cpu_s=servers1[1] - servers0[1],
    )


def measure_processes(
    stack: Stack,
    s: Settings,
    processes: int,
    partitions: int,
    backlog_events: int,
    log_dir: Path | None = None,
    skip_share: float = STEADY_SKIP,
) -> ThroughputResult:
    """Drain the backlog with ``processes`` ``segmenter run`` processes in one new group.

    Redis database 0 is emptied first and the group is new (``s.group_id`` plus a random
    suffix), so runs on the same backlog start alike. The steady span starts once every
    process holds its partitions and the group has committed ``skip_share`` of the
    backlog (those events are left out of ``events``), and ends at the latest
    ``segmenter_last_batch_timestamp_seconds``: so runs with different numbers of
    processes are timed over the same part of the backlog.

    Raises
    ------
    StackError
        If a process exits early, or the backlog is not drained in
        :data:`DRAIN_TIMEOUT_S`.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    run_id = uuid.uuid4().hex[:8]
    s = s.replace(group_id=f"{s.group_id}-{processes}p-{run_id}")
    logs = log_dir or stack.workdir
    before = _redis_before(stack)
    watcher = OffsetWatcher(s, partitions)
    procs: list[SegmenterProcess] = []
    try:
        ends = watcher.ends()
        wall0 = time.time()
        for i in range(processes):
            own = s.replace(instance_id=f"bench-{run_id}-{i}", metrics_port=free_port())
            procs.append(SegmenterProcess(own, logs / f"segmenter-{run_id}-{i}.log"))
        wait_assigned(procs, 2 * partitions)
        skip = int(backlog_events * skip_share)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        t0, done0, cpu0 = None, 0, 0.0
        commands0 = (0, 0)
        servers0 = (0.0, 0.0)
        while True:
            for p in procs:
                p.check()
            committed = watcher.committed()
            if t0 is None and sum(committed.values()) >= skip:
                t0, done0 = time.time(), sum(committed.values())
                cpu0 = sum(cpu_seconds(p.pid) for p in procs)
                commands0 = redis_commands(stack)
                servers0 = _server_cpu(stack)
            if all(committed[tp] >= end for tp, end in ends.items()):
                break
            if time.monotonic() > deadline:
                raise StackError(f"the backlog was not drained in {DRAIN_TIMEOUT_S:.0f}s")
            time.sleep(0.05)
        seen = time.time()
        if t0 is None or done0 >= backlog_events:
            raise StackError(
                f"nothing left to time after the first {skip} events; produce a larger backlog"
            )
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
        commands1 = redis_commands(stack)
        servers1 = _server_cpu(stack)
        last = [p.metrics().get("segmenter_last_batch_timestamp_seconds", 0.0) for p in procs]
        end = max(last) if max(last) > t0 else seen
        peak = max(peak_rss_bytes(p.pid) for p in procs)
    finally:
        for p in procs:
            p.stop()
        watcher.close()
    users, per_user = _redis_after(stack, s, before)
    steady = backlog_events - done0
    return ThroughputResult(
        processes=processes,
        in_process=False,
        events=steady,
        elapsed_s=end - t0,
        events_per_s=steady / (end - t0),
        cpu_s=cpu,
        wall_s=end - wall0,
        backlog_events=backlog_events,
        users=users,
        redis_bytes_per_user=per_user,
        peak_rss_bytes=peak,
        redis_commands=commands1[0] - commands0[0],
        redis_script_calls=commands1[1] - commands0[1],
        broker_cpu_s=servers1[0] - servers0[0],
        redis_cpu_s=servers1[1] - servers0[1],
    )


if __name__ == "__main__":
    raise SystemExit(main())
