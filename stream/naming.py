"""Segment profiles in human units, and names a marketer understands.

A segment's profile is its centroid mapped back to human units (orders, spend, days): as
the model averages log-compressed values, that is close to its members' median. It is
compared with the population's typical customer: the medians of one vector per user of
the shared sample, kept with the model (``population`` in the checkpoint), or the
scaler's mean where a checkpoint has none. Each name is a rule over the two, tried in
order (:data:`DEFAULT_RULES`), in the vocabulary of RFM segmentation:

=================  ============================================================================
``new``            arrived lately: tenure under a week, and under half the typical customer's
``dormant``        no purchase for two months or more (or never), and quiet: hardly any
                   activity in the last 30 days
``at_risk``        bought before, but the last purchase is three weeks or more ago and at
                   least half again as long ago as the typical buyer's (taken within 1 week to 2
                   months: in a shop where buyers come back daily, three weeks is still
                   not long; where they come back yearly, "recent" still means weeks)
``window_shopper`` browses at least as much as the typical customer, buys next to nothing
``high_value``     recent, orders at least as often as the typical customer, spends at
                   least three times as much, in baskets well above the typical one
``bargain_hunter`` buys at least as often as the typical customer, in small baskets, across
                   at least as many categories (and at least one)
``loyal``          recent and orders at least twice as often as the typical customer (and
                   twice at least)
``potential``      bought recently, but not yet often
``low_value``      everyone else: infrequent, small
=================  ============================================================================

Names never differ by a number alone: when two segments fall under one rule, each also
gets the word of the feature that sets them apart most, with ``more`` or ``less``
(``window_shopper_more_activity``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from stream.scaling import MODEL_FEATURES, OnlineScaler, to_human

Profile = dict[str, float]

#: The word a name uses for each model feature when two segments differ by it.
FEATURE_WORDS: dict[str, str] = {
    "events_30d": "activity",
    "frequency": "orders",
    "monetary": "spend",
    "days_without_purchase": "lapsed",
    "days_since_last_event": "quiet",
    "conversion_rate_365d": "conversion",
    "cart_rate_365d": "carting",
    "price_level": "pricey",
    "category_diversity_30d": "variety",
    "tenure_days": "tenure",
    "active_days": "active span",
}


@dataclass(frozen=True, slots=True)
class NamingRule:
    """A segment name, its description, and when it applies."""

    name: str
    description: str
    applies: Callable[[Profile, Profile], bool]


def _typical_recency(pop: Profile) -> float:
    """The typical buyer's days since a purchase, within 1 week to 2 months (the
    population's recency is its buyers': see :func:`stream.checkpoint.population`)."""
    return min(max(pop["days_without_purchase"], 7.0), 60.0)


def _recent(p: Profile, pop: Profile) -> bool:
    return p["days_without_purchase"] <= 1.25 * _typical_recency(pop)


def _frequent(p: Profile, pop: Profile) -> bool:
    """Orders at least twice as often as the typical customer, and at least twice."""
    return p["frequency"] >= max(2 * pop["frequency"], 2.0)


#: The default rules, tried in order; the last always applies.
DEFAULT_RULES: tuple[NamingRule, ...] = (
    NamingRule(
        "new",
        "Arrived lately; little history yet: onboard them.",
        lambda p, pop: p["tenure_days"] < 7 and p["tenure_days"] < 0.5 * pop["tenure_days"],
    ),
    NamingRule(
        "dormant",
        "No purchase for two months or more and hardly any activity: reactivate or suppress.",
        lambda p, pop: (
            p["days_without_purchase"] >= 60
            and p["events_30d"] < max(0.25 * pop["events_30d"], 1.0)
        ),
    ),
    NamingRule(
        "at_risk",
        "Bought before, but not for much longer than usual: win them back before they go.",
        lambda p, pop: (
            p["frequency"] >= 0.5
            # Half again, not twice: where many buyers are lapsing (as in a shop losing
            # them), the typical buyer's recency is itself long.
            and p["days_without_purchase"] >= max(21.0, 1.5 * _typical_recency(pop))
        ),
    ),
    NamingRule(
        "window_shopper",
        "Browse a lot, rarely buy: nudge them with reminders.",
        lambda p, pop: (
            p["frequency"] < max(0.25 * pop["frequency"], 0.5)
            and p["events_30d"] >= pop["events_30d"]
        ),
    ),
    NamingRule(
        "high_value",
        "Recent, frequent, big spenders: retain them, VIP treatment.",
        lambda p, pop: (
            _recent(p, pop)
            and p["frequency"] >= max(pop["frequency"], 1.0)
            and p["monetary"] >= 3 * max(pop["monetary"], 1.0)
            and p["avg_order_value"] >= 1.5 * pop["avg_order_value"]
        ),
    ),
    NamingRule(
        "bargain_hunter",
        "Buy often in small baskets, across many categories: coupons.",
        lambda p, pop: (
            p["frequency"] >= max(pop["frequency"], 0.5)
            and p["avg_order_value"] < pop["avg_order_value"]
            # At least one category: a shop whose events carry none (a purchase log) has no
            # bargain hunters to tell, and 0 >= 0 would make its best customers one.
            and p["category_diversity_30d"] >= max(pop["category_diversity_30d"], 1.0)
        ),
    ),
    NamingRule(
        "loyal",
        "Recent and frequent: reward their loyalty.",
        lambda p, pop: _recent(p, pop) and _frequent(p, pop),
    ),
    NamingRule(
        "potential",
        "Bought recently, but not often yet: nurture and cross-sell.",
        lambda p, pop: p["frequency"] >= 0.5 and _recent(p, pop),
    ),
    NamingRule(
        "low_value",
        "Infrequent, small or quiet: low-cost automation.",
        lambda p, pop: True,
    ),
)


@dataclass(frozen=True, slots=True)
class SegmentProfile:
    """One segment as the catalogue shows it."""

    segment: int
    name: str
    description: str
    centroid: Profile


def population_profile(scaler: OnlineScaler, population: Sequence[float] | None) -> Profile:
    """The typical customer in human units: ``population`` (medians of raw model vectors)
    when the model has it, else the scaler's mean."""
    raw = scaler.mean if population is None else np.asarray(population, float)
    return _human(raw)


