"""Synthetic shoppers with known ground truth: pure logic, no I/O, no clock reads.

Every user belongs to one :class:`Persona`. A persona says how often its users shop, in
which part of the simulated span, and what a shopping session of theirs looks like:
searches, product views, clicks, add-to-cart and remove-from-cart, and whether the session
ends in a purchase. :class:`ShopperSimulator` turns that into a stream of event dicts in
non-decreasing event time over ``[start_ms, end_ms]``. The span is compressed: 30 days of
event time are emitted in however long the consumer of the iterator takes.

What the stream looks like:

* Products come from a fixed catalogue (:data:`CATEGORIES`, a few hundred products each),
  so one product always has the same category and price.
* Sessions are coherent: a product is viewed before it is clicked or added to the cart,
  only cart items are removed, and a purchase is either the checkout of what is left in
  the cart (amount = sum of price x quantity) or a quick re-order with a drawn total.
* Time is not uniform: total traffic follows a daily cycle (quiet at night, busiest in the
  evening, UTC) and the number of users active at that moment, so users' own shopping
  rates stay the same whoever else is around.
* Optionally, behaviour shifts (:class:`PersonaShift`): at one instant of the span, a share
  of the users of one persona start behaving as another persona until the end, so that a
  consumer can be timed on how fast it notices. :meth:`ShopperSimulator.ground_truth`
  gives each user's persona at the *end* of the span, and
  :meth:`ShopperSimulator.shifted_users` who shifted, from what, to what, and when.

Examples
--------
>>> sim = ShopperSimulator(50, seed=1, start_ms=0, end_ms=7 * 86_400_000)
>>> events = list(sim.events(200))
>>> len(events), events[0]["event_id"], sorted(set(sim.ground_truth().values()))[0]
(200, '1-1', 'bargain_hunter')
>>> all(a["ts"] <= b["ts"] for a, b in zip(events, events[1:]))
True
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields

import orjson

#: The shop's product categories, with the median item price (EUR) of each.
CATEGORY_MEDIAN_PRICE: dict[str, float] = {
    "electronics": 180.0,
    "books": 14.0,
    "fashion": 45.0,
    "home": 40.0,
    "beauty": 22.0,
    "toys": 25.0,
    "sports": 50.0,
    "grocery": 6.0,
    "garden": 35.0,
    "music": 15.0,
    "movies": 12.0,
    "games": 40.0,
    "pets": 18.0,
    "baby": 25.0,
    "automotive": 60.0,
    "office": 20.0,
    "health": 16.0,
    "jewelry": 120.0,
    "shoes": 70.0,
    "outdoor": 80.0,
}
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_MEDIAN_PRICE)
PRODUCTS_PER_CATEGORY = 500
CURRENCY = "EUR"

#: Size limit the consumer enforces on one message; the oversized bad payload exceeds it.
MAX_EVENT_BYTES = 65_536

DAY_MS = 86_400_000
_SESSION_TARGET_MS = 20 * 60_000  # how long a session should last in event time
_BUCKET_MS = 10 * 60_000  # resolution of the traffic curve
_MAX_BUCKETS = 200_000
_MIN_PRICE_CHOICES = 8  # products a persona can pick from in any category
_YEAR_2300_MS = 10_413_792_000_000  # 2300-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class Persona:
    """How one kind of shopper behaves; all fractions of the span run from 0 to 1.

    Parameters
    ----------
    name
        Ground-truth label.
    share
        Default share of the user population.
    activity
        Relative rate of shopping sessions of one user while active.
    arrival
        Range of span fractions from which each user's first activity is drawn
        uniformly; ``(0, 0)`` means already a customer when the span starts.
    departure
        Range from which each user's lapse is drawn; ``(1, 1)`` means never lapses.
    residual
        Share of ``activity`` left after the lapse.
    searches, views
        Inclusive ranges of searches and product views per session.
    p_click, p_add
        Probability that a viewed product is clicked, and added to the cart.
    p_remove
        Probability that an added item is removed again later in the session.
    p_checkout
        Probability that a session with a non-empty cart ends in its purchase.
    p_reorder
        Probability that a session is a quick re-order: a view or two and a purchase of
        a drawn order total (a saved basket), without cart events.
    price
        Range of item prices (EUR) the persona looks at.
    order_total
        Median (EUR) and log-normal sigma of re-order totals.
    n_categories
        Number of preferred categories per user.
    p_explore
        Probability that one step of a session leaves the preferred categories.
    max_purchases
        Cap on purchases per user in one simulated span; ``None`` for no cap.
    comeback
        Range from which each user's return to full ``activity`` after the lapse is drawn,
        at or after ``departure``; ``(1, 1)`` means a lapsed user never comes back.
    residual_buys
        Whether the sessions of a lapsed user (the ``residual`` ones) may end in a
        purchase.
    """

    name: str
    share: float
    activity: float
    arrival: tuple[float, float]
    departure: tuple[float, float]
    residual: float
    searches: tuple[int, int]
    views: tuple[int, int]
    p_click: float
    p_add: float
    p_remove: float
    p_checkout: float
    p_reorder: float
    price: tuple[float, float]
    order_total: tuple[float, float]
    n_categories: int
    p_explore: float
    max_purchases: int | None = None
    comeback: tuple[float, float] = (1.0, 1.0)
    residual_buys: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.startswith("p_") or f.name == "residual":
                value = getattr(self, f.name)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{f.name} must be a probability, got {value}")
        if not self.share >= 0 or not self.activity > 0:
            raise ValueError(f"share must be >= 0 and activity > 0 in persona {self.name!r}")
        a_lo, a_hi = self.arrival
        d_lo, d_hi = self.departure
        if not 0.0 <= a_lo <= a_hi < 1.0 or not a_hi <= d_lo <= d_hi <= 1.0:
            raise ValueError(
                f"arrival and departure must satisfy 0 <= arrival <= departure <= 1, "
                f"got {self.arrival} and {self.departure}"
            )
        c_lo, c_hi = self.comeback
        if not d_hi <= c_lo <= c_hi <= 1.0:
            raise ValueError(
                f"comeback must satisfy departure <= comeback <= 1, got {self.comeback} "
                f"after departure {self.departure}"
            )
        if not 0 <= self.searches[0] <= self.searches[1]:
            raise ValueError(f"searches must be an ordered range, got {self.searches}")
        if not 1 <= self.views[0] <= self.views[1]:
            raise ValueError(f"views must be an ordered range from 1, got {self.views}")
        if not 0 < self.price[0] <= self.price[1]:
            raise ValueError(f"price must be a positive ordered range, got {self.price}")
        if not self.order_total[0] > 0 or not self.order_total[1] >= 0:
            raise ValueError(
                f"order_total must be (median > 0, sigma >= 0), got {self.order_total}"
            )
        if not 1 <= self.n_categories <= len(CATEGORIES):
            raise ValueError(f"n_categories must be in 1..{len(CATEGORIES)}")
        if self.max_purchases is not None and self.max_purchases < 0:
            raise ValueError(f"max_purchases must be >= 0, got {self.max_purchases}")


PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        # Hunts deals across many categories: browses a lot, fills and empties the cart
        # comparing prices, and buys cheap things often.
        Persona(
            name="bargain_hunter",
            share=0.2,
            activity=1.4,
            arrival=(0.0, 0.0),
            departure=(1.0, 1.0),
            residual=0.0,
            searches=(1, 4),
            views=(5, 14),
            p_click=0.45,
            p_add=0.35,
            p_remove=0.5,
            p_checkout=0.6,
            p_reorder=0.05,
            price=(1.0, 20.0),
            order_total=(15.0, 0.5),
            n_categories=10,
            p_explore=0.25,
        ),
        # Knows what they want in a couple of categories; few views, big baskets, high
        # conversion, and regular re-orders.
        Persona(
            name="loyal_high_spender",
            share=0.2,
            activity=0.7,
            arrival=(0.0, 0.0),
            departure=(1.0, 1.0),
            residual=0.0,
            searches=(0, 1),
            views=(1, 5),
            p_click=0.5,
            p_add=0.65,
            p_remove=0.05,
            p_checkout=0.85,
            p_reorder=0.25,
            price=(40.0, 800.0),
            order_total=(220.0, 0.45),
            n_categories=2,
            p_explore=0.03,
        ),
        # Looks at everything, almost never puts anything in the cart, hardly ever buys.
        Persona(
            name="window_shopper",
            share=0.2,
            activity=1.3,
            arrival=(0.0, 0.0),
            departure=(1.0, 1.0),
            residual=0.0,
            searches=(1, 4),
            views=(6, 18),
            p_click=0.7,
            p_add=0.02,
            p_remove=0.5,
            p_checkout=0.1,
            p_reorder=0.0,
            price=(10.0, 400.0),
            order_total=(40.0, 0.5),
            n_categories=6,
            p_explore=0.1,
        ),
        # Signs up in the last day or so: a burst of curious sessions, at most one order.
        Persona(
            name="new_user",
            share=0.2,
            activity=8.0,
            arrival=(0.95, 0.99),
            departure=(1.0, 1.0),
            residual=0.0,
            searches=(0, 2),
            views=(1, 5),
            p_click=0.5,
            p_add=0.3,
            p_remove=0.2,
            p_checkout=0.5,
            p_reorder=0.0,
            price=(5.0, 120.0),
            order_total=(40.0, 0.5),
            n_categories=3,
            p_explore=0.3,
            max_purchases=1,
        ),
        # Bought regularly early on, then lapses somewhere in the first third of the span
        # and is hardly seen again.
        Persona(
            name="lapsing_customer",
            share=0.2,
            activity=1.0,
            arrival=(0.0, 0.0),
            departure=(0.2, 0.33),
            residual=0.02,
            searches=(0, 2),
            views=(2, 6),
            p_click=0.4,
            p_add=0.55,
            p_remove=0.1,
            p_checkout=0.75,
            p_reorder=0.1,
            price=(15.0, 180.0),
            order_total=(60.0, 0.5),
            n_categories=3,
            p_explore=0.1,
        ),
        # The personas below have no share by default, so that the default mix (and every
        # seed's events) stays as it was; scenarios that want them name them in ``shares``.
        #
        # Bought a few times in the first weeks, then went dormant: no purchase after the
        # lapse, and only a rare visit. Unlike the lapsing customer, never a regular.
        Persona(
            name="dormant_customer",
            share=0.0,
            activity=2.0,
            arrival=(0.0, 0.0),
            departure=(0.05, 0.2),
            residual=0.005,
            searches=(0, 2),
            views=(2, 6),
            p_click=0.4,
            p_add=0.55,
            p_remove=0.15,
            p_checkout=0.8,
            p_reorder=0.15,
            price=(10.0, 150.0),
            order_total=(50.0, 0.5),
            n_categories=3,
            p_explore=0.1,
            max_purchases=4,
            residual_buys=False,
        ),
        # Shopped early in the span, vanished for a long middle stretch, and came back near
        # its end: a win-back that worked, or a seasonal shopper.
        Persona(
            name="reactivated_customer",
            share=0.0,
            activity=1.0,
            arrival=(0.0, 0.0),
            departure=(0.15, 0.3),
            residual=0.0,
            searches=(0, 3),
            views=(2, 8),
            p_click=0.45,
            p_add=0.45,
            p_remove=0.2,
            p_checkout=0.7,
            p_reorder=0.1,
            price=(10.0, 250.0),
            order_total=(70.0, 0.5),
            n_categories=4,
            p_explore=0.15,
            comeback=(0.8, 0.9),
        ),
    )
}
DEFAULT_SHARES: dict[str, float] = {name: p.share for name, p in PERSONAS.items()}

_SHIFT_SALT = 0x5_41F7  # the shift's own random stream, apart from the events' one


def _is_fraction(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0.0 <= value <= 1.0
    )


@dataclass(frozen=True, slots=True)
class PersonaShift:
    """A change of behaviour: some users of one persona turn into another one.

    From the instant ``at`` of the span to its end, a share ``share`` of the users of
    ``from_persona`` (drawn at random, reproducibly from the simulator's seed) shop as
    users of ``to_persona`` do at that point of the span: that persona's session shape,
    prices, activity and lapse (a drawn lapse that falls before ``at`` means lapsed from
    ``at`` on), and its number of favourite categories (the first of their old
    favourites kept, the rest drawn to the new persona's taste). A session already
    open at ``at`` finishes as it started.

    Parameters
    ----------
    at
        Fraction of the span, strictly between 0 and 1, at which the shift happens.
    share
        Fraction of ``from_persona``'s users that shift, in (0, 1]; at least one user
        shifts.
    from_persona, to_persona
        Two different names of :data:`PERSONAS`. Every user of ``from_persona`` must have
        arrived by ``at`` (so ``new_user`` only with ``at`` at or after its arrivals).

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.

    Examples
    --------
    >>> PersonaShift(at=0.6, share=0.5)
    PersonaShift(at=0.6, share=0.5, from_persona='window_shopper', to_persona='loyal_high_spender')
    >>> PersonaShift(at=0.6, share=0.5, to_persona="window_shopper")
    Traceback (most recent call last):
    ...
    ValueError: to_persona must differ from from_persona, both are 'window_shopper'
    """

    at: float
    share: float
    from_persona: str = "window_shopper"
    to_persona: str = "loyal_high_spender"

    def __post_init__(self) -> None:
        if not _is_fraction(self.at) or not 0.0 < self.at < 1.0:
            raise ValueError(f"at must be a fraction of the span in (0, 1), got {self.at!r}")
        if not _is_fraction(self.share) or not self.share > 0.0:
            raise ValueError(f"share must be a fraction in (0, 1], got {self.share!r}")
        for arg in ("from_persona", "to_persona"):
            name = getattr(self, arg)
            if name not in PERSONAS:
                raise ValueError(f"{arg} must be one of {sorted(PERSONAS)}, got {name!r}")
        if self.from_persona == self.to_persona:
            raise ValueError(
                f"to_persona must differ from from_persona, both are {self.to_persona!r}"
            )
        last_arrival = PERSONAS[self.from_persona].arrival[1]
        if last_arrival > self.at:
            raise ValueError(
                f"from_persona {self.from_persona!r} has users arriving as late as "
                f"{last_arrival} of the span, after at={self.at}"
            )


#: The shift the quality report times the segmenter on: half the window shoppers start
#: buying like loyal high spenders 60 % of the way through the span. Browsers turning
#: into big buyers is a change a marketer acts on at once (no more discount nudges,
#: start the VIP treatment), their profile changes on every money feature (purchases,
#: spend, order value, recency, conversion), and they keep sending events for the
#: segmenter to notice it by.
DEFAULT_SHIFT = PersonaShift(at=0.6, share=0.5)


@dataclass(frozen=True, slots=True)
class ShiftedUser:
    """Ground truth of one user whose behaviour shifted.

    Attributes
    ----------
    before, after
        Persona until the shift, and from it to the end of the span.
    at_ms
        Event time of the shift, epoch milliseconds: the user's events at or after it
        follow ``after`` (but for the rest of a session open at that instant).
    """

    before: str
    after: str
    at_ms: int


class _Group:
    """Users of one persona in one state (active or lapsed), with O(1) removal."""

    __slots__ = ("index", "users", "weight_per_user")

    def __init__(self, weight_per_user: float) -> None:
        self.users: list[str] = []
        self.index: dict[str, int] = {}
        self.weight_per_user = weight_per_user

    def add(self, user: str) -> None:
        self.index[user] = len(self.users)
        self.users.append(user)

    def remove(self, user: str) -> None:
        i = self.index.pop(user)
        last = self.users.pop()
        if last != user:
            self.users[i] = last
            self.index[last] = i


def _apportion(n: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Split ``n`` by ``shares`` with the largest-remainder method (exact total).

    A zero share gets no one, not even a leftover user.
    """
    total = sum(shares.values())
    quotas = {name: n * s / total for name, s in shares.items()}
    counts = {name: int(q) for name, q in quotas.items()}
    by_remainder = sorted(
        (name for name in quotas if shares[name] > 0),
        key=lambda name: (counts[name] - quotas[name], name),
    )
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


class ShopperSimulator:
    """Deterministic synthetic shoppers and their events.

    Parameters
    ----------
    n_users
        Number of users, ids ``u000001`` upwards.
    seed
        Seed of everything random: the same seed gives the same users and events.
    start_ms, end_ms
        The span of event time, epoch milliseconds.
    shares
        Persona name -> share of the users (normalised; missing personas get none).
        Defaults to :data:`DEFAULT_SHARES`.
    shift
        An optional :class:`PersonaShift`. Without one, the same seed gives exactly the
        same users and events as it always has.

    Attributes
    ----------
    shift
        As given.
    shift_ms
        Event time of the shift, epoch ms (``start_ms`` plus ``shift.at`` of the span,
        rounded); ``None`` without a shift.

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.
    """

    def __init__(
        self,
        n_users: int,
        seed: int,
        start_ms: int,
        end_ms: int,
        shares: Mapping[str, float] | None = None,
        shift: PersonaShift | None = None,
    ) -> None:
        if isinstance(n_users, bool) or not isinstance(n_users, int) or n_users < 1:
            raise ValueError(f"n_users must be an integer >= 1, got {n_users!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        for name, value in (("start_ms", start_ms), ("end_ms", end_ms)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if end_ms <= start_ms:
            raise ValueError(f"end_ms must be after start_ms, got {start_ms}..{end_ms}")
        shares = dict(DEFAULT_SHARES if shares is None else shares)
        unknown = sorted(set(shares) - set(PERSONAS))
        if unknown:
            raise ValueError(f"shares names unknown personas {unknown}; known: {sorted(PERSONAS)}")
        if any(
            not (isinstance(v, int | float) and math.isfinite(v) and v >= 0)
            for v in shares.values()
        ):
            raise ValueError(f"shares must be finite and non-negative, got {shares}")
        if sum(shares.values()) <= 0:
            raise ValueError("shares must not all be zero")
        if shift is not None and not isinstance(shift, PersonaShift):
            raise ValueError(f"shift must be a PersonaShift or None, got {shift!r}")

        self.n_users = n_users
        self.seed = seed
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.shares = {name: shares.get(name, 0.0) for name in PERSONAS}
        self._rng = random.Random(seed)
        self._event_counter = 0
        self._session_counter = 0
        self._build_catalogue()

        rng = self._rng
        counts = _apportion(n_users, self.shares)
        assigned = [name for name in PERSONAS for _ in range(counts[name])]
        rng.shuffle(assigned)  # so that ids say nothing about personas
        # Persona of each user at the start of the span.
        self._truth: dict[str, str] = {f"u{i + 1:06d}": p for i, p in enumerate(assigned)}
        self._favourites: dict[str, list[str]] = {}
        self._arrival: dict[str, float] = {}
        self._departure: dict[str, float] = {}
        # Only users of a persona that comes back have an entry (and a draw), so the draws
        # of the other personas are the same as before returns existed.
        self._comeback: dict[str, float] = {}
        for user, name in self._truth.items():
            p = PERSONAS[name]
            self._favourites[user] = self._draw_favourites(p, rng)
            self._arrival[user] = rng.uniform(*p.arrival) if p.arrival[1] > 0 else 0.0
            self._departure[user] = rng.uniform(*p.departure) if p.departure[0] < 1 else 1.0
            if p.comeback[0] < 1:
                self._comeback[user] = rng.uniform(*p.comeback)
        self.shift = shift
        self._set_up_shift(shift)
        # Events per session of each persona, to turn session rates into traffic; drawn
        # from a private generator so that it does not depend on the seed.
        probe = random.Random(0x5E55)
        self._mean_length = {
            name: sum(
                len(self._session(probe, "probe", p, [CATEGORIES[0]], True)) for _ in range(400)
            )
            / 400
            for name, p in PERSONAS.items()
        }
        self._session_counter = 0

    # -- set-up -------------------------------------------------------------------------

    def _build_catalogue(self) -> None:
        """Products per category with log-normal prices, sorted by price."""
        rng = self._rng
        self._products: dict[str, list[str]] = {}
        self._prices: dict[str, list[float]] = {}
        for ci, (category, median) in enumerate(CATEGORY_MEDIAN_PRICE.items()):
            prices = sorted(
                round(min(5000.0, max(0.5, median * math.exp(rng.gauss(0.0, 0.9)))), 2)
                for _ in range(PRODUCTS_PER_CATEGORY)
            )
            self._prices[category] = prices
            self._products[category] = [f"p{ci:02d}{k:04d}" for k in range(len(prices))]
        # Which products of each category a persona looks at: those in its price range,
        # and at least a few nearest ones where the category has hardly any.
        self._price_window: dict[tuple[str, str], tuple[int, int]] = {}
        self._category_cum_weights: dict[str, list[float]] = {}
        n = PRODUCTS_PER_CATEGORY
        for name, p in PERSONAS.items():
            cum = 0.0
            cum_weights = []
            for category in CATEGORIES:
                prices = self._prices[category]
                a = bisect.bisect_left(prices, p.price[0])
                b = bisect.bisect_right(prices, p.price[1])
                # Shoppers favour categories where they find things at their price.
                cum += (b - a) / n + 0.05
                cum_weights.append(cum)
                if b - a < _MIN_PRICE_CHOICES:
                    mid = (a + b) // 2
                    a = max(0, min(mid - _MIN_PRICE_CHOICES // 2, n - _MIN_PRICE_CHOICES))
                    b = a + _MIN_PRICE_CHOICES
                self._price_window[name, category] = (a, b)
            self._category_cum_weights[name] = cum_weights

    def _draw_favourites(
        self, p: Persona, rng: random.Random, keep: Sequence[str] = ()
    ) -> list[str]:
        """``p.n_categories`` distinct categories, weighted by the persona's taste.

        The first of ``keep`` come first, as many as fit; the rest are drawn.
        """
        cum_weights = self._category_cum_weights[p.name]
        chosen: dict[str, None] = dict.fromkeys(keep[: p.n_categories])
        while len(chosen) < p.n_categories:
            for c in rng.choices(CATEGORIES, cum_weights=cum_weights, k=2 * p.n_categories):
                chosen[c] = None
                if len(chosen) == p.n_categories:
                    break
        return list(chosen)

    def _set_up_shift(self, shift: PersonaShift | None) -> None:
        """Choose the shifted users and draw what they are like after the shift.

        Uses a random stream of its own, so the draws above are the same with or
        without a shift.
        """
        self._end_truth = self._truth
        self._shifted: dict[str, ShiftedUser] = {}
        self._shift_frac = 1.0
        self.shift_ms: int | None = None
        self._new_favourites: dict[str, list[str]] = {}
        self._lapsed_at_shift: set[str] = set()
        self._new_departure: dict[str, float] = {}
        self._new_comeback: dict[str, float] = {}
        if shift is None:
            return
        candidates = sorted(u for u, name in self._truth.items() if name == shift.from_persona)
        if not candidates:
            raise ValueError(
                f"shift names from_persona {shift.from_persona!r}, which has no users "
                f"with these shares"
            )
        span = self.end_ms - self.start_ms
        at_ms = self.start_ms + round(shift.at * span)
        self.shift_ms = at_ms
        # An event at ts belongs to the fraction (ts - start) / span; this keeps
        # ``ts >= at_ms`` and ``fraction >= _shift_frac`` the same test.
        self._shift_frac = (at_ms - self.start_ms) / span
        rng = random.Random(self.seed ^ _SHIFT_SALT)
        n = max(1, math.floor(shift.share * len(candidates) + 0.5))
        target = PERSONAS[shift.to_persona]
        self._end_truth = dict(self._truth)
        for user in sorted(rng.sample(candidates, n)):
            self._end_truth[user] = shift.to_persona
            self._shifted[user] = ShiftedUser(shift.from_persona, shift.to_persona, at_ms)
            self._new_favourites[user] = self._draw_favourites(
                target, rng, keep=self._favourites[user]
            )
            departure = rng.uniform(*target.departure) if target.departure[0] < 1 else 1.0
            comeback = rng.uniform(*target.comeback) if target.comeback[0] < 1 else 1.0
            if departure > self._shift_frac:
                self._new_departure[user] = departure
            elif comeback <= self._shift_frac:
                continue  # lapsed and back again before the shift: active from it
            else:
                self._lapsed_at_shift.add(user)
            if comeback < 1.0:
                self._new_comeback[user] = comeback

    def ground_truth(self) -> dict[str, str]:
        """Return user id -> persona name at the end of the span, for every user.

        With a :class:`PersonaShift`, a shifted user has the persona shifted to; see
        :meth:`shifted_users` for the one before.
        """
        return dict(self._end_truth)

    def shifted_users(self) -> dict[str, ShiftedUser]:
        """Return user id -> :class:`ShiftedUser` for the users whose behaviour shifted.

        Empty without a shift.
        """
        return dict(self._shifted)

    # -- sessions -----------------------------------------------------------------------

    def _session(
        self,
        rng: random.Random,
        user: str,
        p: Persona,
        favourites: list[str],
        may_buy: bool,
    ) -> list[dict[str, object]]:
        """Events of one session in order, without ``event_id`` and ``ts`` filled in.

        Each dict is created with placeholder ``event_id`` and ``ts`` so that the emitted
        events keep the schema's key order.
        """
        self._session_counter += 1
        sid = f"s{self.seed}-{self._session_counter}"
        out: list[dict[str, object]] = []
        rand = rng.random
        n_cat = len(CATEGORIES)
        window = self._price_window
        name = p.name

        def category() -> str:
            if rand() < p.p_explore:
                return CATEGORIES[int(rand() * n_cat)]
            return favourites[int(rand() * len(favourites))]

        def product(cat: str) -> tuple[str, float]:
            a, b = window[name, cat]
            k = a + int(rand() * (b - a))
            return self._products[cat][k], self._prices[cat][k]

        def event(etype: str, **extra: object) -> dict[str, object]:
            ev: dict[str, object] = {
                "event_id": "",
                "user_id": user,
                "type": etype,
                "ts": 0,
                "session_id": sid,
            }
            ev.update(extra)
            return ev

        if may_buy and rand() < p.p_reorder:
            # A saved basket bought again: look at a product or two, then pay.
            cat = favourites[int(rand() * len(favourites))]
            for _ in range(1 + (rand() < 0.4)):
                pid, price = product(cat)
                out.append(event("view", product_id=pid, category=cat, price=price))
            median, sigma = p.order_total
            amount = round(median * math.exp(rng.gauss(0.0, sigma)), 2)
            out.append(
                event(
                    "purchase",
                    category=cat,
                    quantity=rng.randint(1, 4),
                    amount=amount,
                    currency=CURRENCY,
                )
            )
            return out

        n_views = rng.randint(*p.views)
        searches_left = rng.randint(*p.searches)
        cart: dict[str, tuple[str, float, int]] = {}  # product -> (category, price, qty)
        removals: dict[int, list[str]] = {}  # view step -> products removed before it
        cat = ""
        for step in range(n_views):
            for pid in removals.pop(step, ()):
                c, price, qty = cart.pop(pid)
                out.append(
                    event("remove_from_cart", product_id=pid, category=c, price=price, quantity=qty)
                )
            # Spread the searches over the session: each starts a run of views in the
            # searched category; without one, views drift between categories.
            if searches_left and (not cat or rand() < searches_left / (n_views - step)):
                cat = category()
                searches_left -= 1
                out.append(event("search", category=cat))
            elif not cat or rand() < 0.3:
                cat = category()
            pid, price = product(cat)
            out.append(event("view", product_id=pid, category=cat, price=price))
            if rand() < p.p_click:
                out.append(event("click", product_id=pid, category=cat, price=price))
            if pid not in cart and rand() < p.p_add:
                qty = 1 if rand() < 0.8 else rng.randint(2, 3)
                cart[pid] = (cat, price, qty)
                out.append(
                    event("add_to_cart", product_id=pid, category=cat, price=price, quantity=qty)
                )
                if rand() < p.p_remove:
                    removals.setdefault(rng.randint(step + 1, n_views), []).append(pid)
        for pid in removals.pop(n_views, ()):
            c, price, qty = cart.pop(pid)
            out.append(
                event("remove_from_cart", product_id=pid, category=c, price=price, quantity=qty)
            )
        # Searches that found nothing worth a look.
        for _ in range(searches_left):
            out.append(event("search", category=category()))
        if cart and may_buy and rand() < p.p_checkout:
            lines = list(cart.items())
            amount = round(sum(price * qty for _, (_, price, qty) in lines), 2)
            top_pid, (top_cat, _, _) = max(lines, key=lambda line: line[1][1] * line[1][2])
            extra: dict[str, object] = {"category": top_cat}
            if len(lines) == 1:
                extra["product_id"] = top_pid
            out.append(
                event(
                    "purchase",
                    **extra,
                    quantity=sum(qty for _, (_, _, qty) in lines),
                    amount=amount,
                    currency=CURRENCY,
                )
            )
        return out

    # -- traffic ------------------------------------------------------------------------

    def _transitions(self) -> list[tuple[float, int, str]]:
        """(span fraction, 0 = arrives / 1 = lapses / 2 = shifts / 3 = comes back, user),
        in time order.

        A shifted user's own arrival, lapse and return count only up to the shift; after
        it, the lapse and return drawn for the persona shifted to.
        """
        out = []
        cut = self._shift_frac
        for user in self._truth:
            shifted = user in self._shifted
            if self._arrival[user] > 0.0:
                # min(): ``cut`` is ``at`` rounded to a millisecond, maybe just before it.
                arrival = min(self._arrival[user], cut) if shifted else self._arrival[user]
                out.append((arrival, 0, user))
            if self._departure[user] < 1.0 and not (shifted and self._departure[user] > cut):
                out.append((self._departure[user], 1, user))
            comeback = self._comeback.get(user, 1.0)
            if comeback < 1.0 and not (shifted and comeback > cut):
                out.append((comeback, 3, user))
            if shifted:
                out.append((cut, 2, user))
                if user in self._new_departure and self._new_departure[user] < 1.0:
                    out.append((self._new_departure[user], 1, user))
                if user in self._new_comeback:
                    out.append((self._new_comeback[user], 3, user))
        out.sort()
        return out

    def _initial_groups(self) -> dict[str, tuple[_Group, _Group]]:
        """Per persona, the (active, lapsed) users at the start of the span."""
        groups = {
            name: (_Group(p.activity), _Group(p.activity * p.residual))
            for name, p in PERSONAS.items()
        }
        for user, name in self._truth.items():
            if self._arrival[user] <= 0.0:
                groups[name][0].add(user)
        return groups

    def _initial_personas(self) -> dict[str, str]:
        """User -> persona at the start of the span, for one pass to update as it goes."""
        return dict(self._truth) if self._shifted else self._truth

    def _traffic_curve(self) -> tuple[list[int], list[float]]:
        """Bucket edges (ms) and cumulative expected events at each edge.

        Traffic in a bucket is the users' session rates at its middle, times events per
        session, times the time of day.
        """
        span = self.end_ms - self.start_ms
        n_buckets = max(1, min(_MAX_BUCKETS, math.ceil(span / _BUCKET_MS)))
        width = span / n_buckets
        edges = [self.start_ms + round(k * width) for k in range(n_buckets)] + [self.end_ms]
        groups = self._initial_groups()
        personas = self._initial_personas()
        transitions = self._transitions()
        t = 0
        cumulative = [0.0]
        for k in range(n_buckets):
            mid_ms = (edges[k] + edges[k + 1]) / 2
            frac = (mid_ms - self.start_ms) / span
            while t < len(transitions) and transitions[t][0] <= frac:
                self._apply(groups, personas, transitions[t])
                t += 1
            rate = sum(
                self._mean_length[name]
                * (a.weight_per_user * len(a.users) + lapsed.weight_per_user * len(lapsed.users))
                for name, (a, lapsed) in groups.items()
            )
            cumulative.append(
                cumulative[-1] + rate * _time_of_day(mid_ms) * (edges[k + 1] - edges[k])
            )
        if cumulative[-1] <= 0.0:
            # Nobody active at any bucket's middle (a tiny span of late arrivals only):
            # spread the events evenly instead.
            cumulative = [float(e - self.start_ms) for e in edges]
        return edges, cumulative

    def _apply(
        self,
        groups: dict[str, tuple[_Group, _Group]],
        personas: dict[str, str],
        tr: tuple[float, int, str],
    ) -> None:
        _, kind, user = tr
        active, lapsed = groups[personas[user]]
        if kind == 0:
            active.add(user)
        elif kind == 1:
            active.remove(user)
            lapsed.add(user)
        elif kind == 3:
            lapsed.remove(user)
            active.add(user)
        else:
            for g in (active, lapsed):
                if user in g.index:
                    g.remove(user)
            after = self._shifted[user].after
            personas[user] = after
            new_active, new_lapsed = groups[after]
            (new_lapsed if user in self._lapsed_at_shift else new_active).add(user)

    def _concurrency(self, n_events: int) -> int:
        """Open sessions to interleave so that one lasts about ``_SESSION_TARGET_MS``."""
        weights = {
            name: PERSONAS[name].activity * count
            for name, count in _apportion(self.n_users, self.shares).items()
        }
        mean_length = sum(self._mean_length[n] * w for n, w in weights.items()) / sum(
            weights.values()
        )
        ms_per_event = (self.end_ms - self.start_ms) / n_events
        wanted = round(_SESSION_TARGET_MS / (mean_length * ms_per_event))
        return max(1, min(wanted, 256, self.n_users // 4))

    def events(self, n_events: int) -> Iterator[dict[str, object]]:
        """Yield ``n_events`` events in non-decreasing event time across the span.

        Each call simulates the whole span afresh (event and session ids keep counting,
        so they stay unique across calls).

        Parameters
        ----------
        n_events
            How many events to yield.

        Yields
        ------
        dict
            ``event_id``, ``user_id``, ``type``, ``ts`` and ``session_id``, plus the
            optional schema keys that apply to the type; every purchase has ``amount``.
        """
        # Checked here rather than in the generator body, so that a bad count fails at
        # the call and not at the first next().
        if isinstance(n_events, bool) or not isinstance(n_events, int) or n_events < 0:
            raise ValueError(f"n_events must be an integer >= 0, got {n_events!r}")
        return self._generate(n_events)

    def _generate(self, n_events: int) -> Iterator[dict[str, object]]:
        if n_events == 0:
            return
        edges, cumulative = self._traffic_curve()
        groups = self._initial_groups()
        transitions = self._transitions()
        n_transitions = len(transitions)
        rng = self._rng
        rand = rng.random
        span = self.end_ms - self.start_ms
        concurrent = self._concurrency(n_events)
        caps = {
            name: p.max_purchases for name, p in PERSONAS.items() if p.max_purchases is not None
        }
        bought: dict[str, int] = {}
        personas = self._initial_personas()
        start_personas = self._truth
        new_favourites = self._new_favourites

        pickable: list[tuple[_Group, float]] = []
        total_weight = 0.0
        dirty = True

        def refresh() -> None:
            nonlocal total_weight, dirty
            pickable.clear()
            total_weight = 0.0
            for active, lapsed in groups.values():
                for g in (active, lapsed):
                    w = g.weight_per_user * len(g.users)
                    if w > 0:
                        pickable.append((g, w))
                        total_weight += w
            dirty = False

        open_sessions: list[list[dict[str, object]]] = []  # each reversed: pop() is next
        open_users: list[str] = []
        busy: set[str] = set()
        step = cumulative[-1] / n_events
        bucket = 0
        t = 0
        seed = self.seed
        counter = self._event_counter
        try:
            for i in range(n_events):
                # The i-th event sits at the (i + 1/2)-th n-quantile of the traffic curve.
                mass = (i + 0.5) * step
                while bucket < len(edges) - 2 and cumulative[bucket + 1] < mass:
                    bucket += 1
                lo, hi = edges[bucket], edges[bucket + 1]
                in_bucket = cumulative[bucket + 1] - cumulative[bucket]
                ts = (
                    lo + int((mass - cumulative[bucket]) / in_bucket * (hi - lo))
                    if in_bucket
                    else lo
                )
                ts = min(ts, hi)
                frac = (ts - self.start_ms) / span
                while t < n_transitions and transitions[t][0] <= frac:
                    self._apply(groups, personas, transitions[t])
                    t += 1
                    dirty = True
                attempts = 0
                while len(open_sessions) < concurrent and attempts < 8:
                    attempts += 1
                    if dirty:
                        refresh()
                    while total_weight <= 0.0 and t < n_transitions:
                        # Nobody active yet (possible within a bucket): bring the next
                        # arrival forward.
                        self._apply(groups, personas, transitions[t])
                        t += 1
                        refresh()
                    lapsed_now = True
                    if total_weight <= 0.0:
                        # Everyone has lapsed for good: the last to go shops once more.
                        user = transitions[t - 1][2]
                    else:
                        r = rand() * total_weight
                        chosen = pickable[-1][0]  # if rounding leaves r just above 0
                        for g, w in pickable:
                            r -= w
                            if r < 0.0:
                                chosen = g
                                break
                        user = chosen.users[int(rand() * len(chosen.users))]
                        lapsed_now = chosen is groups[personas[user]][1]
                    if user in busy:
                        continue  # one session per user at a time
                    name = personas[user]
                    cap = caps.get(name)
                    may_buy = (cap is None or bought.get(user, 0) < cap) and (
                        PERSONAS[name].residual_buys or not lapsed_now
                    )
                    favourites = (
                        self._favourites[user]
                        if name == start_personas[user]
                        else new_favourites[user]
                    )
                    session = self._session(rng, user, PERSONAS[name], favourites, may_buy)
                    if cap is not None and session[-1]["type"] == "purchase":
                        bought[user] = bought.get(user, 0) + 1
                    session.reverse()
                    open_sessions.append(session)
                    open_users.append(user)
                    busy.add(user)
                j = int(rand() * len(open_sessions))
                session = open_sessions[j]
                ev = session.pop()
                if not session:
                    busy.discard(open_users[j])
                    open_sessions[j] = open_sessions[-1]
                    open_users[j] = open_users[-1]
                    open_sessions.pop()
                    open_users.pop()
                counter += 1
                ev["event_id"] = f"{seed}-{counter}"
                ev["ts"] = ts
                yield ev
        finally:
            self._event_counter = counter


def _time_of_day(ms: float) -> float:
    """Relative shop traffic at an instant: lowest before dawn, highest at 20:30 UTC."""
    hour = (ms % DAY_MS) / 3_600_000
    return 1.0 + 0.6 * math.cos(2 * math.pi * (hour - 20.5) / 24)


#: Kinds of deliberately bad payloads, in the order the generator cycles through them.
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


def malformed_event(
    rng: random.Random,
    user_id: str = "u000001",
    *,
    kind: str | None = None,
    ts_ms: int = 1_700_000_000_000,
) -> tuple[str, bytes]:
    """Return a deliberately bad payload and its kind.

    Apart from its one defect each payload is a plausible event of ``user_id`` at
    ``ts_ms``, so that a consumer rejecting it must have caught that defect.

    Parameters
    ----------
    rng
        Source of randomness (ids, values), so that runs are reproducible.
    user_id
        The user the payload claims to be from (the Kafka key to send it with).
    kind
        One of :data:`MALFORMED_KINDS`; ``None`` draws one at random.
    ts_ms
        Event time of the otherwise valid fields.

    Returns
    -------
    tuple of (str, bytes)
        The kind and the payload.

    Examples
    --------
    >>> kind, payload = malformed_event(random.Random(1), kind="json_array")
    >>> kind, payload[:1]
    ('json_array', b'[')
    """
    if kind is None:
        kind = MALFORMED_KINDS[rng.randrange(len(MALFORMED_KINDS))]
    elif kind not in MALFORMED_KINDS:
        raise ValueError(f"kind must be one of {MALFORMED_KINDS}, got {kind!r}")
    good: dict[str, object] = {
        "event_id": f"bad-{rng.getrandbits(48):012x}",
        "user_id": user_id,
        "type": "view",
        "ts": ts_ms,
        "category": CATEGORIES[rng.randrange(len(CATEGORIES))],
    }
    purchase = {**good, "type": "purchase", "currency": CURRENCY}
    if kind == "not_json":
        raw = orjson.dumps(good)
        return kind, raw[: rng.randrange(1, len(raw) - 1)]  # cut off: never valid JSON
    if kind == "json_array":
        return kind, orjson.dumps([good])
    if kind == "missing_user_id":
        del good["user_id"]
        return kind, orjson.dumps(good)
    if kind == "negative_amount":
        return kind, orjson.dumps({**purchase, "amount": -round(rng.uniform(0.01, 500.0), 2)})
    if kind == "purchase_without_amount":
        return kind, orjson.dumps(purchase)
    if kind == "unknown_type":
        etype = ("teleport", "wishlist_add", "refund", "login")[rng.randrange(4)]
        return kind, orjson.dumps({**good, "type": etype})
    if kind == "nonsense_ts":
        ts = ("yesterday-ish", "soon", "not a time", "32/13/2023 25:61")[rng.randrange(4)]
        return kind, orjson.dumps({**good, "ts": ts})
    if kind == "far_future_ts":
        return kind, orjson.dumps({**good, "ts": _YEAR_2300_MS + rng.randrange(DAY_MS)})
    if kind == "oversized":
        pad = "x" * (MAX_EVENT_BYTES + rng.randrange(1, 8192))
        return kind, orjson.dumps({**good, "note": pad})
    # not_utf8: valid JSON structure, but the user id carries bytes that are not UTF-8.
    raw = orjson.dumps(good)
    quoted = orjson.dumps(user_id)
    return kind, raw.replace(quoted, quoted[:-1] + b"\xff\xfe" + quoted[-1:], 1)
