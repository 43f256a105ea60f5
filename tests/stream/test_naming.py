"""Segment names: RFM rules against the typical customer, their order, and qualifiers."""

from __future__ import annotations

import re

import numpy as np
import pytest

from stream.naming import (
    DEFAULT_RULES,
    FEATURE_WORDS,
    NamingRule,
    SegmentProfile,
    population_profile,
    profiles,
)
from stream.scaling import MODEL_FEATURES, OnlineScaler, to_human, to_vector

Human = dict[str, float | None]

#: The typical customer every rule below is judged against (baskets of 80 / 2 = 40).
TYPICAL: Human = {
    "events_30d": 20.0,
    "frequency": 2.0,
    "monetary": 80.0,
    "days_without_purchase": 10.0,
    "days_since_last_event": 2.0,
    "conversion_rate_365d": 0.1,
    "category_diversity_30d": 3.0,
    "tenure_days": 120.0,
}
# One profile per rule, each meeting its rule and none before it (the comments say why).
# A basket (average order value) is not in the model: profiles carry monetary / frequency.
# Tenure 3 days: under a week and under half the typical 120.
NEW: Human = {
    **TYPICAL,
    "tenure_days": 3.0,
    "days_without_purchase": 2.0,
    "events_30d": 6.0,
    "frequency": 1.0,
}
# No purchase for 120 days, 2 events in 30 days (under a quarter of the typical 20).
DORMANT: Human = {
    **TYPICAL,
    "events_30d": 2.0,
    "frequency": 1.0,
    "monetary": 30.0,
    "days_without_purchase": 120.0,
    "days_since_last_event": 40.0,
    "tenure_days": 300.0,
}
# Bought, last 45 days ago (over three weeks and over twice the typical 10, taken as 14),
# still active.
AT_RISK: Human = {
    **TYPICAL,
    "events_30d": 12.0,
    "frequency": 1.0,
    "days_without_purchase": 45.0,
}
# Never bought (days without a purchase: their tenure), browses three times as much as
# the typical customer.
WINDOW_SHOPPER: Human = {
    **TYPICAL,
    "events_30d": 60.0,
    "frequency": 0.0,
    "monetary": 0.0,
    "days_without_purchase": 120.0,
    "conversion_rate_365d": 0.0,
    "category_diversity_30d": 8.0,
}
# Recent, 4x the orders, 25x the spend, baskets of 2000 / 8 = 250, 6x the typical.
HIGH_VALUE: Human = {
    **TYPICAL,
    "events_30d": 60.0,
    "frequency": 8.0,
    "monetary": 2000.0,
    "days_without_purchase": 2.0,
}
# Recent, 3x the orders, but baskets near the typical (270 / 6 = 45): not high value, and
# not small enough for a bargain hunter either.
LOYAL: Human = {
    **TYPICAL,
    "frequency": 6.0,
    "monetary": 270.0,
    "days_without_purchase": 5.0,
}
# Orders a bit more often than typical, in small baskets (45 / 3 = 15), across more
# categories than the typical customer.
BARGAIN_HUNTER: Human = {
    **TYPICAL,
    "frequency": 3.0,
    "monetary": 45.0,
    "category_diversity_30d": 5.0,
}
# Bought once, five days ago.
POTENTIAL: Human = {
    **TYPICAL,
    "frequency": 1.0,
    "monetary": 40.0,
    "days_without_purchase": 5.0,
}
# One small order 18 days ago, little activity: nothing else fits (not recent, as 18 is
# over 1.25 times the typical 10; not at risk, as 18 is under three weeks).
LOW_VALUE: Human = {
    **TYPICAL,
    "events_30d": 6.0,
    "frequency": 1.0,
    "monetary": 15.0,
    "days_without_purchase": 18.0,
    "days_since_last_event": 10.0,
}

BY_RULE: dict[str, Human] = {
    "new": NEW,
    "dormant": DORMANT,
    "at_risk": AT_RISK,
    "window_shopper": WINDOW_SHOPPER,
    "high_value": HIGH_VALUE,
    "loyal": LOYAL,
    "bargain_hunter": BARGAIN_HUNTER,
    "potential": POTENTIAL,
    "low_value": LOW_VALUE,
}


def scaler_around(human: Human, spread: float = 0.3, seed: int = 0) -> OnlineScaler:
    """A scaler that has seen users spread around ``human``."""
    rng = np.random.default_rng(seed)
    s = OnlineScaler.empty(len(MODEL_FEATURES))
    base = to_vector(human)
    for _ in range(200):
        s.learn(base + rng.normal(scale=spread, size=base.shape))
    return s


SCALER = scaler_around(TYPICAL)
POPULATION = to_vector(TYPICAL).tolist()


def centres_of(*humans: Human, scaler: OnlineScaler = SCALER) -> np.ndarray:
    return scaler.transform(np.stack([to_vector(h) for h in humans]))


