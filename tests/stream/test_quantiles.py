"""The quantile sketch: ranks and quantiles against exact ones, merging, decay, round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from stream.quantiles import GONE_WEIGHT, QuantileSketch

N = 20_000
#: Largest rank error allowed on the test distributions (measured: at most 0.0024).
RANK_TOLERANCE = 0.005


def exact_midrank(data: np.ndarray, xs: np.ndarray) -> np.ndarray:
    s = np.sort(data)
    return (np.searchsorted(s, xs, "left") + np.searchsorted(s, xs, "right")) / (2 * len(s))


def population(name: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Values shaped like the RFM inputs, and the sketch's ``max_value`` for them."""
    zero = rng.random(N) < 0.7
    if name == "lognormal":
        return rng.lognormal(4.0, 1.5, N), 100_000.0
    if name == "zero-inflated spend":
        return np.where(zero, 0.0, np.round(rng.lognormal(4.0, 1.5, N), 2)), 100_000.0
    if name == "zero-inflated orders":
        return np.where(zero, 0, rng.geometric(0.3, N)).astype(float), 1000.0
    if name == "recency days":
        return np.round(rng.exponential(60.0, N), 3), 3650.0
    if name == "whole recency days":
        return np.floor(rng.exponential(200.0, N)), 3650.0
    raise AssertionError(name)


def sketch_of(values: np.ndarray, max_value: float = 100_000.0, bins: int = 256) -> QuantileSketch:
    s = QuantileSketch(max_value, bins)
    for x in values.tolist():
        s.learn(x)
    return s


def probes(data: np.ndarray) -> np.ndarray:
    return np.unique(np.concatenate([data[:2000], np.quantile(data, np.linspace(0, 1, 101))]))


DISTRIBUTIONS = [
    "lognormal",
    "zero-inflated spend",
    "zero-inflated orders",
    "recency days",
    "whole recency days",
]


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_rank_error_within_bound(name: str) -> None:
    data, max_value = population(name, np.random.default_rng(0))
    s = sketch_of(data, max_value)
    xs = probes(data)
    est = np.array([s.rank(x) for x in xs.tolist()])
    err = np.abs(est - exact_midrank(data, xs))
    assert err.max() <= RANK_TOLERANCE
    # The stated bound: never more than the share of the population in x's bin.
    edges = np.concatenate([[0.0], np.expm1(np.arange(1, s.bins) / s._scale)])
    bin_of = np.where(xs == 0.0, 0, 1 + np.searchsorted(edges[1:], xs, "right"))
    all_bins = np.where(data == 0.0, 0, 1 + np.searchsorted(edges[1:], data, "right"))
    share = np.bincount(all_bins, minlength=s.bins + 1) / len(data)
    assert np.all(err <= share[bin_of] + 1e-12)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_quantile_has_the_asked_rank(name: str) -> None:
    data, max_value = population(name, np.random.default_rng(1))
    s = sketch_of(data, max_value)
    qs = np.linspace(0.0, 1.0, 201)
    values = np.array([s.quantile(q) for q in qs.tolist()])
    assert np.all(np.diff(values) >= 0.0)
    assert values[0] == data.min() and values[-1] == data.max()
    # The share of the population strictly below the value is at most q, and the share at
    # or below it at least q, give or take the tolerance.
    ordered = np.sort(data)
    below = np.searchsorted(ordered, values, "left") / len(data)
    at_or_below = np.searchsorted(ordered, values, "right") / len(data)
    assert np.all(below <= qs + RANK_TOLERANCE)
    assert np.all(at_or_below >= qs - RANK_TOLERANCE)


def test_zeros_rank_as_ties() -> None:
    rng = np.random.default_rng(2)
    data = np.where(rng.random(1000) < 0.7, 0.0, rng.lognormal(3.0, 1.0, 1000))
    s = sketch_of(data)
    zeros = int((data == 0.0).sum())
    assert s.rank(0.0) == pytest.approx(zeros / 2 / 1000, abs=1e-12)
    assert s.quantile(0.5 * zeros / 1000) == 0.0
    # The smallest positive value ranks just above every zero, not among them.
    assert s.rank(float(data[data > 0].min())) >= zeros / 1000


def test_all_zero_population() -> None:
    s = sketch_of(np.zeros(500))
    assert s.count == 500.0
    assert s.rank(0.0) == 0.5
    assert s.rank(0.01) == 1.0
    assert s.quantile(0.0) == s.quantile(0.99) == s.quantile(1.0) == 0.0


def test_whole_numbers_rank_exactly() -> None:
    # Small counts each have a bin of their own, so ties among them are exact.
    rng = np.random.default_rng(3)
    data = rng.poisson(2.0, 5000).astype(float)
    s = sketch_of(data, 1000.0)
    xs = np.arange(0.0, 15.0)
    est = np.array([s.rank(x) for x in xs.tolist()])
    np.testing.assert_allclose(est, exact_midrank(data, xs), atol=1e-12)
    assert [s.quantile(q) for q in (0.0, 0.5, 1.0)] == [
        float(data.min()),
        float(np.quantile(data, 0.5, method="inverted_cdf")),
        float(data.max()),
    ]


def test_empty_sketch() -> None:
    s = QuantileSketch()
    assert s.count == 0.0
    assert s.rank(10.0) == 0.5
    assert s.quantile(0.5) is None
    assert s.to_dict()["index"] == []


