"""A small deterministic event set with exact expected per-user totals."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

from stream.settings import Settings

BROWSE_TYPES = ("view", "click", "add_to_cart", "remove_from_cart", "search")
#: The 30-day count feature of each event type.
TYPE_FIELDS = {
    "view": "views_30d",
    "click": "clicks_30d",
    "add_to_cart": "add_to_cart_30d",
    "remove_from_cart": "remove_from_cart_30d",
    "purchase": "purchases_30d",
    "search": "searches_30d",
}


@dataclass
class Expected:
    counts: Counter[str] = field(default_factory=Counter)
    spend: float = 0.0
    last_ts: int = 0


def make_events(
    settings: Settings, n_users: int, seed: int = 1, days: float = 5.0
) -> tuple[list[tuple[str, bytes, bytes]], dict[str, Expected]]:
    """Events from ``n_users`` users spread over the last ``days`` days.

    Half the users buy often and big, a quarter browse and never buy, a quarter buy rarely
    and small: enough structure for the model to find segments.
    """
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    span = int(days * 86_400_000)
    messages: list[tuple[str, bytes, bytes]] = []
    expected: dict[str, Expected] = {}
    n = 0
    for u in range(n_users):
        uid = f"user-{u:04d}"
        kind = u % 4
        exp = expected.setdefault(uid, Expected())
        for _ in range(rng.randint(6, 30)):
            n += 1
            ts = now - rng.randrange(span)
            buys = {0: 0.3, 1: 0.3, 2: 0.0, 3: 0.05}[kind]
            if rng.random() < buys:
                amount = round(rng.uniform(80, 400) if kind < 2 else rng.uniform(3, 20), 2)
                ev = {
                    "event_id": f"{seed}-{n}",
                    "user_id": uid,
                    "type": "purchase",
                    "ts": ts,
                    "amount": amount,
                    "currency": "EUR",
                    "category": "books",
                }
                topic = settings.purchases_topic
                exp.spend += amount
            else:
                etype = rng.choice(BROWSE_TYPES)
                ev = {
                    "event_id": f"{seed}-{n}",
                    "user_id": uid,
                    "type": etype,
                    "ts": ts,
                    "category": rng.choice(("books", "toys", "home", "garden", "music")),
                    "price": 12.5,
                }
                topic = settings.clicks_topic
            exp.counts[ev["type"]] += 1
            exp.last_ts = max(exp.last_ts, ts)
            messages.append((topic, uid.encode(), orjson.dumps(ev)))
    return messages, expected
