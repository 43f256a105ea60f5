"""The development side of the segmenter: a local stack, synthetic traffic, and the demo.

None of this runs in production, and none of it ships in the runtime package or image:
``make demo`` and the tests use it from the source tree.

    python -m loadtest.dev devstack install|up|down|status   # local Redis + broker, no Docker
    python -m loadtest.dev generate --users N --events N      # synthetic shoppers to Kafka
    python -m loadtest.dev demo                               # all of it, then the segments

Settings are the segmenter's own (``SEGMENTER_*`` variables or ``--config FILE``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consumers import topics
from consumers.app import Segmenter
from consumers.cli import dispatch, print_segments, stop_on_signals
from consumers.exit_codes import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK
from loadtest.devstack import install, servers, stack
from loadtest.generator import produce_events
from stream.settings import CONFIG_FILE_VAR, Settings


def cmd_devstack(settings: Settings, args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if args.action == "install":
        for what, where in install.install(args.broker).items():
            print(f"{what}: {where}")
        return EXIT_OK
    if args.action == "up":
        install.install(args.broker)
        running = stack.up(root, args.broker, args.kafka_port, args.redis_port)
        _print_stack(running, args.partitions, settings)
        return EXIT_OK
    if args.action == "down":
        stopped = stack.down(root)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return EXIT_OK
    running = stack.read(root)
    if not running:
        print("not running")
        return EXIT_NOT_FOUND
    for role, s in running.items():
        state = "up" if s.alive() else "DOWN"
        print(f"{role:7} {s.kind:6} {s.address:22} pid {s.pid:<8} {state}  log {s.log}")
    return EXIT_OK if all(s.alive() for s in running.values()) else EXIT_ERROR


def _print_stack(running: dict[str, Any], partitions: int, settings: Settings) -> None:
    broker, redis_ = running["broker"], running["redis"]
    local = settings.replace(kafka_bootstrap=broker.address)
    admin = topics.admin_client(local)
    topics.create_topics(
        admin,
        {
            local.clicks_topic: (partitions, {}),
            local.purchases_topic: (partitions, {}),
        },
    )
    name = "Apache Kafka (KRaft)" if broker.kind == "kafka" else "Tansu"
    print(f"broker: {name} on {broker.address} (pid {broker.pid}, log {broker.log})")
    print(f"redis:  redis://{redis_.address}/0 (pid {redis_.pid}, log {redis_.log})")
    print(f"topics: {local.clicks_topic}, {local.purchases_topic} ({partitions} partitions)")
    print("use it with:")
    print(f"  export SEGMENTER_KAFKA_BOOTSTRAP={broker.address}")
    print(f"  export SEGMENTER_REDIS_URL=redis://{redis_.address}/0")


def cmd_generate(settings: Settings, args: argparse.Namespace) -> int:
    report = produce_events(
        bootstrap=settings.kafka_bootstrap,
        clicks_topic=settings.clicks_topic,
        purchases_topic=settings.purchases_topic,
        n_users=args.users,
        n_events=args.events,
        seed=args.seed,
        rate=args.rate,
        days=args.days,
        ground_truth_path=args.ground_truth,
        bad_ratio=args.bad_ratio,
        extra_producer_config=settings.kafka_client_config(),
    )
    print(
        f"sent {report.events_sent} events ({report.bad_sent} malformed) "
        f"in {report.elapsed_s:.1f}s: {report.events_per_s:.0f} events/s"
    )
    return EXIT_OK


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Local stack up, shopper traffic in, the segmenter over it, and what it found."""
    root = Path(args.dir)
    print("== 1/4 local stack")
    install.install(args.broker)
    running = stack.up(root, args.broker)
    _print_stack(running, 4, settings)
    broker, redis_ = running["broker"], running["redis"]
    port = settings.metrics_port if not servers.port_open(settings.metrics_port) else 0
    s = settings.replace(
        kafka_bootstrap=broker.address,
        redis_url=f"redis://{redis_.address}/0",
        metrics_host="127.0.0.1",
        metrics_port=port or servers.free_port(),
    )
    print(f"\n== 2/4 generating {args.events} events from {args.users} shoppers over 30 days")
    gt = root / "ground_truth.json"
    report = produce_events(
        bootstrap=s.kafka_bootstrap,
        clicks_topic=s.clicks_topic,
        purchases_topic=s.purchases_topic,
        n_users=args.users,
        n_events=args.events,
        seed=args.seed,
        rate=None,
        days=30,
        ground_truth_path=str(gt),
        bad_ratio=0.002,
    )
    print(
        f"sent {report.events_sent} events ({report.bad_sent} deliberately malformed) "
        f"at {report.events_per_s:.0f}/s; ground truth in {gt}"
    )
    print("\n== 3/4 segmenter")
    seg = Segmenter(s)
    seg.start()
    stop_http = seg.serve_http()
    print(f"metrics: http://127.0.0.1:{s.metrics_port}/metrics  (health: /healthz, /readyz)")
    try:
        stats = seg.run(stop_on_signals(), idle_exit_s=args.idle_exit)
    finally:
        seg.close()
        stop_http()
    first, last = stats.first_batch_at or 0.0, stats.last_batch_at or 0.0
    busy = max(last - first, 1e-9)
    print(
        f"processed {stats.messages} messages in {busy:.1f}s ({stats.messages / busy:.0f}/s): "
        f"{stats.dead_letters} dead letters, {stats.changes} segment changes"
    )
    print("\n== 4/4 segments found")
    print_segments(s)
    print(f"""
Where to look:
  Redis     redis-cli -p {redis_.port} HGETALL 'seg:user:{{u000001}}'
            redis-cli -p {redis_.port} HGETALL seg:segments
            redis-cli -p {redis_.port} SMEMBERS 'seg:segment:{{0}}:members'
  Topics    {s.changes_topic} (changes), {s.current_topic} (latest per user),
            {s.deadletter_topic} (bad input, reason in headers) on {s.kafka_bootstrap}
  CLI       SEGMENTER_REDIS_URL=redis://{redis_.address}/0 segmenter inspect u000001
  Keep it running: SEGMENTER_KAFKA_BOOTSTRAP={broker.address} \\
            SEGMENTER_REDIS_URL=redis://{redis_.address}/0 segmenter run
  Stop the local stack: make down""")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.dev",
        description="The segmenter's development tools: a local stack without Docker, "
        "synthetic shopper traffic, and the demo. Settings: SEGMENTER_* environment "
        "variables or --config FILE.",
        epilog="Exit codes as the segmenter's: 0 success; 1 runtime error; 2 bad "
        "configuration or usage; 3 not found.",
    )
    p.add_argument("--config", help=f"TOML settings file (or ${CONFIG_FILE_VAR})")
    sub = p.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("devstack", help="local Redis and Kafka broker, no Docker")
    dev.add_argument("action", choices=("install", "up", "down", "status"))
    dev.add_argument(
        "--broker",
        choices=("auto", "kafka", "tansu"),
        default="auto",
        help="auto: Apache Kafka when Java 17 is present, else Tansu",
    )
    dev.add_argument("--dir", default=".devstack", help="where servers keep data and logs")
    dev.add_argument("--kafka-port", type=int, default=9092)
    dev.add_argument("--redis-port", type=int, default=6379)
    dev.add_argument("--partitions", type=int, default=4, help="input topic partitions")
    dev.set_defaults(fn=cmd_devstack)

    gen = sub.add_parser("generate", help="produce synthetic shopper events")
    gen.add_argument("--users", type=int, default=1000)
    gen.add_argument("--events", type=int, default=100_000)
    gen.add_argument("--rate", type=float, default=None, help="events/s (default: max)")
    gen.add_argument("--days", type=float, default=30.0, help="simulated span of event time")
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--bad-ratio", type=float, default=0.0, help="share of malformed events")
    gen.add_argument("--ground-truth", default=None, help="write user -> persona JSON here")
    gen.set_defaults(fn=cmd_generate)

    demo = sub.add_parser("demo", help="local stack + traffic + segmenter, then the segments")
    demo.add_argument("--users", type=int, default=2000)
    demo.add_argument("--events", type=int, default=200_000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--idle-exit", type=float, default=5.0)
    demo.add_argument("--broker", choices=("auto", "kafka", "tansu"), default="auto")
    demo.add_argument("--dir", default=".devstack")
    demo.set_defaults(fn=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
