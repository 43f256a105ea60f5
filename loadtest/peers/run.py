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

With ``--bootstrap`` and ``--redis`` it runs the peers on a stack that is already up and
whose input topics already hold the backlog (it starts and produces nothing), and
``--json FILE`` writes the results as JSON too: so a peer whose dependencies cannot live
in this environment (Quix Streams pins an older confluent-kafka) can be run from another
virtual environment on the benchmark suite's stack.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from consumers import topics
from loadtest.devstack import servers
from loadtest.generator import produce_backlog
from loadtest.peers import PeerResult, bytewax_flow, micro_batch, per_event, quix
from state.keys import Keys
from stream.settings import Settings

PeerRun = Callable[[str, str, str, str, str, str, int, float], PeerResult]

#: The peers, in the order they run (each writes to Redis database its place here, from 1).
PEERS: dict[str, PeerRun] = {
    per_event.NAME: per_event.run,
    quix.NAME: quix.run,
    micro_batch.NAME: micro_batch.run,
    bytewax_flow.NAME: bytewax_flow.run,
}


@dataclass(frozen=True, slots=True)
class PeerOutcome:
    """One peer's run on the backlog: its result, or why there is none.

    Attributes
    ----------
    name
        Which peer.
    result
        The measured run; ``None`` when it failed.
    users
        User hashes the peer left in Redis.
    memory_bytes
        Growth of Redis's ``used_memory`` over the run.
    error
        Why there is no result (``None`` when there is one).
    """

    name: str
    result: PeerResult | None
    users: int = 0
    memory_bytes: int = 0
    error: str | None = None

    @property
    def bytes_per_user(self) -> float | None:
        """``memory_bytes / users``; ``None`` without users.

        >>> PeerOutcome("p", None, users=4, memory_bytes=4000).bytes_per_user
        1000.0
        """
        return self.memory_bytes / self.users if self.users else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back.

        >>> o = PeerOutcome("p", PeerResult.measured("p", 10, 1.0, 0.5), 2, 300)
        >>> PeerOutcome.from_dict(o.to_dict()) == o
        True
        """
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PeerOutcome:
        """The outcome :meth:`to_dict` wrote."""
        result = doc.get("result")
        return cls(
            name=doc["name"],
            result=None if result is None else PeerResult(**result),
            users=int(doc.get("users", 0)),
            memory_bytes=int(doc.get("memory_bytes", 0)),
            error=doc.get("error"),
        )

    def line(self) -> str:
        """The peer's line of the report (:func:`report_line`, or why it is missing)."""
        if self.result is None:
            return f"{self.name}: not measured: {self.error}"
        return report_line(self.result, self.users, self.memory_bytes)


def redis_db(peer: str) -> int:
    """The Redis database a peer writes to: its place in :data:`PEERS`, from 1.

    >>> redis_db("per_event"), redis_db("quix"), redis_db("micro_batch")
    (1, 2, 3)
    """
    return list(PEERS).index(peer) + 1


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
    (20000, 20000, 50000, ['per_event', 'quix', 'micro_batch', 'bytewax'])
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
    ap.add_argument(
        "--bootstrap",
        default=None,
        help="run on this broker, whose input topics hold the backlog already "
        "(with --redis; starts and produces nothing)",
    )
    ap.add_argument("--redis", default=None, metavar="HOST:PORT", help="with --bootstrap")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write results here")
    args = ap.parse_args(argv)
    if (args.bootstrap is None) != (args.redis is None):
        ap.error("--bootstrap and --redis go together")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bootstrap is not None:
        print(f"peers on {args.bootstrap}, Redis {args.redis}: {args.peer_events} events each")
        outcomes = measure(
            Settings(kafka_bootstrap=args.bootstrap),
            args.redis,
            args.peers,
            args.peer_events,
            args.partitions,
            args.timeout,
        )
        return _report(outcomes, args.json)
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
    topics.create_topics(
        topics.admin_client(s),
        {s.clicks_topic: (args.partitions, {}), s.purchases_topic: (args.partitions, {})},
    )
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
    outcomes = measure(s, rds.address, args.peers, n, args.partitions, args.timeout)
    return _report(outcomes, args.json)


def _report(outcomes: list[PeerOutcome], json_path: str | None) -> int:
    if json_path:
        Path(json_path).write_bytes(orjson.dumps([o.to_dict() for o in outcomes]))
    return 1 if any(o.result is None for o in outcomes) else 0


def measure(
    s: Settings,
    redis_address: str,
    peers: list[str],
    n_events: int,
    partitions: int,
    timeout_s: float,
) -> list[PeerOutcome]:
    """Run each of ``peers`` in turn on the first ``n_events`` of the backlog in ``s``'
    input topics, and print its line.

    Each peer gets its own consumer group (``peer-<name>``), changes topic
    (:func:`changes_topic`, created here with ``partitions``) and Redis database
    (:func:`redis_db`, emptied first) on the Redis at ``redis_address`` (``host:port``).
    A peer that fails is reported as such; the others still run.
    """
    topics.create_topics(
        topics.admin_client(s), {changes_topic(name): (partitions, {}) for name in peers}
    )
    outcomes = []
    for name in peers:
        db = redis_db(name)
        with contextlib.closing(redis.Redis.from_url(f"redis://{redis_address}/{db}")) as c:
            c.flushdb()
            mem_before = int(c.info("memory")["used_memory"])
            try:
                result = PEERS[name](
                    s.kafka_bootstrap,
                    f"redis://{redis_address}/{db}",
                    s.clicks_topic,
                    s.purchases_topic,
                    changes_topic(name),
                    f"peer-{name}",
                    n_events,
                    timeout_s,
                )
            except (RuntimeError, TimeoutError) as exc:
                outcome = PeerOutcome(name, None, error=str(exc))
            else:
                users = sum(1 for _ in c.scan_iter(match=Keys().user("*"), count=1000))
                used = int(c.info("memory")["used_memory"])
                outcome = PeerOutcome(name, result, users, used - mem_before)
        print(outcome.line())
        outcomes.append(outcome)
    return outcomes


if __name__ == "__main__":
    raise SystemExit(main())