def names(*humans: Human, population: list[float] | None = POPULATION) -> list[str]:
    return [p.name for p in profiles(centres_of(*humans), SCALER, population=population)]


def rule(name: str) -> NamingRule:
    return next(r for r in DEFAULT_RULES if r.name == name)


def in_human_units(vector: np.ndarray) -> dict[str, float]:
    """A model vector as the rules read it: in human units, with the basket it implies
    (monetary / frequency; 0 under half an order)."""
    h = to_human(vector)
    h["avg_order_value"] = h["monetary"] / h["frequency"] if h["frequency"] >= 0.5 else 0.0
    return h


def profile_of(human: Human) -> dict[str, float]:
    return in_human_units(to_vector(human))


TYPICAL_PROFILE = in_human_units(np.array(POPULATION))


def test_default_rules_order() -> None:
    assert [r.name for r in DEFAULT_RULES] == [
        "new",
        "dormant",
        "at_risk",
        "window_shopper",
        "high_value",
        "bargain_hunter",
        "loyal",
        "potential",
        "low_value",
    ]
    assert all(r.description.endswith(".") for r in DEFAULT_RULES)


@pytest.mark.parametrize("name", list(BY_RULE))
def test_each_rule_names_a_profile_that_meets_it(name: str) -> None:
    human = BY_RULE[name]
    assert names(human) == [name]
    # The profile meets its rule and none of those before it.
    p = profile_of(human)
    first = next(r.name for r in DEFAULT_RULES if r.applies(p, TYPICAL_PROFILE))
    assert first == name


def test_the_typical_customer_is_a_regular_buyer_not_a_special_segment() -> None:
    # Buys as often as typical, recently: only "potential" (bought recently) and the
    # catch-all fit; the rules for the exceptional do not.
    assert names(TYPICAL) == ["potential"]


@pytest.mark.parametrize(
    ("human", "also", "name"),
    [
        # A newcomer who browses like a window shopper is new first.
        (
            {**WINDOW_SHOPPER, "tenure_days": 2.0, "days_without_purchase": 2.0},
            "window_shopper",
            "new",
        ),
        # A quiet lapsed customer is at risk too, but dormant comes first.
        (DORMANT, "at_risk", "dormant"),
        # A high-value customer is loyal too.
        (HIGH_VALUE, "loyal", "high_value"),
        # A frequent buyer of small baskets (90 / 6 = 15) across the typical number of
        # categories is loyal too, but what sets them apart is the bargain hunting.
        ({**LOYAL, "monetary": 90.0}, "loyal", "bargain_hunter"),
        # A bargain hunter who bought recently also meets potential.
        ({**BARGAIN_HUNTER, "days_without_purchase": 3.0}, "potential", "bargain_hunter"),
    ],
)
def test_the_first_rule_that_applies_wins(human: Human, also: str, name: str) -> None:
    assert rule(also).applies(profile_of(human), TYPICAL_PROFILE)
    assert names(human) == [name]


def test_rules_compare_with_the_typical_customer() -> None:
    # At risk needs the last purchase at least half again as long ago as the typical
    # buyer's: AT_RISK is 45 days from one.
    assert names({**AT_RISK, "days_without_purchase": 45.0}) == ["at_risk"]
    typical = {**TYPICAL, "days_without_purchase": 29.0}
    assert names(AT_RISK, population=to_vector(typical).tolist()) == ["at_risk"]  # 45 > 1.5 x 29
    typical = {**TYPICAL, "days_without_purchase": 31.0}
    assert names(AT_RISK, population=to_vector(typical).tolist()) != ["at_risk"]
    # A window shopper browses at least as much as the typical customer.
    assert names({**WINDOW_SHOPPER, "events_30d": 10.0}) != ["window_shopper"]
    # High value needs many orders, not one big one (a basket of 2000).
    one_big = {**HIGH_VALUE, "frequency": 1.0}
    assert profile_of(one_big)["avg_order_value"] == pytest.approx(2000.0, rel=1e-3)
    assert names(one_big) != ["high_value"]
    # High value needs big baskets: many small orders (360 / 8 = 45, though 4.5x the
    # typical spend) make a loyal customer.
    many_small = {**HIGH_VALUE, "monetary": 360.0}
    assert profile_of(many_small)["avg_order_value"] == pytest.approx(45.0, rel=1e-3)
    assert names(many_small) == ["loyal"]
    # Loyal needs recent orders.
    assert names({**LOYAL, "days_without_purchase": 20.0}) != ["loyal"]
    # A bargain hunter browses at least as many categories as the typical customer
    # (abandoned carts no longer count).
    assert names({**BARGAIN_HUNTER, "category_diversity_30d": 1.0}) != ["bargain_hunter"]


