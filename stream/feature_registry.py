"""Every per-user feature, described once: name, unit, how the model sees it, who gets it.

:func:`stream.features.compute_features` computes the features; this module says what they
are. The model's vector (:mod:`stream.scaling`), the change message's ``features``
(:mod:`stream.batch`), the packed stored change (:mod:`stream.stored_change`), the user
hash and the documentation all read their lists from here.

Time windows are exact to their grain: the 24 h window counts the current hour and the 23
before it, the 90 d window the current week and the 12 before it (85 to 91 days), the
365 d window the current 28-day period and the 12 before it (337 to 364 days). Every
window and every "days since" is taken as of the group's event-time watermark (or the
user's own last event, when that is later), never the wall clock.

Examples
--------
>>> MODEL_FEATURES[:3]
('events_30d', 'frequency', 'monetary')
>>> FEATURES_BY_NAME["days_since_last_purchase"].unit
'days'
"""

from __future__ import annotations

from dataclasses import dataclass

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
#: The grain of the longest window: four weeks, so thirteen of them make a year.
PERIOD_MS = 28 * DAY_MS


@dataclass(frozen=True, slots=True)
class Window:
    """A rolling window: its name, the grain of its buckets, and how many it spans."""

    name: str
    grain_ms: int
    span: int


WINDOWS: tuple[Window, ...] = (
    Window("1h", MINUTE_MS, 60),
    Window("24h", HOUR_MS, 24),
    Window("7d", DAY_MS, 7),
    Window("30d", DAY_MS, 30),
    Window("90d", WEEK_MS, 13),
    Window("365d", PERIOD_MS, 13),
)
WINDOW_NAMES = tuple(w.name for w in WINDOWS)
#: Horizons the RFM frequency and monetary features may be taken over.
RFM_HORIZONS: tuple[str, ...] = ("30d", "90d", "365d", "lifetime")
#: Events older than this, relative to the user's latest event, are late: no window can
#: count them any more (they still count in nothing, as lifetime totals are only added to
#: in order).
LONGEST_WINDOW_MS = 13 * PERIOD_MS
#: The cap of every "days" feature the model sees: the longest window, a year.
DAYS_CAP = 365.0
#: The age at which an event's price weighs half as much in ``price_level``.
PRICE_HALF_LIFE_MS = 30 * DAY_MS

#: Event type names as the count features spell them, in :data:`stream.events.EVENT_TYPES`
#: order.
TYPE_NAMES = ("views", "clicks", "add_to_cart", "remove_from_cart", "purchases", "searches")


@dataclass(frozen=True, slots=True)
class Feature:
    """One feature.

    Attributes
    ----------
    name
        Its name in the user hash, the change message and the model.
    unit
        What one unit of it is, for people (``events``, ``orders``, ``currency``, ``days``,
        ``ratio``, ``categories``).
    description
        One line for the documentation and ``segmenter explain``.
    log
        Whether the model compresses it with ``log1p`` (heavy-tailed counts, money, days).
    cap
        Values above this are clipped before the model sees them (``None``: no cap).
    missing
        What the model uses for a null value (a customer who never bought is this many
        days from a purchase).
    model
        Whether it is a dimension of the model's vector.
    resolution
        The smallest difference that means something, in the model's units (after
        ``log1p`` where ``log``): the scaler never divides by a spread smaller than this.
        A feature nearly everyone shares (everyone's tenure in a shop that opened last
        month) would otherwise be blown up to dominate every distance.
    message
        Whether every segment-change message carries it (the user hash carries all).
    """

    name: str
    unit: str
    description: str
    log: bool = True
    cap: float | None = None
    missing: float = 0.0
    model: bool = False
    message: bool = False
    resolution: float = 0.25


def _counts() -> list[Feature]:
    out = []
    for w in WINDOWS:
        for t in TYPE_NAMES:
            unit = "orders" if t == "purchases" else "events"
            out.append(Feature(f"{t}_{w.name}", unit, f"{t.replace('_', ' ')} in {w.name}"))
        # Activity in the last month is a dimension of the model; the other windows are
        # there for readers (and for the RFM horizon).
        out.append(
            Feature(
                f"events_{w.name}",
                "events",
                f"events of any type in {w.name}",
                model=w.name == "30d",
            )
        )
    return out


#: Per-window event counts (``views_1h`` ... ``events_365d``), kept as integers in the user
#: hash (where, like every feature of zero, a zero count is left out).
COUNT_FEATURES: tuple[str, ...] = tuple(f.name for f in _counts())