def _human(vector: np.ndarray) -> Profile:
    """A model vector in human units, with the basket (average order value) it implies:
    the model keeps orders and spend, and a basket is the one over the other."""
    h = to_human(vector)
    h["avg_order_value"] = h["monetary"] / h["frequency"] if h["frequency"] >= 0.5 else 0.0
    return h


def profiles(
    centres: np.ndarray,
    scaler: OnlineScaler,
    ids: Sequence[int] | None = None,
    rules: tuple[NamingRule, ...] = DEFAULT_RULES,
    population: Sequence[float] | None = None,
) -> list[SegmentProfile]:
    """Name every segment (the module docstring lists the rules).

    ``ids`` are the segment ids of the centres' rows (default: the row numbers);
    ``population`` the typical customer's raw model vector (see :func:`population_profile`).

    Examples
    --------
    >>> import numpy as np
    >>> from stream.scaling import MODEL_FEATURES, to_vector
    >>> s = OnlineScaler.empty(len(MODEL_FEATURES))
    >>> typical = {"events_30d": 20, "frequency": 2, "monetary": 80,
    ...            "days_without_purchase": 10, "days_since_last_event": 2,
    ...            "conversion_rate_365d": 0.1, "category_diversity_30d": 3, "tenure_days": 90}
    >>> s.learn(to_vector(typical)); s.learn(to_vector(typical))
    >>> browsers = [{**typical, "frequency": 0, "monetary": 0, "events_30d": e} for e in (30, 90)]
    >>> centres = s.transform(np.stack([to_vector(b) for b in browsers]))
    >>> [p.name for p in profiles(centres, s)]
    ['window_shopper_less_activity', 'window_shopper_more_activity']
    """
    pop = population_profile(scaler, population)
    seg_ids = list(range(len(centres))) if ids is None else list(ids)
    humans = [_human(scaler.inverse(c)) for c in centres]
    chosen = [next(r for r in rules if r.applies(h, pop)) for h in humans]
    names = [r.name for r in chosen]
    for base in set(names):
        rows = [j for j, n in enumerate(names) if n == base]
        if len(rows) > 1:
            for j, qualifier in zip(rows, _qualifiers(centres[rows]), strict=True):
                names[j] = f"{base}_{qualifier}"
    return [
        SegmentProfile(sid, name, rule.description, human)
        for sid, name, rule, human in zip(seg_ids, names, chosen, humans, strict=True)
    ]


#: Rank words by how many segments share a name.
_RANKS: dict[int, tuple[str, ...]] = {
    2: ("less", "more"),
    3: ("less", "mid", "more"),
    4: ("least", "less", "more", "most"),
    5: ("least", "less", "mid", "more", "most"),
}


def _qualifiers(centres: np.ndarray) -> list[str]:
    """Words that tell apart segments under one name: their rank on the feature on which
    their centres spread most (``less_activity``, ``more_activity``). Past five segments
    under one name, ranks share a word, and segments sharing one are told apart by the
    feature of the second-largest spread."""
    spread = centres.max(axis=0) - centres.min(axis=0)
    first, second = (int(j) for j in np.argsort(-spread)[:2])
    n = len(centres)
    order = [int(r) for r in np.argsort(centres[:, first], kind="stable")]
    ranks = _RANKS.get(n) or tuple(_RANKS[5][r * 5 // n] for r in range(n))
    out = {row: f"{ranks[rank]}_{_word(first)}" for rank, row in enumerate(order)}
    for word in set(out.values()):
        rows = sorted((r for r in out if out[r] == word), key=lambda r: centres[r, second])
        if len(rows) > 1:
            # At most two share a word (n <= 10); three if more, still told apart.
            for rank, row in zip(_RANKS[len(rows)], rows, strict=True):
                out[row] = f"{word}_{rank}_{_word(second)}"
    return [out[row] for row in range(n)]


def _word(j: int) -> str:
    return FEATURE_WORDS.get(MODEL_FEATURES[j], MODEL_FEATURES[j])