def test_the_population_argument_sets_the_typical_customer() -> None:
    # The scaler's mean is a big spender here; the population given is an ordinary one.
    rich = {**TYPICAL, "frequency": 10.0, "monetary": 5000.0}  # baskets of 500
    scaler = scaler_around(rich)
    centres = centres_of(HIGH_VALUE, scaler=scaler)
    (against_population,) = profiles(centres, scaler, population=POPULATION)
    (against_mean,) = profiles(centres, scaler)
    assert against_population.name == "high_value"
    # Against the scaler's mean (no population kept), the same customer is only average.
    assert against_mean.name != "high_value"
    assert population_profile(scaler, None) == in_human_units(scaler.mean)
    assert population_profile(scaler, POPULATION) == TYPICAL_PROFILE
    assert TYPICAL_PROFILE["avg_order_value"] == pytest.approx(40.0, rel=1e-3)


def test_without_a_population_the_scaler_mean_is_the_typical_customer() -> None:
    # SCALER was learned around TYPICAL, so its mean stands in for POPULATION.
    for name, human in BY_RULE.items():
        assert names(human, population=None) == [name]


def test_profile_carries_the_centroid_in_human_units() -> None:
    (p,) = profiles(centres_of(HIGH_VALUE), SCALER, ids=[7], population=POPULATION)
    assert isinstance(p, SegmentProfile)
    assert p.segment == 7
    assert p.description == rule("high_value").description
    # The model's features, and the basket they imply.
    assert set(p.centroid) == {*MODEL_FEATURES, "avg_order_value"}
    for k, v in HIGH_VALUE.items():
        assert p.centroid[k] == pytest.approx(v, abs=1e-3)
    assert p.centroid["avg_order_value"] == pytest.approx(2000.0 / 8.0, abs=1e-3)
    assert p.centroid["avg_order_value"] == p.centroid["monetary"] / p.centroid["frequency"]


def test_never_bought_shows_as_their_tenure_and_no_basket() -> None:
    (p,) = profiles(centres_of(WINDOW_SHOPPER), SCALER, population=POPULATION)
    # Days without a purchase run from the first event, not from a one-year cap.
    assert p.centroid["days_without_purchase"] == pytest.approx(120.0, abs=1e-3)
    assert p.centroid["days_without_purchase"] == pytest.approx(p.centroid["tenure_days"])
    assert p.centroid["frequency"] == pytest.approx(0.0, abs=1e-3)
    assert p.centroid["avg_order_value"] == 0.0
    # Under half an order on average, no basket either (no division by a tiny count).
    (half,) = profiles(
        centres_of({**WINDOW_SHOPPER, "frequency": 0.4, "monetary": 30.0}),
        SCALER,
        population=POPULATION,
    )
    assert half.centroid["avg_order_value"] == 0.0


def test_segments_keep_the_order_and_ids_of_their_centres() -> None:
    centres = centres_of(LOYAL, HIGH_VALUE, DORMANT)
    got = profiles(centres, SCALER, ids=[4, 9, 2], population=POPULATION)
    assert [(p.segment, p.name) for p in got] == [(4, "loyal"), (9, "high_value"), (2, "dormant")]
    assert [p.segment for p in profiles(centres, SCALER, population=POPULATION)] == [0, 1, 2]


def test_two_segments_under_one_rule_get_qualifiers_not_numbers() -> None:
    browsers = [{**WINDOW_SHOPPER, "events_30d": e} for e in (90.0, 30.0)]
    assert names(*browsers) == [
        "window_shopper_more_activity",
        "window_shopper_less_activity",
    ]
    assert FEATURE_WORDS["events_30d"] == "activity"


def test_the_qualifier_is_the_feature_that_sets_them_apart_most() -> None:
    # Same activity, very different variety of categories.
    browsers = [{**WINDOW_SHOPPER, "category_diversity_30d": d} for d in (1.0, 12.0)]
    assert names(*browsers) == [
        "window_shopper_less_variety",
        "window_shopper_more_variety",
    ]
    # Two loyal segments apart by spend (ordering alike), both baskets (330 / 6 = 55 and
    # 264 / 6 = 44) above the typical one (a small one would make a bargain hunter) and
    # under 1.5x it (a big one would make a high-value customer).
    loyal = [{**LOYAL, "monetary": v} for v in (330.0, 264.0)]
    assert names(*loyal) == ["loyal_more_spend", "loyal_less_spend"]
    # Every model feature has a word; the basket is no longer one of them.
    assert set(FEATURE_WORDS) == set(MODEL_FEATURES)
    assert FEATURE_WORDS["days_without_purchase"] == "lapsed"
    assert FEATURE_WORDS["conversion_rate_365d"] == "conversion"


