"""A history with customers who lapse: what time alone must move, with exact totals.

Three kinds of customer over ``days`` days from ``start_ms``: buyers order every couple
of days throughout; browsers view products every day and never buy; lapsers buy like
buyers for the first ``lapse_after`` days and then send nothing at all. Messages come in
event-time order, as a live shop would produce them (or as a backfill replays them).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import orjson

from stream.settings import Settings

DAY_MS = 86_400_000
KINDS = ("buyer", "browser", "lapser")


@dataclass
class Totals:
    kind: str
    orders: int = 0
    spend: float = 0.0
    last_ms: int = 0
    counts: Counter[str] = field(default_factory=Counter)


def lapse_history(
    settings: Settings,
    start_ms: int,
    n_per_kind: int = 60,
    days: int = 90,
    lapse_after: int = 10,
    seed: int = 3,
) -> tuple[list[tuple[str, bytes, bytes]], dict[str, Totals]]:
    """(topic, key, value) messages in event-time order, and every user's totals."""
    rng = random.Random(seed)
    rows: list[tuple[int, str, bytes, bytes]] = []
    totals: dict[str, Totals] = {}
    n = 0
    for kind in KINDS:
        for i in range(n_per_kind):
            uid = f"{kind}-{i:03d}"
            t = totals.setdefault(uid, Totals(kind))
            active_days = lapse_after if kind == "lapser" else days
            day = rng.uniform(0, 1.5)
            while day < active_days:
                ts = start_ms + int(day * DAY_MS)
                session = ["view"] * rng.randint(2, 5)
                if kind != "browser":
                    session += ["add_to_cart", "purchase"]
                for j, etype in enumerate(session):
                    n += 1
                    ev: dict[str, object] = {
                        "event_id": f"{seed}-{n}",
                        "user_id": uid,
                        "type": etype,
                        "ts": ts + j * 60_000,
                        "category": rng.choice(("books", "toys", "home")),
                    }
                    topic = settings.clicks_topic
                    if etype == "purchase":
                        amount = round(rng.uniform(40, 90), 2)
                        ev["amount"] = amount
                        topic = settings.purchases_topic
                        t.orders += 1
                        t.spend += amount
                    t.counts[etype] += 1
                    t.last_ms = max(t.last_ms, int(ev["ts"]))  # type: ignore[call-overload]
                    rows.append((int(ev["ts"]), topic, uid.encode(), orjson.dumps(ev)))  # type: ignore[call-overload]
                day += rng.uniform(0.5, 1.0) if kind == "browser" else rng.uniform(1.5, 2.5)
    rows.sort(key=lambda r: r[0])
    return [(topic, key, value) for _, topic, key, value in rows], totals
