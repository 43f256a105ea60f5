"""The quality scenarios: pure definitions of simulated populations with known segments."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.personas import DAY_MS, DEFAULT_SHARES, PERSONAS
from loadtest.scenarios import SCENARIOS, Scenario


def test_the_scenarios_and_their_true_k() -> None:
    assert list(SCENARIOS) == ["three", "four", "default", "six"]
    assert {name: s.true_k for name, s in SCENARIOS.items()} == {
        "three": 3,
        "four": 4,
        "default": 5,
        "six": 6,
    }
    for name, s in SCENARIOS.items():
        assert s.name == name
        assert set(s.personas) == set(s.shares) <= set(PERSONAS)
        assert list(s.personas) == sorted(s.personas)


def test_default_is_the_simulators_default_mix() -> None:
    default = SCENARIOS["default"]
    assert default.shares == {name: share for name, share in DEFAULT_SHARES.items() if share > 0}
    assert default.days == 30.0


def test_six_has_the_lifecycle_personas_over_a_quarter() -> None:
    six = SCENARIOS["six"]
    assert {"dormant_customer", "reactivated_customer"} <= set(six.shares)
    # Long enough that a dormant customer's silence and a reactivated one's gap show.
    assert six.days >= 60
    assert six.span_ms == round(six.days * DAY_MS)


def test_scenarios_are_small_enough_for_a_quick_run() -> None:
    for s in SCENARIOS.values():
        assert 1000 <= s.n_users <= 3000
        assert s.n_events <= 600_000
        # Enough events per user per day for personas to show in a month of features.
        assert s.n_events / s.n_users / s.days >= 2.0


def test_scenarios_are_frozen_and_hashable() -> None:
    s = SCENARIOS["three"]
    with pytest.raises(AttributeError):
        s.days = 1.0  # type: ignore[misc]
    assert hash(s) == hash(Scenario(s.name, dict(s.shares), s.days, s.n_users, s.n_events))


GOOD: dict[str, Any] = {
    "name": "two",
    "shares": {"window_shopper": 1.0, "loyal_high_spender": 2.0},
    "days": 30.0,
    "n_users": 100,
    "n_events": 1000,
}


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"name": ""}, "name"),
        ({"shares": {"window_shopper": 1.0}}, "shares"),
        ({"shares": {"window_shopper": 1.0, "astronaut": 1.0}}, "shares"),
        ({"shares": {"window_shopper": 1.0, "new_user": 0.0}}, "shares"),
        ({"shares": {"window_shopper": 1.0, "new_user": float("nan")}}, "shares"),
        ({"days": 0.0}, "days"),
        ({"days": float("inf")}, "days"),
        ({"n_users": 19}, "n_users"),
        ({"n_users": 100.0}, "n_users"),
        ({"n_events": 99}, "n_events"),
        ({"n_events": True}, "n_events"),
    ],
)
def test_bad_arguments_name_themselves(change: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        Scenario(**{**GOOD, **change})


def test_a_good_scenario() -> None:
    s = Scenario(**GOOD)
    assert s.true_k == 2
    assert s.personas == ("loyal_high_spender", "window_shopper")