def test_three_to_five_under_one_rule_are_ranked() -> None:
    three = [{**WINDOW_SHOPPER, "events_30d": e} for e in (60.0, 25.0, 200.0)]
    assert names(*three) == [
        "window_shopper_mid_activity",
        "window_shopper_less_activity",
        "window_shopper_more_activity",
    ]
    five = [{**WINDOW_SHOPPER, "events_30d": e} for e in (25.0, 50.0, 100.0, 200.0, 400.0)]
    assert [n.removeprefix("window_shopper_") for n in names(*five)] == [
        "least_activity",
        "less_activity",
        "mid_activity",
        "more_activity",
        "most_activity",
    ]


def test_only_duplicated_names_are_qualified() -> None:
    got = names(HIGH_VALUE, WINDOW_SHOPPER, DORMANT, {**WINDOW_SHOPPER, "events_30d": 25.0})
    assert got == [
        "high_value",
        "window_shopper_more_activity",
        "dormant",
        "window_shopper_less_activity",
    ]


def test_names_are_unique_and_never_differ_by_a_number_alone() -> None:
    humans = [
        HIGH_VALUE,
        WINDOW_SHOPPER,
        {**HIGH_VALUE, "monetary": 4800.0},  # baskets of 600
        LOYAL,
        {**WINDOW_SHOPPER, "events_30d": 25.0},
        DORMANT,
        {**DORMANT, "tenure_days": 40.0},
    ]
    got = names(*humans)
    assert len(set(got)) == len(got)
    assert not [n for n in got if re.search(r"\d", n)]


def test_six_segments_under_one_rule_get_six_names() -> None:
    # Past five under one name, the second feature splits them further. Here activity
    # spreads most; the two least active both browse many categories.
    six = [
        {**WINDOW_SHOPPER, "events_30d": e, "category_diversity_30d": d}
        for e, d in (
            (30.0, 8.0),
            (35.0, 9.0),
            (200.0, 1.0),
            (400.0, 2.0),
            (800.0, 3.0),
            (1600.0, 4.0),
        )
    ]
    got = names(*six)
    assert all(n.startswith("window_shopper_") for n in got)
    # SOURCE BUG (stream/naming.py, _qualifiers): for n > 5 the rank words repeat
    # ("least" for ranks 0 and 1 of six) and the second feature's more/less split does not
    # always tell those apart, so two segments get the same name.
    assert len(set(got)) == len(got), f"duplicate segment names: {got}"


def test_custom_rules() -> None:
    rules = (
        NamingRule("big", "Spends a lot.", lambda p, pop: p["monetary"] > 10 * pop["monetary"]),
        NamingRule("other", "Everyone else.", lambda p, pop: True),
    )
    centres = centres_of(HIGH_VALUE, TYPICAL, {**HIGH_VALUE, "monetary": 1500.0})
    got = profiles(centres, SCALER, rules=rules, population=POPULATION)
    assert [p.name for p in got] == ["big_more_spend", "other", "big_less_spend"]
    assert [p.description for p in got] == ["Spends a lot.", "Everyone else.", "Spends a lot."]


def test_recency_is_not_recent_against_a_population_that_never_bought() -> None:
    # In most shops the typical visitor never bought (days without a purchase: their
    # tenure, 120 days here). A customer whose only order was 200 days ago is not recent
    # by any reading, and so neither "high_value" ("recent, frequent, big spenders"),
    # "loyal" nor "potential" ("bought recently").
    browser = {
        **TYPICAL,
        "events_30d": 5.0,
        "frequency": 0.0,
        "monetary": 0.0,
        "days_without_purchase": 120.0,
        "days_since_last_event": 20.0,
        "conversion_rate_365d": 0.0,
    }
    lapsed = {
        **TYPICAL,
        "events_30d": 10.0,
        "frequency": 1.0,
        "monetary": 50.0,
        "days_without_purchase": 200.0,
        "days_since_last_event": 3.0,
        "tenure_days": 300.0,
    }
    (name,) = names(lapsed, population=to_vector(browser).tolist())
    # SOURCE BUG (stream/naming.py, _recent and the high_value/loyal/potential rules):
    # "recent" is max(1.25 x the typical recency, 14 days), which is 456 days when the
    # typical customer never bought, so a single order 200 days ago counts as recent and
    # (one order being "twice" the typical zero) the customer is named high_value.
    assert name not in ("high_value", "loyal", "potential"), name


def test_without_categories_nobody_is_a_bargain_hunter() -> None:
    # A purchase log: no event carries a category, so every diversity is 0.
    no_categories = {"category_diversity_30d": 0.0}
    typical = {**TYPICAL, **no_categories}
    best = {**BARGAIN_HUNTER, **no_categories}
    got = names(best, population=to_vector(typical).tolist())
    assert got != ["bargain_hunter"]
    assert names(BARGAIN_HUNTER) == ["bargain_hunter"]
