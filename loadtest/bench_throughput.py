"""Throughput of one segmenter process on the local stack, from a pre-filled backlog.

Starts its own Redis and broker on free loopback ports (stopped by PID at the end),
produces a backlog with the shopper generator, then times one in-process segmenter
draining it: from its first batch to its last, so group join time is not counted.

    python -m loadtest.bench_throughput --users 50000 --events 500000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import redis

from consumers import topics
from consumers.app import Segmenter
from consumers.devstack import servers
from loadtest.generator import produce_backlog
from stream.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
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


if __name__ == "__main__":
    raise SystemExit(main())
