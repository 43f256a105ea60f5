"""RFM scores: quintiles of a known population, their orientation, ties and the sketches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream.rfm import RFMScores, RFMSketches, rfm_scores

N = 10_000


def known_population(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Recency days, orders and spend with no large ties, so quintiles hold 20% each."""
    rng = np.random.default_rng(seed)
    recency = np.round(rng.exponential(90.0, N), 3)
    orders = rng.permutation(np.arange(N) % 1000).astype(float)  # 0..999, ten users each
    spend = np.round(rng.lognormal(4.0, 1.2, N), 2)
    return recency, orders, spend


def learned(recency: np.ndarray, orders: np.ndarray, spend: np.ndarray) -> RFMSketches:
    s = RFMSketches()
    for r, f, m in zip(recency.tolist(), orders.tolist(), spend.tolist(), strict=True):
        s.learn(r, f, m)
    return s


def exact_quintiles(values: np.ndarray) -> np.ndarray:
    s = np.sort(values)
    mid = (np.searchsorted(s, values, "left") + np.searchsorted(s, values, "right")) / (2 * len(s))
    return 1 + np.minimum(4, np.floor(mid * 5)).astype(int)


def test_scores_and_code() -> None:
    s = RFMScores(5, 4, 5)
    assert s.code == "545"
    assert RFMScores(r=1, f=1, m=2).code == "112"
    with pytest.raises(AttributeError):
        s.r = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"r": 0, "f": 3, "m": 3}, "r"),
        ({"r": 3, "f": 6, "m": 3}, "f"),
        ({"r": 3, "f": 3, "m": 2.0}, "m"),
    ],
)
def test_scores_out_of_range(kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        RFMScores(**kwargs)


def test_quintiles_of_a_known_population() -> None:
    recency, orders, spend = known_population(0)
    sketches = learned(recency, orders, spend)
    scores = [
        rfm_scores(r, f, m, sketches)
        for r, f, m in zip(recency.tolist(), orders.tolist(), spend.tolist(), strict=True)
    ]
    for digit, values, inverted in (
        ("r", recency, True),
        ("f", orders, False),
        ("m", spend, False),
    ):
        got = np.array([getattr(s, digit) for s in scores])
        shares = np.bincount(got, minlength=6)[1:] / N
        np.testing.assert_allclose(shares, 0.2, atol=0.01)
        # Against exact quintiles, only users on a quintile's edge may differ, by one.
        exact = exact_quintiles(-values if inverted else values)
        assert np.mean(got == exact) >= 0.99
        assert np.abs(got - exact).max() <= 1
        # Orientation: 5 is the most recent, the most frequent, the biggest spender.
        order = np.argsort(-values if inverted else values, kind="stable")
        assert np.all(np.diff(got[order]) >= 0)


def test_most_recent_frequent_and_biggest_spender_is_555() -> None:
    recency, orders, spend = known_population(1)
    sketches = learned(recency, orders, spend)
    assert rfm_scores(0.0, 999.0, 50_000.0, sketches).code == "555"
    assert rfm_scores(3000.0, 0.0, 0.0, sketches).code == "111"
    assert rfm_scores(1.0, 0.0, 0.0, sketches).code == "511"


def test_never_purchased_has_recency_1_and_adds_no_recency() -> None:
    s = RFMSketches()
    for days in (1.0, 2.0, 3.0):
        s.learn(days, 1, 10.0)
    s.learn(None, 0, 0.0)
    assert (s.recency.count, s.frequency.count, s.monetary.count) == (3.0, 4.0, 4.0)
    assert rfm_scores(None, 0, 0.0, s).r == 1


def test_nothing_scores_one_even_when_most_have_nothing() -> None:
    s = RFMSketches()
    for _ in range(1000):
        s.learn(None, 0, 0.0)
    scores = rfm_scores(None, 0, 0.0, s)
    assert (scores.r, scores.f, scores.m) == (1, 1, 1)
    assert rfm_scores(2.0, 1, 5.0, s).code == "355"  # no purchaser yet to compare with


def test_zero_inflated_population_keeps_zeros_low() -> None:
    rng = np.random.default_rng(2)
    buyers = rng.random(N) >= 0.7
    orders = np.where(buyers, rng.geometric(0.4, N), 0).astype(float)
    spend = np.where(buyers, np.round(rng.lognormal(4.0, 1.0, N), 2), 0.0)
    recency = np.where(buyers, np.round(rng.exponential(30.0, N), 3), np.nan)
    s = RFMSketches()
    for r, f, m in zip(recency.tolist(), orders.tolist(), spend.tolist(), strict=True):
        s.learn(None if np.isnan(r) else r, f, m)
    # No orders, no spend: 1, whatever share of the population has nothing.
    nobody = rfm_scores(None, 0, 0.0, s)
    assert nobody.code == "111"
    # Every buyer ranks above all the zeros: 4 or 5.
    for i in np.flatnonzero(buyers)[:500].tolist():
        scores = rfm_scores(recency[i], orders[i], spend[i], s)
        assert scores.f >= 4 and scores.m >= 4


def test_sketches_merge_decay_and_round_trip() -> None:
    recency, orders, spend = known_population(3)
    half = N // 2
    a = learned(recency[:half], orders[:half], spend[:half])
    b = learned(recency[half:], orders[half:], spend[half:])
    whole = learned(recency, orders, spend)
    assert a.merged(b).to_dict() == whole.to_dict()

    d = json.loads(json.dumps(whole.to_dict()))
    back = RFMSketches.from_dict(d)
    assert back.to_dict() == whole.to_dict()
    assert rfm_scores(12.0, 300.0, 80.0, back) == rfm_scores(12.0, 300.0, 80.0, whole)

    whole.decay(0.5)
    for sketch in (whole.recency, whole.frequency, whole.monetary):
        assert sketch.count == pytest.approx(N / 2)


def test_decay_lets_the_population_move_on() -> None:
    # Big spenders of the past fade; today's users are ranked against each other.
    s = RFMSketches()
    for _ in range(1000):
        s.learn(5.0, 10, 5000.0)
    assert rfm_scores(5.0, 1, 50.0, s).m == 1
    s.decay(0.001)
    for i in range(1000):
        s.learn(5.0, 1, float(i % 100))
    assert rfm_scores(5.0, 1, 50.0, s).m == 3
