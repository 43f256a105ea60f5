"""Segment profiles in human units, and names a marketer understands.

A segment's profile is its centroid mapped back to human units (orders, spend, days).
Its name comes from the first rule, in order, that the profile satisfies, compared with
the population's typical user: the scaler's mean mapped back the same way, which for the
log-compressed features is a geometric mean (a typical user, not one pulled up by a few
big spenders).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from stream.scaling import OnlineScaler, to_human

Profile = dict[str, float]


@dataclass(frozen=True, slots=True)
class NamingRule:
    """A segment name, its description, and when it applies."""

    name: str
    description: str
    applies: Callable[[Profile, Profile], bool]


#: The default rules, tried in order; the last always applies.
DEFAULT_RULES: tuple[NamingRule, ...] = (
    NamingRule(
        "new",
        "Arrived in the last few days; little history yet.",
        lambda p, pop: p["tenure_days"] < 3,
    ),
    NamingRule(
        "window_shopper",
        "Browse a lot but rarely buy.",
        lambda p, pop: p["purchases_30d"] < 0.5 and p["events_30d"] >= pop["events_30d"],
    ),
    NamingRule(
        "high_value",
        "Buy often, in large baskets, and spend well above the typical customer.",
        lambda p, pop: (
            p["spend_30d"] >= 2 * max(pop["spend_30d"], 1.0)
            and p["avg_order_value"] >= 2 * pop["avg_order_value"]
            and p["purchases_30d"] >= 1.5
        ),
    ),
    NamingRule(
        "bargain_hunter",
        "Buy small baskets after filling and emptying carts across many categories.",
        lambda p, pop: (
            p["purchases_30d"] >= 1
            and p["avg_order_value"] < 2 * pop["avg_order_value"]
            and (
                p["cart_abandonment_30d"] >= 0.3
                or p["category_diversity_30d"] >= pop["category_diversity_30d"]
            )
        ),
    ),
    NamingRule(
        "at_risk",
        "Bought before, but not for two weeks or more.",
        lambda p, pop: p["days_since_last_purchase"] >= 14 and p["avg_order_value"] > 1,
    ),
    NamingRule(
        "dormant",
        "Little activity of any kind lately.",
        lambda p, pop: p["events_30d"] < 0.5 * pop["events_30d"],
    ),
    NamingRule("regular", "Steady shoppers with typical activity and spend.", lambda p, pop: True),
)


@dataclass(frozen=True, slots=True)
class SegmentProfile:
    """One segment as the catalogue shows it."""

    segment: int
    name: str
    description: str
    centroid: Profile


def profiles(
    centres: np.ndarray,
    scaler: OnlineScaler,
    ids: Sequence[int] | None = None,
    rules: tuple[NamingRule, ...] = DEFAULT_RULES,
) -> list[SegmentProfile]:
    """Name every segment; names repeat only with a numeric suffix (``at_risk_2``).

    ``ids`` are the segment ids of the centres' rows (default: the row numbers). Suffixes
    go to segments in id order, so the oldest segment keeps the plain name.

    Examples
    --------
    >>> import numpy as np
    >>> from stream.scaling import MODEL_FEATURES
    >>> s = OnlineScaler.empty(len(MODEL_FEATURES))
    >>> s.learn(np.zeros(len(MODEL_FEATURES))); s.learn(np.ones(len(MODEL_FEATURES)))
    >>> [p.name for p in profiles(np.zeros((2, len(MODEL_FEATURES))), s)]
    ['new', 'new_2']
    """
    population = to_human(scaler.mean)
    out: list[SegmentProfile] = []
    used: dict[str, int] = {}
    seg_ids = list(range(len(centres))) if ids is None else list(ids)
    for i, centre in sorted(zip(seg_ids, centres, strict=True), key=lambda t: t[0]):
        human = to_human(scaler.inverse(centre))
        rule = next(r for r in rules if r.applies(human, population))
        used[rule.name] = used.get(rule.name, 0) + 1
        name = rule.name if used[rule.name] == 1 else f"{rule.name}_{used[rule.name]}"
        out.append(SegmentProfile(i, name, rule.description, human))
    order = {sid: n for n, sid in enumerate(seg_ids)}
    return sorted(out, key=lambda p: order[p.segment])
