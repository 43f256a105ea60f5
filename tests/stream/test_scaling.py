"""Online scaling: Welford statistics against numpy, and the human <-> model-space maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream.scaling import (
    DAYS_CAP,
    LOG_FEATURES,
    MODEL_FEATURES,
    OnlineScaler,
    check_model_features,
    to_human,
    to_vector,
)

HUMAN: dict[str, float | None] = {
    "events_30d": 41.0,
    "frequency": 6.0,
    "monetary": 912.4,
    "days_without_purchase": 2.5,
    "days_since_last_event": 0.75,
    "conversion_rate_365d": 0.4,
    "cart_rate_365d": 0.25,
    "price_level": 64.5,
    "category_diversity_30d": 7.0,
    "tenure_days": 33.125,
    "active_days": 30.5,
}
RECENCY = MODEL_FEATURES.index("days_without_purchase")
QUIET = MODEL_FEATURES.index("days_since_last_event")
TENURE = MODEL_FEATURES.index("tenure_days")


def test_model_features() -> None:
    assert MODEL_FEATURES == (
        "events_30d",
        "frequency",
        "monetary",
        "days_without_purchase",
        "days_since_last_event",
        "conversion_rate_365d",
        "cart_rate_365d",
        "price_level",
        "category_diversity_30d",
        "tenure_days",
        "active_days",
    )
    assert set(MODEL_FEATURES) - LOG_FEATURES == {"conversion_rate_365d", "cart_rate_365d"}
    assert set(MODEL_FEATURES) >= LOG_FEATURES


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scaler_matches_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.normal(loc=[0.0, 100.0, -5.0], scale=[1.0, 30.0, 0.01], size=(500, 3))
    s = OnlineScaler.empty(3)
    for row in data:
        s.learn(row)
    assert s.count == 500
    np.testing.assert_allclose(s.mean, data.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s.std, data.std(axis=0), rtol=1e-10)
    z = s.transform(data)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-9)
    np.testing.assert_allclose(s.inverse(z), data, rtol=1e-12, atol=1e-9)


def test_scaler_before_two_observations_uses_unit_std() -> None:
    s = OnlineScaler.empty(2)
    np.testing.assert_array_equal(s.std, [1.0, 1.0])
    s.learn(np.array([3.0, -2.0]))
    np.testing.assert_array_equal(s.mean, [3.0, -2.0])
    np.testing.assert_array_equal(s.std, [1.0, 1.0])
    np.testing.assert_array_equal(s.transform(np.array([4.0, 0.0])), [1.0, 2.0])


def test_constant_dimension_is_floored() -> None:
    s = OnlineScaler.empty(2)
    for x in ([1.0, 5.0], [3.0, 5.0], [5.0, 5.0]):
        s.learn(np.array(x))
    assert s.std[1] == pytest.approx(1e-3)  # sqrt of the 1e-6 variance floor
    assert s.std[0] == pytest.approx(math.sqrt(8 / 3))
    assert np.all(np.isfinite(s.transform(np.array([0.0, 6.0]))))
    assert s.transform(np.array([0.0, 5.001]))[1] == pytest.approx(1.0)


def test_scaler_round_trips_as_plain_values() -> None:
    s = OnlineScaler.empty(3)
    for x in np.random.default_rng(5).normal(size=(10, 3)):
        s.learn(x)
    d = s.to_dict()
    assert d["count"] == 10 and isinstance(d["mean"], list)
    back = OnlineScaler.from_dict(d)
    assert back.count == 10
    np.testing.assert_array_equal(back.mean, s.mean)
    np.testing.assert_array_equal(back.m2, s.m2)
    np.testing.assert_array_equal(back.std, s.std)


def test_to_vector_values() -> None:
    v = to_vector(HUMAN)
    assert v.shape == (len(MODEL_FEATURES),)
    expected = [
        math.log1p(41.0),
        math.log1p(6.0),
        math.log1p(912.4),
        math.log1p(2.5),
        math.log1p(0.75),
        0.4,
        0.25,
        math.log1p(64.5),
        math.log1p(7.0),
        math.log1p(33.125),
        math.log1p(30.5),
    ]
    np.testing.assert_allclose(v, expected, rtol=1e-15)


def test_to_vector_ignores_features_the_model_does_not_use() -> None:
    extra = {**HUMAN, "spend_30d": 5.0, "views_1h": 3.0, "purchases_lifetime": 99.0}
    # Computed features that are no longer dimensions of the model are ignored too.
    extra |= {
        "avg_order_value": 152.07,
        "days_since_last_purchase": 9.0,
        "conversion_rate_30d": 0.9,
        "cart_abandonment_30d": 0.25,
    }
    np.testing.assert_array_equal(to_vector(extra), to_vector(HUMAN))


def test_to_human_inverts_to_vector() -> None:
    expected = {k: round(v, 3) for k, v in HUMAN.items() if v is not None}
    assert to_human(to_vector(HUMAN)) == expected


def test_never_bought_is_as_far_from_a_purchase_as_their_tenure_not_a_year() -> None:
    # A customer who never bought has no days since a purchase (None), and the model
    # does not see that feature: its recency is the days without a purchase, which for
    # them is their tenure (stream.features), not the one-year cap.
    never = to_vector(
        {**HUMAN, "days_since_last_purchase": None, "days_without_purchase": HUMAN["tenure_days"]}
    )
    assert DAYS_CAP == 365.0
    assert never[RECENCY] == pytest.approx(math.log1p(33.125))
    assert never[RECENCY] < math.log1p(DAYS_CAP)
    assert to_human(never)["days_without_purchase"] == 33.125
    # A null days since a purchase changes nothing in the vector.
    np.testing.assert_array_equal(
        to_vector({**HUMAN, "days_since_last_purchase": None}), to_vector(HUMAN)
    )
    # Days since the last event still put a user never seen a year away.
    assert to_vector({**HUMAN, "days_since_last_event": None})[QUIET] == pytest.approx(
        math.log1p(365.0)
    )


def test_days_are_capped() -> None:
    v = to_vector(
        {
            **HUMAN,
            "days_without_purchase": 400.0,
            "days_since_last_event": 1000.0,
            "tenure_days": 900.0,
        }
    )
    assert v[RECENCY] == pytest.approx(math.log1p(365.0))
    assert v[QUIET] == pytest.approx(math.log1p(365.0))
    assert v[TENURE] == pytest.approx(math.log1p(365.0))
    # Below the cap, days are kept as they are (a fortnight is not a month).
    assert to_vector({**HUMAN, "tenure_days": 364.0})[TENURE] == pytest.approx(math.log1p(364.0))
    # Only the day features are capped: counts and money are not.
    big = to_vector({**HUMAN, "events_30d": 4000.0, "monetary": 1e6, "frequency": 500.0})
    assert big[0] == pytest.approx(math.log1p(4000.0))
    assert big[1] == pytest.approx(math.log1p(500.0))
    assert big[2] == pytest.approx(math.log1p(1e6))


def test_missing_and_none_features_are_zero() -> None:
    v = to_vector({"tenure_days": None})
    # Missing days since an event: a year away; anything else: zero. Days without a
    # purchase are never null (tenure stands in for who never bought), so they have no
    # missing value of their own.
    assert v[QUIET] == pytest.approx(math.log1p(365.0))
    assert v[RECENCY] == 0.0
    others = [i for i in range(len(MODEL_FEATURES)) if i != QUIET]
    np.testing.assert_array_equal(v[others], 0.0)


def test_to_human_clips_impossible_values() -> None:
    v = np.array([-1.0, -0.5, 0.0, 1.0, 2.0, -0.3, -0.2, -0.1, 0.5, 3.0, 2.5])
    h = to_human(v)
    assert h["events_30d"] == 0.0 and h["frequency"] == 0.0 and h["monetary"] == 0.0
    assert h["conversion_rate_365d"] == 0.0 and h["cart_rate_365d"] == 0.0
    assert h["price_level"] == 0.0
    assert h["days_without_purchase"] == round(math.e - 1, 3)
    assert h["days_since_last_event"] == round(math.expm1(2.0), 3)
    assert h["category_diversity_30d"] == round(math.expm1(0.5), 3)
    assert h["tenure_days"] == round(math.expm1(3.0), 3)
    assert h["active_days"] == round(math.expm1(2.5), 3)
    assert v[0] == -1.0  # the input is not modified
    # A rate is clipped at 1 too.
    above = v.copy()
    above[MODEL_FEATURES.index("conversion_rate_365d")] = 1.7
    assert to_human(above)["conversion_rate_365d"] == 1.0


def test_a_feature_the_model_does_not_use_is_zero_for_everyone() -> None:
    rfm = ("frequency", "monetary", "days_without_purchase")
    full = to_vector({"events_30d": 40.0, "frequency": 3.0, "tenure_days": 30.0})
    narrow = to_vector({"events_30d": 40.0, "frequency": 3.0, "tenure_days": 30.0}, rfm)
    used = [MODEL_FEATURES.index(n) for n in rfm]
    assert narrow[used].tolist() == full[used].tolist()
    assert narrow[[i for i in range(len(MODEL_FEATURES)) if i not in used]].tolist() == [0.0] * 8


@pytest.mark.parametrize(
    ("used", "says"),
    [
        (("frequency", "days_without_purchase"), "must include monetary"),
        (("frequency", "monetary", "days_without_purchase", "spend_30d"), "spend_30d cannot"),
        (("monetary", "frequency", "days_without_purchase"), "in the order"),
        (("frequency", "frequency", "monetary", "days_without_purchase"), "once each"),
    ],
)
def test_model_features_are_checked(used: tuple[str, ...], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_model_features(used)