#: Every feature, in the order :func:`stream.features.compute_features` returns them.
FEATURES: tuple[Feature, ...] = (
    *_counts(),
    *(Feature(f"spend_{w}", "currency", f"order value in {w}") for w in ("7d", "30d")),
    *(Feature(f"spend_{w}", "currency", f"order value in {w}") for w in ("90d", "365d")),
    Feature("purchases_lifetime", "orders", "orders ever"),
    Feature("spend_lifetime", "currency", "order value ever"),
    Feature(
        "frequency",
        "orders",
        "RFM frequency: orders over the RFM horizon (SEGMENTER_RFM_HORIZON)",
        model=True,
        message=True,
    ),
    Feature(
        "monetary",
        "currency",
        "RFM monetary: order value over the RFM horizon",
        model=True,
        message=True,
    ),
    Feature(
        "avg_order_value",
        "currency",
        "average order value, over all orders ever",
        message=True,
    ),
    Feature(
        "days_since_last_purchase",
        "days",
        "RFM recency: days since the last purchase (null: never bought)",
        cap=DAYS_CAP,
        missing=DAYS_CAP,
        message=True,
    ),
    # The model's recency. ``days_since_last_purchase`` puts everyone who never bought a
    # year away (its missing value), a cliff that splits any population into buyers and
    # the rest before behaviour counts; days without an order grows smoothly for both.
    Feature(
        "days_without_purchase",
        "days",
        "days since the last purchase, or since the first event for who never bought",
        cap=DAYS_CAP,
        model=True,
    ),
    Feature(
        "days_since_last_event",
        "days",
        "days since the last event of any type",
        cap=DAYS_CAP,
        missing=DAYS_CAP,
        model=True,
        message=True,
    ),
    Feature(
        "conversion_rate_30d",
        "ratio",
        "orders per product view in 30d (1 when buying without views)",
        log=False,
        resolution=0.05,
        message=True,
    ),
    # The model's conversion: over a year a customer's rate is steady; over 30 days a
    # customer with two visits is at 0 or 0.5 by chance.
    Feature(
        "conversion_rate_365d",
        "ratio",
        "orders per product view in 365d (1 when buying without views)",
        log=False,
        resolution=0.05,
        model=True,
        message=True,
    ),
    # How readily a customer puts what they look at in the cart: a bargain hunter fills the
    # cart comparing prices, a window shopper looks and leaves, whatever either buys.
    Feature(
        "cart_rate_365d",
        "ratio",
        "add-to-carts per product view in 365d (1 when adding without views)",
        log=False,
        resolution=0.05,
        model=True,
    ),
    # What a customer is willing to pay: a bargain hunter looks at cheap things whatever
    # they buy, a big spender at dear ones even in a quiet month. The mean is of logs
    # (a geometric mean), so one luxury item among many cheap ones moves it little.
    Feature(
        "price_level",
        "currency",
        "typical price of the products looked at: geometric mean of the prices events "
        "carry, an event weighing half as much for every 30 days of age (0: no price seen)",
        model=True,
        message=True,
    ),
    Feature(
        "cart_abandonment_30d",
        "ratio",
        "share of add-to-carts in 30d not followed by an order",
        log=False,
        resolution=0.05,
    ),
    Feature(
        "category_diversity_30d",
        "categories",
        "distinct categories seen in 30d",
        model=True,
    ),
    Feature("tenure_days", "days", "days since the first event", model=True, cap=DAYS_CAP),
    # How long a customer has been active: a regular who has been quiet for two weeks was
    # active for most of their tenure, one who lapsed early for a small part of it.
    Feature(
        "active_days",
        "days",
        "days from the first event to the last",
        model=True,
        cap=DAYS_CAP,
    ),
)

FEATURES_BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}
#: Every feature name, in order.
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
#: The model's vector, in order.
MODEL_FEATURES: tuple[str, ...] = tuple(f.name for f in FEATURES if f.model)
#: The model features a deployment cannot leave out (``SEGMENTER_MODEL_FEATURES``): recency,
#: frequency and monetary value are what RFM scores, the typical customer and every
#: segment name are read from.
RFM_CORE: tuple[str, ...] = ("frequency", "monetary", "days_without_purchase")
#: What every change message carries, in order; ``events_30d``, ``purchases_30d`` and
#: ``spend_30d`` first, as the message schema requires them.
MESSAGE_FEATURES: tuple[str, ...] = (
    "events_30d",
    "purchases_30d",
    "spend_30d",
    *(f.name for f in FEATURES if f.message),
)
