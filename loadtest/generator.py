"""Produce the simulator's shoppers to Kafka at a chosen rate, and write the ground truth.

    python -m loadtest.generator --bootstrap 127.0.0.1:9092 --users 1000 --events 100000 \\
        --rate 5000 --seed 7 --days 30 --ground-truth gt.json --bad-ratio 0.01
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, Message, Producer

from loadtest.personas import ShopperSimulator, malformed_event

DAY_MS = 86_400_000
_CHUNK = 1000  # messages between pacing checks


class GeneratorError(RuntimeError):
    """Some messages could not be delivered."""


@dataclass(frozen=True, slots=True)
class GenerateReport:
    events_sent: int
    bad_sent: int
    purchases: int
    elapsed_s: float
    events_per_s: float
    users_per_persona: dict[str, int]


def produce_events(
    bootstrap: str,
    clicks_topic: str,
    purchases_topic: str,
    n_users: int,
    n_events: int,
    seed: int,
    rate: float | None,
    days: float,
    ground_truth_path: str | None,
    bad_ratio: float = 0.0,
    extra_producer_config: Mapping[str, str | int | float | bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> GenerateReport:
    """Produce ``n_events`` events of ``n_users`` shoppers over the last ``days`` days.

    Purchases go to ``purchases_topic``, everything else to ``clicks_topic``, keyed by
    user id. ``rate`` is in events per second (``None``: as fast as possible). With
    ``bad_ratio`` > 0, that share of messages is replaced by malformed payloads.
    """
    if not 0.0 <= bad_ratio < 1.0:
        raise ValueError(f"bad_ratio must be in [0, 1), got {bad_ratio}")
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    end = int(time.time() * 1000)
    sim = ShopperSimulator(n_users, seed, end - int(days * DAY_MS), end)
    truth = sim.ground_truth()
    if ground_truth_path:
        Path(ground_truth_path).write_bytes(
            orjson.dumps({"seed": seed, "n_users": n_users, "personas": truth})
        )
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}: {err.str()}")

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            **(extra_producer_config or {}),
            "on_delivery": on_delivery,
        }
    )
    rng = random.Random(seed ^ 0x5EED)
    sent = bad = purchases = 0
    started = time.monotonic()
    for event in sim.events(n_events):
        user = str(event["user_id"])
        if bad_ratio and rng.random() < bad_ratio:
            _, value = malformed_event(rng, user)
            topic = clicks_topic
            bad += 1
        else:
            value = orjson.dumps(event)
            if event["type"] == "purchase":
                topic = purchases_topic
                purchases += 1
            else:
                topic = clicks_topic
        while True:
            try:
                producer.produce(topic, value, user.encode())
                break
            except BufferError:
                producer.poll(0.05)  # queue full: let deliveries drain, never drop
        sent += 1
        if sent % _CHUNK == 0:
            producer.poll(0)
            if progress:
                progress(sent)
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
    remaining = producer.flush(120)
    elapsed = time.monotonic() - started
    if remaining or failures:
        raise GeneratorError(
            f"{remaining} messages undelivered and {len(failures)} failed: {failures[:3]}"
        )
    return GenerateReport(
        events_sent=sent,
        bad_sent=bad,
        purchases=purchases,
        elapsed_s=elapsed,
        events_per_s=sent / elapsed if elapsed > 0 else float("inf"),
        users_per_persona=dict(Counter(truth.values())),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Produce synthetic shopper events to Kafka.")
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--clicks-topic", default="shop.clicks")
    ap.add_argument("--purchases-topic", default="shop.purchases")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=None, help="events/s (default: max)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--days", type=float, default=30.0)
    ap.add_argument("--ground-truth", default=None)
    ap.add_argument("--bad-ratio", type=float, default=0.0)
    a = ap.parse_args(argv)
    r = produce_events(
        a.bootstrap,
        a.clicks_topic,
        a.purchases_topic,
        a.users,
        a.events,
        a.seed,
        a.rate,
        a.days,
        a.ground_truth,
        a.bad_ratio,
    )
    print(
        f"sent {r.events_sent} events ({r.bad_sent} malformed, {r.purchases} purchases) in "
        f"{r.elapsed_s:.1f}s = {r.events_per_s:.0f}/s; personas {r.users_per_persona}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
