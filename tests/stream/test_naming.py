"""Segment names from centroid profiles in human units."""

from __future__ import annotations

import numpy as np
import pytest

from stream.naming import DEFAULT_RULES, NamingRule, SegmentProfile, profiles
from stream.scaling import MODEL_FEATURES, OnlineScaler, to_vector

TYPICAL = {
    "events_30d": 20.0,
    "purchases_30d": 1.0,
    "spend_30d": 50.0,
    "days_since_last_purchase": 10.0,
    "avg_order_value": 50.0,
    "conversion_rate_30d": 0.05,
    "cart_abandonment_30d": 0.5,
    "category_diversity_30d": 3.0,
    "tenure_days": 30.0,
}
HIGH_VALUE = {
    "events_30d": 60.0,
    "purchases_30d": 8.0,
    "spend_30d": 2000.0,
    "days_since_last_purchase": 1.0,
    "avg_order_value": 250.0,
    "conversion_rate_30d": 0.3,
    "cart_abandonment_30d": 0.1,
    "category_diversity_30d": 5.0,
    "tenure_days": 60.0,
}
WINDOW_SHOPPER = {
    "events_30d": 120.0,
    "purchases_30d": 0.0,
    "spend_30d": 0.0,
    "days_since_last_purchase": None,
    "avg_order_value": 0.0,
    "conversion_rate_30d": 0.0,
    "cart_abandonment_30d": 0.9,
    "category_diversity_30d": 8.0,
    "tenure_days": 40.0,
}
NEWCOMER = {**TYPICAL, "tenure_days": 1.0, "events_30d": 3.0}
DORMANT = {
    "events_30d": 2.0,
    "purchases_30d": 0.0,
    "spend_30d": 0.0,
    "days_since_last_purchase": None,
    "avg_order_value": 0.0,
    "conversion_rate_30d": 0.0,
    "cart_abandonment_30d": 0.0,
    "category_diversity_30d": 1.0,
    "tenure_days": 50.0,
}
# Buys like the typical user, abandons fewer carts and browses fewer categories.
REGULAR = {**TYPICAL, "cart_abandonment_30d": 0.2, "category_diversity_30d": 2.0}
BARGAIN = {**TYPICAL, "purchases_30d": 4.0, "avg_order_value": 15.0, "spend_30d": 60.0}
AT_RISK = {**TYPICAL, "purchases_30d": 0.0, "events_30d": 12.0, "days_since_last_purchase": 40.0}


def population() -> OnlineScaler:
    """A scaler that has seen users spread around the typical one."""
    rng = np.random.default_rng(0)
    s = OnlineScaler.empty(len(MODEL_FEATURES))
    base = to_vector(TYPICAL)  # type: ignore[arg-type]
    for _ in range(200):
        s.learn(base + rng.normal(scale=0.05, size=base.shape))
    return s


def centre_of(human: dict[str, float | None], s: OnlineScaler) -> np.ndarray:
    return s.transform(to_vector(human))


def names(*humans: dict[str, float | None]) -> list[str]:
    s = population()
    return [p.name for p in profiles(np.stack([centre_of(h, s) for h in humans]), s)]


@pytest.mark.parametrize(
    ("human", "name"),
    [
        (HIGH_VALUE, "high_value"),
        (WINDOW_SHOPPER, "window_shopper"),
        (NEWCOMER, "new"),
        (DORMANT, "dormant"),
        (AT_RISK, "at_risk"),
        (REGULAR, "regular"),
        (BARGAIN, "bargain_hunter"),
    ],
)
def test_profiles_get_their_name(human: dict[str, float | None], name: str) -> None:
    assert names(human) == [name]


def test_high_value_needs_many_purchases() -> None:
    # The same spend from a single purchase is not high_value.
    assert names({**HIGH_VALUE, "purchases_30d": 1.0}) != ["high_value"]


def test_window_shopper_needs_at_least_typical_activity() -> None:
    assert names({**WINDOW_SHOPPER, "events_30d": 5.0}) != ["window_shopper"]


def test_profile_carries_the_centroid_in_human_units() -> None:
    s = population()
    (p,) = profiles(centre_of(HIGH_VALUE, s)[None, :], s)
    assert isinstance(p, SegmentProfile)
    assert p.segment == 0
    assert p.description == DEFAULT_RULES[2].description
    assert set(p.centroid) == set(MODEL_FEATURES)
    for k, v in HIGH_VALUE.items():
        assert p.centroid[k] == pytest.approx(v, abs=1e-3)


def test_names_are_unique_with_suffixes() -> None:
    got = names(HIGH_VALUE, WINDOW_SHOPPER, HIGH_VALUE, REGULAR, HIGH_VALUE, WINDOW_SHOPPER)
    assert got == [
        "high_value",
        "window_shopper",
        "high_value_2",
        "regular",
        "high_value_3",
        "window_shopper_2",
    ]
    assert len(set(got)) == len(got)


def test_segments_are_numbered_in_centre_order() -> None:
    s = population()
    centres = np.stack([centre_of(h, s) for h in (REGULAR, HIGH_VALUE, DORMANT)])
    assert [p.name for p in profiles(centres, s)] == ["regular", "high_value", "dormant"]
    assert [p.segment for p in profiles(centres, s)] == [0, 1, 2]


def test_default_rules_order() -> None:
    assert [r.name for r in DEFAULT_RULES] == [
        "new",
        "window_shopper",
        "high_value",
        "bargain_hunter",
        "at_risk",
        "dormant",
        "regular",
    ]


def test_custom_rules() -> None:
    s = population()
    rules = (
        NamingRule("big", "Spends a lot.", lambda p, pop: p["spend_30d"] > 10 * pop["spend_30d"]),
        NamingRule("other", "Everyone else.", lambda p, pop: True),
    )
    centres = np.stack([centre_of(h, s) for h in (HIGH_VALUE, TYPICAL, HIGH_VALUE)])
    assert [p.name for p in profiles(centres, s, rules=rules)] == ["big", "other", "big_2"]
