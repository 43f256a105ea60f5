"""Synthetic shoppers with known ground truth: pure logic, no I/O, no clock reads.

Each user belongs to one persona. Events come from shopping sessions (search, view,
click, add to cart, remove, purchase) whose shape depends on the persona, spread over a
span of event time in non-decreasing order: a 30-day span is emitted in however long the
producer takes (time compression).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

CATEGORIES: tuple[str, ...] = (
    "electronics",
    "books",
    "fashion",
    "home",
    "beauty",
    "toys",
    "sports",
    "grocery",
    "garden",
    "music",
    "movies",
    "games",
    "pets",
    "baby",
    "automotive",
    "office",
    "health",
    "jewelry",
    "shoes",
    "outdoor",
)


@dataclass(frozen=True, slots=True)
class Persona:
    """How one kind of shopper behaves.

    ``active`` is the part of the span, as fractions from 0 (start) to 1 (end), in which
    the persona shops at full ``activity``; outside it they shop at ``residual`` of it.
    """

    name: str
    activity: float
    active: tuple[float, float]
    residual: float
    views: tuple[int, int]
    p_search: float
    p_click: float
    p_add: float
    p_remove: float
    p_buy: float
    price: tuple[float, float]
    n_categories: int


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        Persona(
            "bargain_hunter",
            1.6,
            (0.0, 1.0),
            1.0,
            (4, 10),
            0.9,
            0.6,
            0.55,
            0.45,
            0.6,
            (2.0, 20.0),
            10,
        ),
        Persona(
            "loyal_high_spender",
            1.0,
            (0.0, 1.0),
            1.0,
            (1, 4),
            0.2,
            0.4,
            0.8,
            0.05,
            0.9,
            (60.0, 350.0),
            2,
        ),
        Persona(
            "window_shopper",
            1.6,
            (0.0, 1.0),
            1.0,
            (6, 16),
            0.7,
            0.7,
            0.06,
            0.6,
            0.03,
            (15.0, 250.0),
            6,
        ),
        Persona(
            "new_user", 3.0, (0.94, 1.0), 0.0, (2, 6), 0.5, 0.5, 0.35, 0.1, 0.35, (10.0, 80.0), 3
        ),
        Persona(
            "lapsing_customer",
            1.3,
            (0.0, 0.33),
            0.03,
            (2, 5),
            0.3,
            0.4,
            0.6,
            0.1,
            0.7,
            (25.0, 150.0),
            3,
        ),
    )
}
DEFAULT_SHARES: dict[str, float] = {name: 0.2 for name in PERSONAS}


@dataclass(slots=True)
class _Session:
    user: str
    events: list[tuple[str, dict[str, object]]]  # (type, fields) still to emit
    session_id: str


class ShopperSimulator:
    """Deterministic synthetic shoppers and their events.

    Parameters
    ----------
    n_users
        How many users.
    seed
        Seed of everything random.
    start_ms, end_ms
        The span of event time (epoch milliseconds).
    shares
        Persona name -> share of users (normalised); default 20 % each.

    Examples
    --------
    >>> sim = ShopperSimulator(10, seed=1, start_ms=0, end_ms=86_400_000)
    >>> evs = list(sim.events(50))
    >>> len(evs), all(a["ts"] <= b["ts"] for a, b in zip(evs, evs[1:]))
    (50, True)
    """

    def __init__(
        self,
        n_users: int,
        seed: int,
        start_ms: int,
        end_ms: int,
        shares: Mapping[str, float] | None = None,
    ) -> None:
        if n_users < 1:
            raise ValueError(f"n_users must be at least 1, got {n_users}")
        if end_ms <= start_ms:
            raise ValueError(f"end_ms must be after start_ms, got {start_ms}..{end_ms}")
        shares = dict(DEFAULT_SHARES if shares is None else shares)
        unknown = set(shares) - set(PERSONAS)
        if unknown:
            raise ValueError(f"shares names unknown personas: {sorted(unknown)}")
        if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
            raise ValueError("shares must be non-negative and not all zero")
        self.seed = seed
        self.start_ms = start_ms
        self.end_ms = end_ms
        self._rng = random.Random(seed)
        total = sum(shares.values())
        names = sorted(shares)
        counts = {n: int(n_users * shares[n] / total) for n in names}
        for n in names[: n_users - sum(counts.values())]:
            counts[n] += 1
        assigned = [n for n in names for _ in range(counts[n])]
        self._rng.shuffle(assigned)
        self._truth = {f"u{i + 1:06d}": p for i, p in enumerate(assigned)}
        self._members: dict[str, list[str]] = {n: [] for n in names}
        for uid, p in self._truth.items():
            self._members[p].append(uid)
        self._favourites = {
            uid: self._rng.sample(CATEGORIES, PERSONAS[p].n_categories)
            for uid, p in self._truth.items()
        }
        self._counter = 0

    def ground_truth(self) -> dict[str, str]:
        """user id -> persona name."""
        return dict(self._truth)

    def _pick_user(self, frac: float) -> str:
        weights = []
        names = []
        for name, members in self._members.items():
            if not members:
                continue
            p = PERSONAS[name]
            lo, hi = p.active
            w = p.activity * (1.0 if lo <= frac <= hi else p.residual) * len(members)
            if w > 0:
                names.append(name)
                weights.append(w)
        name = self._rng.choices(names, weights)[0]
        return self._rng.choice(self._members[name])

    def _session(self, user: str) -> _Session:
        rng = self._rng
        p = PERSONAS[self._truth[user]]
        self._counter += 1
        sid = f"s{self.seed}-{self._counter}"
        events: list[tuple[str, dict[str, object]]] = []
        favourites = self._favourites[user]
        if rng.random() < p.p_search:
            events.append(("search", {"category": rng.choice(favourites)}))
        cart: list[tuple[str, str, float, int]] = []
        for _ in range(rng.randint(*p.views)):
            product = f"p{rng.randrange(5000):05d}"
            category = rng.choice(favourites)
            price = round(rng.uniform(*p.price), 2)
            fields = {"product_id": product, "category": category, "price": price}
            events.append(("view", fields))
            if rng.random() < p.p_click:
                events.append(("click", fields))
            if rng.random() < p.p_add:
                qty = 1 if rng.random() < 0.8 else rng.randint(2, 3)
                events.append(("add_to_cart", {**fields, "quantity": qty}))
                cart.append((product, category, price, qty))
        kept = []
        for item in cart:
            if rng.random() < p.p_remove:
                product, category, price, qty = item
                events.append(
                    (
                        "remove_from_cart",
                        {
                            "product_id": product,
                            "category": category,
                            "price": price,
                            "quantity": qty,
                        },
                    )
                )
            else:
                kept.append(item)
        if kept and rng.random() < p.p_buy:
            amount = round(sum(price * qty for _, _, price, qty in kept), 2)
            events.append(
                (
                    "purchase",
                    {
                        "amount": amount,
                        "currency": "EUR",
                        "category": kept[0][1],
                        "quantity": sum(q for *_, q in kept),
                    },
                )
            )
        events.reverse()  # popped from the end
        return _Session(user, events, sid)

    def events(self, n_events: int) -> Iterator[dict[str, object]]:
        """Yield ``n_events`` events in non-decreasing event time across the span."""
        if n_events < 0:
            raise ValueError(f"n_events must be >= 0, got {n_events}")
        rng = self._rng
        span = self.end_ms - self.start_ms
        open_sessions: list[_Session] = []
        concurrent = max(1, min(64, len(self._truth) // 4))
        for i in range(n_events):
            frac = i / max(n_events - 1, 1)
            ts = self.start_ms + int(span * frac)
            while len(open_sessions) < concurrent:
                s = self._session(self._pick_user(frac))
                if s.events:
                    open_sessions.append(s)
            j = rng.randrange(len(open_sessions))
            session = open_sessions[j]
            etype, fields = session.events.pop()
            if not session.events:
                open_sessions[j] = open_sessions[-1]
                open_sessions.pop()
            self._counter += 1
            yield {
                "event_id": f"{self.seed}-{self._counter}",
                "user_id": session.user,
                "type": etype,
                "ts": ts,
                "session_id": session.session_id,
                **fields,
            }


MALFORMED_KINDS: tuple[str, ...] = (
    "not_json",
    "json_array",
    "missing_user_id",
    "negative_amount",
    "purchase_without_amount",
    "unknown_type",
    "nonsense_ts",
    "far_future_ts",
    "oversized",
    "not_utf8",
)


def malformed_event(rng: random.Random, user_id: str = "u000001") -> tuple[str, bytes]:
    """A deliberately bad payload and its kind, drawn from :data:`MALFORMED_KINDS`."""
    kind = rng.choice(MALFORMED_KINDS)
    eid = f"bad-{rng.getrandbits(48):012x}"
    base = f'"event_id":"{eid}","user_id":"{user_id}"'
    payloads = {
        "not_json": b"{this is not json",
        "json_array": b'["view", 1700000000000]',
        "missing_user_id": f'{{"event_id":"{eid}","type":"view","ts":1700000000000}}'.encode(),
        "negative_amount": f'{{{base},"type":"purchase","ts":1700000000000,"amount":-3}}'.encode(),
        "purchase_without_amount": f'{{{base},"type":"purchase","ts":1700000000000}}'.encode(),
        "unknown_type": f'{{{base},"type":"teleport","ts":1700000000000}}'.encode(),
        "nonsense_ts": f'{{{base},"type":"view","ts":"yesterday-ish"}}'.encode(),
        "far_future_ts": f'{{{base},"type":"view","ts":"2300-01-01T00:00:00Z"}}'.encode(),
        "oversized": b'{"pad":"' + b"z" * 70_000 + b'"}',
        "not_utf8": b"\xff\xfe\xfa{}",
    }
    return kind, payloads[kind]