def test_values_above_max_value_tie_at_the_top() -> None:
    s = sketch_of(np.array([1.0, 2.0, 500.0, 5000.0]), max_value=100.0)
    assert s.rank(100.0) == s.rank(1e9) == pytest.approx(0.75)
    assert s.quantile(1.0) == 100.0


def test_merge_of_halves_equals_the_whole() -> None:
    data, max_value = population("zero-inflated spend", np.random.default_rng(4))
    a, b = sketch_of(data[: N // 2], max_value), sketch_of(data[N // 2 :], max_value)
    whole = sketch_of(data, max_value)
    merged = a.merged(b)
    # Weights are whole numbers here, so the merge is exact, not merely within the bound.
    assert merged.to_dict() == whole.to_dict()
    xs = probes(data)
    est = np.array([merged.rank(x) for x in xs.tolist()])
    assert np.abs(est - exact_midrank(data, xs)).max() <= RANK_TOLERANCE
    # Merging leaves its inputs alone.
    assert a.count == N // 2 and b.count == N - N // 2


def test_merge_is_associative_and_commutative_with_decay() -> None:
    rng = np.random.default_rng(5)
    parts = [sketch_of(rng.lognormal(m, 1.0, 300)) for m in (1.0, 3.0, 5.0)]
    parts[0].decay(0.3)
    parts[2].decay(0.7)
    a, b, c = parts
    left, right = a.merged(b).merged(c), a.merged(b.merged(c))
    swapped = c.merged(a).merged(b)
    for x in (0.5, 3.0, 20.0, 150.0, 1000.0):
        assert left.rank(x) == pytest.approx(right.rank(x), abs=1e-12)
        assert left.rank(x) == pytest.approx(swapped.rank(x), abs=1e-12)
    assert left.count == pytest.approx(0.3 * 300 + 300 + 0.7 * 300)


def test_merge_needs_the_same_bins() -> None:
    with pytest.raises(ValueError, match="bins"):
        QuantileSketch(1000.0, 256).merged(QuantileSketch(1000.0, 128))
    with pytest.raises(ValueError, match="max_value"):
        QuantileSketch(1000.0).merged(QuantileSketch(100.0))


def test_decay_halves_old_mass() -> None:
    rng = np.random.default_rng(6)
    old, new = rng.uniform(1.0, 10.0, 1000), rng.uniform(100.0, 1000.0, 1000)
    s = sketch_of(old)
    s.decay(0.5)
    assert s.count == pytest.approx(500.0)
    for x in new.tolist():
        s.learn(x)
    # The old third lies wholly below 50, the new two thirds wholly above it.
    assert s.count == pytest.approx(1500.0)
    assert s.rank(50.0) == pytest.approx(1 / 3)
    assert s.quantile(0.5) == pytest.approx(float(np.quantile(new, 0.25)), rel=0.05)
    s.decay(1.0)
    assert s.count == pytest.approx(1500.0)


def test_repeated_decay_forgets_old_bins() -> None:
    s = sketch_of(np.array([5.0, 7000.0]))
    for _ in range(20):
        s.decay(0.5)
    assert GONE_WEIGHT > 0.5**20
    assert s.count == 0.0 and s.to_dict()["index"] == []
    s.learn(6.0)
    d = s.to_dict()
    assert d["lo"] == d["hi"] == [6.0]  # the forgotten range does not linger
    assert s.rank(6.0) == 0.5


def test_round_trip_through_json() -> None:
    data, max_value = population("zero-inflated spend", np.random.default_rng(7))
    s = sketch_of(data, max_value)
    s.decay(0.987)
    d = json.loads(json.dumps(s.to_dict()))
    back = QuantileSketch.from_dict(d)
    assert back.to_dict() == s.to_dict()
    assert (back.max_value, back.bins, back.count) == (s.max_value, s.bins, s.count)
    for x in (0.0, 1.0, 37.5, 1e3, 1e5):
        assert back.rank(x) == s.rank(x)
    for q in (0.0, 0.3, 0.71, 0.9, 1.0):
        assert back.quantile(q) == s.quantile(q)
    # Only bins with weight are stored: a few KB.
    assert len(d["index"]) < s.bins
    assert len(json.dumps(d)) < 10_000


def test_from_dict_refuses_malformed_input() -> None:
    d = QuantileSketch(100.0, 8).to_dict()
    with pytest.raises(ValueError, match="index"):
        QuantileSketch.from_dict({**d, "index": [9], "weight": [1.0], "lo": [1.0], "hi": [1.0]})
    with pytest.raises(ValueError, match="same length"):
        QuantileSketch.from_dict({**d, "index": [1], "weight": [], "lo": [], "hi": []})
    with pytest.raises(ValueError, match="bins"):
        QuantileSketch.from_dict({**d, "bins": 0})


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_value": 0.0}, "max_value"),
        ({"max_value": -5.0}, "max_value"),
        ({"max_value": math.inf}, "max_value"),
        ({"max_value": math.nan}, "max_value"),
        ({"bins": 0}, "bins"),
        ({"bins": 5000}, "bins"),
        ({"bins": 2.5}, "bins"),
    ],
)
def test_invalid_parameters(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        QuantileSketch(**kwargs)  # type: ignore[arg-type]


def test_invalid_values() -> None:
    s = QuantileSketch()
    for bad in (-1.0, math.nan):
        with pytest.raises(ValueError, match=r"^x "):
            s.learn(bad)
        with pytest.raises(ValueError, match=r"^x "):
            s.rank(bad)
    for q in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"^q "):
            s.quantile(q)
    for factor in (0.0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"^factor "):
            s.decay(factor)
    assert s.count == 0.0
