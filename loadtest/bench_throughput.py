"""Throughput of one segmenter process on the local stack, from a pre-filled backlog.

Starts its own Redis and broker on free loopback ports (stopped by PID at the end),
produces a backlog with the shopper generator, then times one in-process segmenter
draining it: from its first batch to its last, so group join time is not counted.

    python -m loadtest.bench_throughput --users 50000 --events 500000

With ``--processes N`` it instead starts N ``segmenter run`` processes in one consumer
group, as an operator would, and times them from start to the last committed offset
(start-up and group join included, so compare runs with different N made the same way).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
from confluent_kafka import Consumer, TopicPartition

from consumers import topics
from consumers.app import Segmenter
from consumers.devstack import servers
from loadtest.generator import produce_backlog
from stream.settings import Settings, load_settings


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

    with tempfile.TemporaryDirectory(prefix="segmenter-bench-") as tmp:
        rds = servers.start_redis(Path(tmp) / "redis")
        broker = servers.start_broker(Path(tmp) / "broker", prefer=args.broker)
        try:
            return _bench(args, broker, rds)
        finally:
            broker.stop()
            rds.stop()


def _bench(args: argparse.Namespace, broker: servers.Server, rds: servers.Server) -> int:
    overrides = {f"SEGMENTER_{k.upper()}": v for k, v in (a.split("=", 1) for a in args.set)}
    s = load_settings(overrides).replace(
        kafka_bootstrap=broker.address,
        redis_url=f"redis://{rds.address}/0",
        batch_max_events=args.batch,
        metrics_port=servers.free_port(),
        # Tansu delivers aborted transactional records: no transactions there.
        transactional=broker.kind == "kafka",
    )
    admin = topics.admin_client(s)
    topics.create_topics(
        admin, {s.clicks_topic: (args.partitions, {}), s.purchases_topic: (args.partitions, {})}
    )
    print(
        f"broker: {broker.kind}; cores: {os.cpu_count()}; users {args.users}; "
        f"events {args.events}; batch {args.batch}"
    )
    gen = produce_backlog(s, args.users, args.events)
    print(f"backlog produced: {gen.events_sent} events at {gen.events_per_s:.0f}/s")
    client = redis.Redis(host=servers.HOST, port=rds.port)
    mem_before = int(client.info("memory")["used_memory"])
    if args.processes:
        return _bench_processes(args, s, gen.events_sent)

    seg = Segmenter(s)
    seg.start()
    stop = threading.Event()
    t = threading.Thread(target=seg.run, args=(stop,))
    cpu0 = time.process_time()
    t.start()
    while seg.stats.messages < gen.events_sent:
        time.sleep(0.05)
    cpu = time.process_time() - cpu0
    stop.set()
    t.join()
    seg.close()
    assert seg.stats.first_batch_at is not None and seg.stats.last_batch_at is not None
    elapsed = seg.stats.last_batch_at - seg.stats.first_batch_at
    users = len(client.keys(f"{s.redis_prefix}user:*"))
    mem_after = int(client.info("memory")["used_memory"])
    client.close()
    print(
        f"segmenter: {seg.stats.messages} messages in {elapsed:.2f}s = "
        f"{seg.stats.messages / elapsed:.0f} events/s ({seg.stats.batches} batches, "
        f"process CPU {cpu:.1f}s)"
    )
    print(
        f"segment changes: {seg.stats.changes}; users in Redis: {users}; "
        f"Redis memory per user: {(mem_after - mem_before) / max(users, 1):.0f} bytes"
    )
    return 0


def _bench_processes(args: argparse.Namespace, s: Settings, n_events: int) -> int:
    """Time N ``segmenter run`` processes draining the backlog, start to last commit."""
    ends = _end_offsets(s, args.partitions)
    procs = []
    started = time.monotonic()
    try:
        for i in range(args.processes):
            own = s.replace(instance_id=f"bench-{i}", metrics_port=servers.free_port())
            env = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
            env.update(
                {f"SEGMENTER_{k.upper()}": str(v) for k, v in own.describe().items() if v != ""}
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "consumers.cli", "run"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        while _committed(s, args.partitions) != ends:
            if any(p.poll() is not None for p in procs):
                raise SystemExit("a segmenter process exited early")
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
    print(
        f"{args.processes} segmenter processes: {n_events} events in {elapsed:.2f}s = "
        f"{n_events / elapsed:.0f} events/s (start-up and group join included)"
    )
    return 0


def _end_offsets(s: Settings, partitions: int) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "bench-watermarks"})
    try:
        out = {}
        for t in (s.clicks_topic, s.purchases_topic):
            for p in range(partitions):
                high = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                out[(t, p)] = high if high > 0 else -1001  # empty: nothing to commit
        return out
    finally:
        c.close()


def _committed(s: Settings, partitions: int) -> dict[tuple[str, int], int]:
    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": s.group_id})
    try:
        tps = [
            TopicPartition(t, p)
            for t in (s.clicks_topic, s.purchases_topic)
            for p in range(partitions)
        ]
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()


if __name__ == "__main__":
    raise SystemExit(main())
