"""Throughput of the peer implementations on the local stack, from one pre-filled backlog.

Starts its own Redis and broker on free loopback ports (stopped by PID at the end),
creates the two input topics, produces a backlog with the shopper generator (the same
arguments as ``loadtest.bench_throughput``), then runs each peer on it in turn, each with
its own consumer group, changes topic and Redis database. A peer processes the first
``--peer-events`` messages of the backlog (from the start of every partition): the
per-event peers are slow, so the default is a quarter of the default backlog.

    python -m loadtest.peers.run --users 20000 --events 200000 --peer-events 50000

Prints one line per peer: events/s, process CPU seconds, segment changes, and Redis memory
per user (the growth of Redis's ``used_memory`` over the run, divided by the users the
peer wrote).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import redis

from consumers import topics
from consumers.devstack import servers
from loadtest.generator import produce_backlog
from loadtest.peers import PeerResult, per_event, quix
from state.keys import Keys
from stream.settings import Settings

PeerRun = Callable[[str, str, str, str, str, str, int, float], PeerResult]

#: The peers, in the order they run.
PEERS: dict[str, PeerRun] = {per_event.NAME: per_event.run, quix.NAME: quix.run}


def changes_topic(peer: str) -> str:
    """The changes topic of one peer (each has its own, so outputs never mix).

    >>> changes_topic("quix")
    'peers.quix.changes'
    """
    return f"peers.{peer}.changes"


def report_line(result: PeerResult, users: int, memory_bytes: int) -> str:
    """One peer's line of the report.

    >>> r = PeerResult.measured("per_event", 50_000, 20.0, 18.5, changes=900)
    >>> report_line(r, 2000, 4_000_000)  # doctest: +NORMALIZE_WHITESPACE
    'per_event: 50000 events in 20.0s = 2500 events/s; process CPU 18.5s;
     900 segment changes, 0 invalid; 2000 users in Redis, 2000 bytes per user'
    """
    per_user = f"{memory_bytes / users:.0f}" if users else "n/a"
    return (
        f"{result.name}: {result.events} events in {result.elapsed_s:.1f}s = "
        f"{result.events_per_s:.0f} events/s; process CPU {result.cpu_s:.1f}s; "
        f"{result.changes} segment changes, {result.invalid} invalid; "
        f"{users} users in Redis, {per_user} bytes per user"
    )


def _peer_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown peer(s) {', '.join(unknown) or '(none)'}; known: {', '.join(PEERS)}"
        )
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line.

    >>> a = parse_args(["--events", "20000"])
    >>> (a.users, a.events, a.peer_events, a.peers)
    (20000, 20000, 50000, ['per_event', 'quix'])
    """
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.peers.run", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--users", type=_positive_int, default=20_000)
    ap.add_argument("--events", type=_positive_int, default=200_000, help="backlog size")
    ap.add_argument(
        "--peer-events",
        type=_positive_int,
        default=50_000,
        help="messages each peer processes, from the start of the backlog (default 50000; "
        "at most --events)",
    )
    ap.add_argument("--partitions", type=_positive_int, default=4)
    ap.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    ap.add_argument("--peers", type=_peer_list, default=list(PEERS), help="comma-separated")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per peer at most")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="segmenter-peers-") as tmp:
        rds = servers.start_redis(Path(tmp) / "redis")
        try:
            broker = servers.start_broker(Path(tmp) / "broker", prefer=args.broker)
            try:
                return _bench(args, broker, rds)
            finally:
                broker.stop()
        finally:
            rds.stop()


def _bench(args: argparse.Namespace, broker: servers.Server, rds: servers.Server) -> int:
    s = Settings(kafka_bootstrap=broker.address)
    admin = topics.admin_client(s)
    specs: dict[str, tuple[int, dict[str, str]]] = {
        s.clicks_topic: (args.partitions, {}),
        s.purchases_topic: (args.partitions, {}),
    }
    specs.update({changes_topic(name): (args.partitions, {}) for name in args.peers})
    topics.create_topics(admin, specs)
    print(
        f"broker: {broker.kind}; cores: {os.cpu_count()}; users {args.users}; "
        f"backlog events {args.events}; partitions {args.partitions}"
    )
    gen = produce_backlog(s, args.users, args.events)
    print(f"backlog produced: {gen.events_sent} events at {gen.events_per_s:.0f}/s")
    n = min(args.peer_events, gen.events_sent)
    print(
        f"each peer processes {n} of the {gen.events_sent} backlog events, from the start of "
        "every partition (per-event peers are slow; change with --peer-events)"
    )
    failures = 0
    for db, name in enumerate(args.peers, start=1):
        client = redis.Redis(host=servers.HOST, port=rds.port, db=db)
        client.flushdb()
        mem_before = int(client.info("memory")["used_memory"])
        try:
            result = PEERS[name](
                s.kafka_bootstrap,
                f"redis://{rds.address}/{db}",
                s.clicks_topic,
                s.purchases_topic,
                changes_topic(name),
                f"peer-{name}",
                n,
                args.timeout,
            )
        except (RuntimeError, TimeoutError) as exc:
            print(f"{name}: not measured: {exc}")
            failures += 1
            client.close()
            continue
        users = sum(1 for _ in client.scan_iter(match=Keys().user("*"), count=1000))
        mem_after = int(client.info("memory")["used_memory"])
        client.close()
        print(report_line(result, users, mem_after - mem_before))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
