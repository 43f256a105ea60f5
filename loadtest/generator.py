"""Produce the simulator's shoppers to Kafka at a chosen rate, and write the ground truth.

Purchases go to the purchases topic and every other event type to the clicks topic, both
keyed by user id so that one user's events share a partition number on both topics.

    python -m loadtest.generator --bootstrap 127.0.0.1:9092 --users 1000 --events 100000 \\
        --rate 5000 --seed 7 --days 30 --ground-truth gt.json --bad-ratio 0.01 \\
        --clicks-topic shop.clicks --purchases-topic shop.purchases \\
        --shift-at 0.6 --shift-share 0.5 --shift-from window_shopper \\
        --shift-to loyal_high_spender

The ``--shift-*`` options (off unless ``--shift-at`` is given) make some users change
persona part-way through the span: see :class:`~loadtest.personas.PersonaShift`.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import orjson
from confluent_kafka import Producer

from consumers.producer import Deliveries, DeliveryError, event_producer_config, input_topic, send
from loadtest.personas import (
    DEFAULT_SHIFT,
    MALFORMED_KINDS,
    PERSONAS,
    PersonaShift,
    ShiftedUser,
    ShopperSimulator,
    malformed_event,
)
from stream.settings import Settings

DAY_MS = 86_400_000

#: Some messages could not be delivered to Kafka (the name this module's callers know).
GeneratorError = DeliveryError


@dataclass(frozen=True, slots=True)
class GenerateReport:
    """What one :func:`produce_events` run sent.

    Attributes
    ----------
    events_sent
        Messages delivered, malformed ones included.
    bad_sent
        Of those, deliberately malformed payloads.
    purchases
        Valid purchase events (sent to the purchases topic).
    elapsed_s
        Wall time from the first message to the end of the final flush.
    events_per_s
        ``events_sent / elapsed_s``.
    users_per_persona
        Persona name -> number of users (whether or not they got events), by the
        persona each user has at the end of the span.
    shifted_event_times
        For each user whose behaviour shifted, the event times (epoch ms, in order) of
        their events sent valid at or after their shift; empty without a shift.
    """

    events_sent: int
    bad_sent: int
    purchases: int
    elapsed_s: float
    events_per_s: float
    users_per_persona: dict[str, int]
    shifted_event_times: dict[str, list[int]] = field(default_factory=dict)


def write_ground_truth(
    path: str | os.PathLike[str],
    seed: int,
    truth: Mapping[str, str],
    *,
    shift: PersonaShift | None = None,
    shift_ms: int | None = None,
    shifted: Mapping[str, ShiftedUser] | None = None,
) -> None:
    """Write the ground truth as JSON.

    Keys:

    ``seed``, ``n_users``
        As given, and the number of users.
    ``personas``
        ``{user_id: persona}``, each user's persona at the *end* of the span (for a
        shifted user, the persona shifted to).
    ``shift``
        ``null``, or ``{"at", "share", "from_persona", "to_persona", "at_ms"}``: the
        :class:`~loadtest.personas.PersonaShift` and its instant in epoch ms.
    ``shifted``
        ``{user_id: {"before", "after", "at_ms"}}`` for each shifted user: persona
        until the shift, persona from it, and its instant in epoch ms (``{}`` without
        a shift).

    Written to a temporary file first and renamed, so a reader never sees half a file.
    """
    if shift is not None and shift_ms is None:
        raise ValueError("shift_ms must be given with shift")
    shift_doc = (
        None
        if shift is None
        else {
            "at": shift.at,
            "share": shift.share,
            "from_persona": shift.from_persona,
            "to_persona": shift.to_persona,
            "at_ms": shift_ms,
        }
    )
    shifted_doc = {
        user: {"before": s.before, "after": s.after, "at_ms": s.at_ms}
        for user, s in (shifted or {}).items()
    }
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(
        orjson.dumps(
            {
                "seed": seed,
                "n_users": len(truth),
                "personas": dict(truth),
                "shift": shift_doc,
                "shifted": shifted_doc,
            },
            option=orjson.OPT_SORT_KEYS,
        )
    )
    os.replace(tmp, target)


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
    shift: PersonaShift | None = None,
) -> GenerateReport:
    """Produce ``n_events`` events of ``n_users`` shoppers over the last ``days`` days.

    Parameters
    ----------
    bootstrap
        Kafka bootstrap servers.
    clicks_topic, purchases_topic
        Where non-purchase and purchase events go.
    n_users, n_events, seed
        Passed to :class:`~loadtest.personas.ShopperSimulator`.
    rate
        Events per second; ``None`` sends as fast as the producer takes them.
    days
        Length of the simulated span, which ends at the current wall time.
    ground_truth_path
        If given, where to write the ground truth JSON (see :func:`write_ground_truth`)
        before producing.
    bad_ratio
        Share of messages replaced by malformed payloads (cycling through
        :data:`~loadtest.personas.MALFORMED_KINDS`), sent to ``clicks_topic`` keyed by
        the user of the replaced event.
    extra_producer_config
        librdkafka properties (security settings, for example) merged over the
        defaults.
    progress
        Called with the number of messages produced so far, at least every thousand.
    shift
        Optional :class:`~loadtest.personas.PersonaShift` of some users' behaviour
        part-way through the span; ``None`` (the default) for none.

    Returns
    -------
    GenerateReport

    Raises
    ------
    ValueError
        If an argument is out of range.
    GeneratorError
        If any message failed delivery or was still undelivered after the final flush.
    """
    if n_events < 0:
        raise ValueError(f"n_events must be >= 0, got {n_events}")
    if not days > 0:
        raise ValueError(f"days must be positive, got {days}")
    if not 0.0 <= bad_ratio < 1.0:
        raise ValueError(f"bad_ratio must be in [0, 1), got {bad_ratio}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be positive or None, got {rate}")
    end_ms = int(time.time() * 1000)
    sim = ShopperSimulator(n_users, seed, end_ms - int(days * DAY_MS), end_ms, shift=shift)
    truth = sim.ground_truth()
    shifted = sim.shifted_users()
    if ground_truth_path:
        write_ground_truth(
            ground_truth_path, seed, truth, shift=shift, shift_ms=sim.shift_ms, shifted=shifted
        )
    shifted_times: dict[str, list[int]] = {user: [] for user in shifted}
    shift_ms = sim.shift_ms if sim.shift_ms is not None else end_ms + 1

    deliveries = Deliveries()
    config = event_producer_config(bootstrap, extra_producer_config)
    producer = Producer({**config, "on_delivery": deliveries.report})

    # A separate stream for the bad-message draws, so that the good events stay the
    # same whatever the bad ratio.
    bad_rng = random.Random(seed ^ 0x5EED)
    bad = purchases = 0

    def messages() -> Iterator[tuple[str, bytes, bytes | None]]:
        nonlocal bad, purchases
        for event in sim.events(n_events):
            user = str(event["user_id"])
            if bad_ratio and bad_rng.random() < bad_ratio:
                kind = MALFORMED_KINDS[bad % len(MALFORMED_KINDS)]
                _, value = malformed_event(bad_rng, user, kind=kind, ts_ms=cast(int, event["ts"]))
                topic = clicks_topic
                bad += 1
            else:
                value = orjson.dumps(event)
                topic = input_topic(event["type"], clicks_topic, purchases_topic)
                purchases += event["type"] == "purchase"
                ts = cast(int, event["ts"])
                if ts >= shift_ms and user in shifted_times:
                    shifted_times[user].append(ts)
            yield topic, value, user.encode()

    started = time.monotonic()
    sent = send(producer, messages(), deliveries, rate, progress)
    deliveries.confirm(producer, sent)
    elapsed = time.monotonic() - started
    if progress is not None:
        progress(sent)
    return GenerateReport(
        events_sent=sent,
        bad_sent=bad,
        purchases=purchases,
        elapsed_s=elapsed,
        events_per_s=sent / elapsed if elapsed > 0 else float("inf"),
        users_per_persona=dict(sorted(Counter(truth.values()).items())),
        shifted_event_times=shifted_times,
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_shift_arguments(ap: argparse.ArgumentParser, default_at: float | None) -> None:
    """Add ``--shift-at``, ``--shift-share``, ``--shift-from`` and ``--shift-to``.

    With ``default_at`` None there is no shift unless ``--shift-at`` is given. The other
    defaults are those of :data:`~loadtest.personas.DEFAULT_SHIFT`.
    """
    ap.add_argument(
        "--shift-at",
        type=float,
        default=default_at,
        help="fraction of the span at which some users start behaving as another persona "
        f"(default: {'no shift' if default_at is None else default_at})",
    )
    ap.add_argument(
        "--shift-share",
        type=float,
        default=DEFAULT_SHIFT.share,
        help=f"share of --shift-from's users that change (default {DEFAULT_SHIFT.share})",
    )
    ap.add_argument("--shift-from", choices=sorted(PERSONAS), default=DEFAULT_SHIFT.from_persona)
    ap.add_argument("--shift-to", choices=sorted(PERSONAS), default=DEFAULT_SHIFT.to_persona)


def shift_from_args(args: argparse.Namespace) -> PersonaShift | None:
    """The :class:`~loadtest.personas.PersonaShift` the ``--shift-*`` options ask for.

    Raises
    ------
    ValueError
        If they are out of range.
    """
    if args.shift_at is None:
        return None
    return PersonaShift(
        at=args.shift_at,
        share=args.shift_share,
        from_persona=args.shift_from,
        to_persona=args.shift_to,
    )


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(
        prog="python -m loadtest.generator",
        description="Produce synthetic shopper events with known personas to Kafka.",
    )
    ap.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    ap.add_argument("--clicks-topic", default="shop.clicks")
    ap.add_argument("--purchases-topic", default="shop.purchases")
    ap.add_argument("--users", type=_positive_int, default=1000)
    ap.add_argument("--events", type=_non_negative_int, default=100_000)
    ap.add_argument("--rate", type=_positive_float, default=None, help="events/s (default: max)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--days", type=_positive_float, default=30.0, help="simulated span")
    ap.add_argument("--ground-truth", default=None, help="write the ground truth JSON here")
    ap.add_argument("--bad-ratio", type=_ratio, default=0.0, help="share of malformed messages")
    add_shift_arguments(ap, default_at=None)
    args = ap.parse_args(argv)
    try:
        shift = shift_from_args(args)
    except ValueError as exc:
        ap.error(str(exc))
    try:
        r = produce_events(
            bootstrap=args.bootstrap,
            clicks_topic=args.clicks_topic,
            purchases_topic=args.purchases_topic,
            n_users=args.users,
            n_events=args.events,
            seed=args.seed,
            rate=args.rate,
            days=args.days,
            ground_truth_path=args.ground_truth,
            bad_ratio=args.bad_ratio,
            shift=shift,
        )
    except GeneratorError as exc:
        print(f"generator: {exc}", file=sys.stderr)
        return 1
    personas = ", ".join(f"{name} {n}" for name, n in r.users_per_persona.items())
    print(
        f"sent {r.events_sent} events ({r.bad_sent} malformed, {r.purchases} purchases) "
        f"in {r.elapsed_s:.1f}s = {r.events_per_s:.0f} events/s; users: {personas}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


#: The benchmarks' backlog: every benchmark drains the same one, so figures compare.
BACKLOG_SEED = 11
BACKLOG_DAYS = 30.0


def produce_backlog(settings: Settings, n_users: int, n_events: int) -> GenerateReport:
    """Produce the benchmarks' backlog (seed 11, 30 days) to ``settings``' input topics."""
    return produce_events(
        bootstrap=settings.kafka_bootstrap,
        clicks_topic=settings.clicks_topic,
        purchases_topic=settings.purchases_topic,
        n_users=n_users,
        n_events=n_events,
        seed=BACKLOG_SEED,
        rate=None,
        days=BACKLOG_DAYS,
        ground_truth_path=None,
    )
