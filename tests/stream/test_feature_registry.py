"""The feature registry: one list of features that the model, messages and hash agree on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stream.events import EVENT_TYPES, Event
from stream.feature_registry import (
    COUNT_FEATURES,
    DAY_MS,
    DAYS_CAP,
    FEATURE_NAMES,
    FEATURES,
    FEATURES_BY_NAME,
    HOUR_MS,
    LONGEST_WINDOW_MS,
    MESSAGE_FEATURES,
    MINUTE_MS,
    MODEL_FEATURES,
    PERIOD_MS,
    RFM_HORIZONS,
    TYPE_NAMES,
    WEEK_MS,
    WINDOW_NAMES,
    WINDOWS,
)
from stream.features import apply_events, compute_features, full_features, stored_features
from stream.scaling import LOG_FEATURES, to_vector

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "segment_change.schema.json"
T = 1_700_000_000_000


def some_features() -> dict[str, float | None]:
    evs = [
        Event("a", "u", "view", T - 40 * DAY_MS, "c", 0, 1, category="x"),
        Event("b", "u", "add_to_cart", T - HOUR_MS, "c", 0, 2),
        Event("c", "u", "purchase", T, "p", 0, 1, amount=25.0),
    ]
    return compute_features(apply_events(None, evs).state)


def test_names_are_unique_and_indexed() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES) == len(FEATURES)
    assert {f.name: f for f in FEATURES} == FEATURES_BY_NAME
    assert tuple(f.name for f in FEATURES) == FEATURE_NAMES


def test_compute_features_returns_every_feature_in_registry_order() -> None:
    assert tuple(some_features()) == FEATURE_NAMES


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
    assert tuple(f.name for f in FEATURES if f.model) == MODEL_FEATURES
    assert set(MODEL_FEATURES) <= set(FEATURE_NAMES)
    # Still computed (hash and messages), but no longer dimensions of the model.
    for name in ("avg_order_value", "days_since_last_purchase", "conversion_rate_30d"):
        assert name in FEATURE_NAMES and name in MESSAGE_FEATURES and name not in MODEL_FEATURES
    assert "cart_abandonment_30d" in FEATURE_NAMES
    assert "cart_abandonment_30d" not in MODEL_FEATURES + MESSAGE_FEATURES


def test_message_features_are_computed_and_meet_the_schema() -> None:
    f = some_features()
    assert MESSAGE_FEATURES[:3] == ("events_30d", "purchases_30d", "spend_30d")
    assert len(set(MESSAGE_FEATURES)) == len(MESSAGE_FEATURES)
    assert set(MESSAGE_FEATURES) <= set(f)
    assert set(MESSAGE_FEATURES[3:]) == {f.name for f in FEATURES if f.message}
    schema = json.loads(SCHEMA.read_text())
    assert set(schema["properties"]["features"]["required"]) <= set(MESSAGE_FEATURES)
    # What a message carries of the RFM view: recency, frequency and monetary.
    assert {"days_since_last_purchase", "frequency", "monetary"} <= set(MESSAGE_FEATURES)


def test_days_features_are_capped_at_a_year() -> None:
    assert DAYS_CAP == 365.0
    capped = {f.name: f.cap for f in FEATURES if f.cap is not None}
    assert capped == {
        "days_since_last_purchase": DAYS_CAP,
        "days_without_purchase": DAYS_CAP,
        "days_since_last_event": DAYS_CAP,
        "tenure_days": DAYS_CAP,
        "active_days": DAYS_CAP,
    }
    assert all(FEATURES_BY_NAME[n].unit == "days" for n in capped)


def test_missing_values() -> None:
    # Never bought (or nothing seen) sits a year away; anything else missing is zero.
    missing = {f.name: f.missing for f in FEATURES if f.missing}
    assert missing == {"days_since_last_purchase": DAYS_CAP, "days_since_last_event": DAYS_CAP}
    quiet = MODEL_FEATURES.index("days_since_last_event")
    v = to_vector({"days_since_last_event": None})
    assert v[quiet] == to_vector({"days_since_last_event": DAYS_CAP})[quiet]
    # The model's recency has no missing value: it is never null, as who never bought
    # counts the days since their first event.
    assert FEATURES_BY_NAME["days_without_purchase"].missing == 0.0
    never = compute_features(apply_events(None, [Event("a", "u", "view", T, "c", 0, 1)]).state)
    assert never["days_since_last_purchase"] is None
    assert never["days_without_purchase"] is not None


def test_only_rates_are_left_uncompressed() -> None:
    plain = {f.name for f in FEATURES if not f.log}
    assert plain == {
        "conversion_rate_30d",
        "conversion_rate_365d",
        "cart_rate_365d",
        "cart_abandonment_30d",
    }
    assert all(FEATURES_BY_NAME[n].unit == "ratio" for n in plain)
    assert set(MODEL_FEATURES) - LOG_FEATURES == plain & set(MODEL_FEATURES)
    assert plain & set(MODEL_FEATURES) == {"conversion_rate_365d", "cart_rate_365d"}


def test_resolutions_are_positive_and_finer_for_rates() -> None:
    assert all(f.resolution > 0 for f in FEATURES)
    for rate in ("conversion_rate_30d", "conversion_rate_365d"):
        assert FEATURES_BY_NAME[rate].resolution < FEATURES_BY_NAME["events_30d"].resolution


def test_units_and_descriptions() -> None:
    units = {f.unit for f in FEATURES}
    assert units == {"events", "orders", "currency", "days", "ratio", "categories"}
    assert all(f.description and "\n" not in f.description for f in FEATURES)
    assert {f.name for f in FEATURES if f.unit == "orders"} >= {
        "purchases_30d",
        "purchases_lifetime",
        "frequency",
    }


def test_count_features() -> None:
    assert TYPE_NAMES == (
        "views",
        "clicks",
        "add_to_cart",
        "remove_from_cart",
        "purchases",
        "searches",
    )
    assert len(TYPE_NAMES) == len(EVENT_TYPES)
    expected = tuple(
        name for w in WINDOW_NAMES for name in (*(f"{t}_{w}" for t in TYPE_NAMES), f"events_{w}")
    )
    assert expected == COUNT_FEATURES
    assert len(COUNT_FEATURES) == 6 * 7
    assert FEATURE_NAMES[: len(COUNT_FEATURES)] == COUNT_FEATURES
    f = some_features()
    assert all(float(f[n]).is_integer() for n in COUNT_FEATURES)  # type: ignore[arg-type]
    # In the hash, counts go by type in window order; other zeros are left out, nulls and
    # other values never; reading puts them back.
    stored = stored_features(f)
    others = {n for n in FEATURE_NAMES if n not in COUNT_FEATURES and (f[n] or f[n] is None)}
    assert set(stored) == {"counts", *others}
    assert any(f[n] == 0 and n not in COUNT_FEATURES for n in FEATURE_NAMES)  # some left out
    counted = {f"{t}_{w}" for t, v in stored["counts"].items() for w in WINDOW_NAMES}
    assert {n for n in COUNT_FEATURES if f[n]} <= counted <= set(COUNT_FEATURES)
    assert full_features(stored) == f  # type: ignore[arg-type]
    # Only the 30-day activity count is a dimension of the model.
    assert set(COUNT_FEATURES) & set(MODEL_FEATURES) == {"events_30d"}


def test_windows_and_their_reach() -> None:
    assert WINDOW_NAMES == ("1h", "24h", "7d", "30d", "90d", "365d")
    reach = {w.name: w.grain_ms * w.span for w in WINDOWS}
    assert reach == {
        "1h": 60 * MINUTE_MS,
        "24h": 24 * HOUR_MS,
        "7d": 7 * DAY_MS,
        "30d": 30 * DAY_MS,
        "90d": 91 * DAY_MS,
        "365d": 364 * DAY_MS,
    }
    assert (WEEK_MS, PERIOD_MS) == (7 * DAY_MS, 28 * DAY_MS)
    assert LONGEST_WINDOW_MS == max(reach.values()) == 364 * DAY_MS


@pytest.mark.parametrize("horizon", RFM_HORIZONS)
def test_rfm_horizons_are_windows_or_lifetime(horizon: str) -> None:
    assert horizon in WINDOW_NAMES or horizon == "lifetime"
    assert f"purchases_{horizon}" in FEATURE_NAMES
    assert f"spend_{horizon}" in FEATURE_NAMES
