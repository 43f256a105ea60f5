"""Choosing k: k-means++ seeding, Lloyd iterations, the silhouette against scikit-learn, and
the k choice on clearly separated blobs."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, silhouette_score

from stream import selection
from stream.selection import KChoice, choose_k, kmeans_plus_plus, lloyd, silhouette


def blobs(
    rng: np.random.Generator, centres: np.ndarray, n: int, sd: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points around each centre, shuffled, and the index of each point's centre."""
    points = np.concatenate([c + rng.normal(scale=sd, size=(n, centres.shape[1])) for c in centres])
    truth = np.repeat(np.arange(len(centres)), n)
    order = rng.permutation(len(points))
    return points[order], truth[order]


def corners(k: int, dim: int = 3, spread: float = 20.0) -> np.ndarray:
    """``k`` centres far apart: ``spread`` along a different axis direction each."""
    out = np.zeros((k, dim))
    for j in range(k):
        out[j, j % dim] = spread * (1 + j // dim) * (-1) ** (j // dim)
    return out


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


# -- kmeans_plus_plus ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_plus_plus_picks_one_point_per_blob(seed: int) -> None:
    truth = corners(4)
    points, _ = blobs(np.random.default_rng(seed), truth, 30, 0.5)
    seeds = kmeans_plus_plus(points, 4, np.random.default_rng(seed))
    assert seeds.shape == (4, 3)
    for s in seeds:
        assert np.any(np.all(points == s, axis=1))
    nearest = np.argmin(((seeds[:, None, :] - truth[None, :, :]) ** 2).sum(axis=2), axis=1)
    assert sorted(nearest.tolist()) == [0, 1, 2, 3]


def test_kmeans_plus_plus_is_deterministic_for_a_seed() -> None:
    points = np.random.default_rng(3).normal(size=(50, 4))
    a = kmeans_plus_plus(points, 3, np.random.default_rng(11))
    b = kmeans_plus_plus(points, 3, np.random.default_rng(11))
    np.testing.assert_array_equal(a, b)


def test_kmeans_plus_plus_with_fewer_distinct_points_than_k() -> None:
    seeds = kmeans_plus_plus(np.ones((6, 3)), 4, np.random.default_rng(0))
    np.testing.assert_array_equal(seeds, np.ones((4, 3)))


def test_kmeans_plus_plus_picks_every_distinct_point_when_k_equals_their_number() -> None:
    points = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 5.0], [5.0, 5.0]])
    seeds = kmeans_plus_plus(points, 3, np.random.default_rng(2))
    assert sorted(map(tuple, seeds.tolist())) == [(0.0, 0.0), (1.0, 0.0), (5.0, 5.0)]


@pytest.mark.parametrize(
    ("points", "k", "name"),
    [(np.zeros(5), 2, "points"), (np.zeros((0, 2)), 2, "points"), (np.zeros((5, 2)), 0, "k")],
)
def test_kmeans_plus_plus_validation_names_the_argument(
    points: np.ndarray, k: int, name: str
) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        kmeans_plus_plus(points, k, np.random.default_rng(0))


# -- lloyd --------------------------------------------------------------------------------


def test_lloyd_finds_the_blob_means() -> None:
    truth = corners(3)
    points, labels_true = blobs(np.random.default_rng(0), truth, 40, 1.0)
    start = truth + np.array([3.0, -2.0, 1.0])
    centres, labels = lloyd(points, start)
    assert same_partition(labels, labels_true)
    for j in range(3):
        np.testing.assert_allclose(centres[j], points[labels == j].mean(axis=0), atol=1e-12)
        assert np.linalg.norm(centres[j] - truth[j]) < 0.5


def test_lloyd_labels_are_the_nearest_centres() -> None:
    points = np.random.default_rng(1).normal(size=(200, 4))
    start = points[:5].copy()
    centres, labels = lloyd(points, start)
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(labels, np.argmin(d2, axis=1))
    # The start is not modified.
    np.testing.assert_array_equal(start, points[:5])


@pytest.mark.parametrize("seed", range(5))
def test_lloyd_never_returns_an_empty_cluster_from_a_bad_start(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points, _ = blobs(rng, corners(4), 25, 0.5)
    # Every centre far away on the same spot: all but one start empty.
    start = np.full((6, 3), 1000.0)
    centres, labels = lloyd(points, start)
    assert centres.shape == (6, 3)
    assert np.bincount(labels, minlength=6).min() >= 1
    # No two centres coincide.
    assert len(np.unique(centres, axis=0)) == 6


def test_lloyd_with_fewer_distinct_points_than_centres_still_fills_every_cluster() -> None:
    points = np.array([[0.0, 0.0]] * 4 + [[1.0, 1.0]] * 3)
    centres, labels = lloyd(points, np.zeros((5, 2)))
    assert centres.shape == (5, 2)
    assert sorted(np.bincount(labels, minlength=5).tolist())[0] == 1
    np.testing.assert_array_equal(centres[labels], points)


def test_lloyd_with_as_many_centres_as_points() -> None:
    points = np.array([[0.0], [1.0], [2.0], [3.0]])
    centres, labels = lloyd(points, np.zeros((4, 1)))
    assert sorted(centres[:, 0].tolist()) == [0.0, 1.0, 2.0, 3.0]
    assert sorted(labels.tolist()) == [0, 1, 2, 3]


def test_lloyd_stops_after_max_iter() -> None:
    points = np.array([[0.0], [1.0], [10.0], [11.0]])
    centres, _ = lloyd(points, np.array([[0.0], [1.0]]), max_iter=1)
    # One step: {0} and {1, 10, 11}.
    assert centres[:, 0].tolist() == [0.0, 22.0 / 3.0]
    centres, _ = lloyd(points, np.array([[0.0], [1.0]]))
    assert centres[:, 0].tolist() == [0.5, 10.5]


def _lloyd_every_step(
    points: np.ndarray, centres: np.ndarray, max_iter: int = 50, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's iterations taken to the end (no early return when the labels repeat)."""
    k, c = len(centres), np.array(centres, dtype=float)
    norms = (points**2).sum(axis=1)
    for _ in range(max_iter):
        labels, _ = selection._assign(points, c, norms)
        new = (np.eye(k)[labels].T @ points) / np.bincount(labels, minlength=k)[:, None]
        moved = float(np.sqrt(((new - c) ** 2).sum(axis=1)).max())
        c = new
        if moved <= tol:
            break
    return c, selection._assign(points, c, norms)[0]


@pytest.mark.parametrize("seed", range(8))
def test_lloyd_returns_what_every_step_to_the_end_returns_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    points, _ = blobs(rng, corners(5, dim=4, spread=3.0), 60, 1.5)
    if seed % 2:
        points = np.round(points)  # duplicates, so some starts leave clusters empty
    for k in (2, 4, 7):
        start = kmeans_plus_plus(points, k, rng)
        got, want = lloyd(points, start), _lloyd_every_step(points, start)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_kmeans_plus_plus_draws_what_rng_choice_draws() -> None:
    points = np.random.default_rng(3).normal(size=(500, 3))
    for seed in range(20):
        rng = np.random.default_rng(seed)
        got = kmeans_plus_plus(points, 6, np.random.default_rng(seed))
        # The same picks by rng.choice with D² weights.
        picked = [points[rng.integers(len(points))]]
        d2 = ((points - picked[0]) ** 2).sum(axis=1)
        for _ in range(5):
            i = int(rng.choice(len(points), p=d2 / d2.sum()))
            picked.append(points[i])
            d2 = np.minimum(d2, ((points - points[i]) ** 2).sum(axis=1))
        assert np.array_equal(got, np.array(picked))


@pytest.mark.parametrize(
    ("points", "centres", "kwargs", "name"),
    [
        (np.zeros(4), np.zeros((1, 1)), {}, "points"),
        (np.zeros((4, 2)), np.zeros((2, 3)), {}, "centres"),
        (np.zeros((4, 2)), np.zeros(2), {}, "centres"),
        (np.zeros((4, 2)), np.zeros((5, 2)), {}, "centres"),
        (np.zeros((4, 2)), np.zeros((0, 2)), {}, "centres"),
        (np.zeros((4, 2)), np.zeros((2, 2)), {"max_iter": 0}, "max_iter"),
        (np.zeros((4, 2)), np.zeros((2, 2)), {"tol": -1.0}, "tol"),
    ],
)
def test_lloyd_validation_names_the_argument(
    points: np.ndarray, centres: np.ndarray, kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        lloyd(points, centres, **kwargs)


# -- silhouette ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n_labels", [2, 3, 5, 9])
def test_silhouette_equals_sklearn_on_random_labels(seed: int, n_labels: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(120, 5))
    labels = rng.integers(n_labels, size=120)
    assert silhouette(points, labels) == pytest.approx(silhouette_score(points, labels), abs=1e-9)


def test_silhouette_equals_sklearn_on_blobs_and_kmeans_labels() -> None:
    points, truth = blobs(np.random.default_rng(5), corners(4), 30, 2.0)
    _, fitted = lloyd(points, points[:4].copy())
    for labels in (truth, fitted):
        assert silhouette(points, labels) == pytest.approx(
            silhouette_score(points, labels), abs=1e-9
        )
    assert silhouette(points, truth) > 0.7


def test_silhouette_with_singletons_duplicates_and_string_labels() -> None:
    rng = np.random.default_rng(7)
    points = np.concatenate([rng.normal(size=(30, 3)), np.zeros((6, 3))])
    # Two singleton clusters, one cluster of identical points, labels as strings.
    labels = np.array(["a"] * 15 + ["b"] * 13 + ["s1", "s2"] + ["z"] * 6)
    assert silhouette(points, labels) == pytest.approx(silhouette_score(points, labels), abs=1e-9)


def test_silhouette_where_the_mean_distances_are_both_zero() -> None:
    points = np.zeros((4, 2))
    labels = np.array([0, 0, 1, 1])
    assert silhouette(points, labels) == 0.0 == pytest.approx(silhouette_score(points, labels))


def test_silhouette_in_several_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    points = np.random.default_rng(2).normal(size=(50, 3))
    labels = np.arange(50) % 4
    whole = silhouette(points, labels)
    monkeypatch.setattr(selection, "_BLOCK_VALUES", 7 * 50 * 3)
    assert silhouette(points, labels) == pytest.approx(whole, abs=1e-12)


@pytest.mark.parametrize(
    ("points", "labels", "name"),
    [
        (np.zeros(5), np.zeros(5), "points"),
        (np.zeros((5, 2)), np.zeros(4), "labels"),
        (np.zeros((5, 2)), np.zeros(5), "labels"),
        (np.arange(10.0).reshape(5, 2), np.arange(5), "labels"),
    ],
)
def test_silhouette_validation_names_the_argument(
    points: np.ndarray, labels: np.ndarray, name: str
) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        silhouette(points, labels)


# -- choose_k -----------------------------------------------------------------------------


@pytest.mark.parametrize("true_k", [2, 3, 4, 5, 6])
def test_choose_k_finds_the_number_of_separated_blobs(true_k: int) -> None:
    truth = corners(true_k)
    points, _ = blobs(np.random.default_rng(true_k), truth, 40, 1.0)
    choice = choose_k(points, 2, 6, np.random.default_rng(100 + true_k))
    assert isinstance(choice, KChoice)
    assert choice.k == true_k
    assert sorted(choice.scores) == [2, 3, 4, 5, 6]
    assert max(choice.scores, key=lambda k: choice.scores[k]) == true_k
    assert choice.n_points == 40 * true_k
    assert choice.centres.shape == (true_k, 3)
    # The centres are the blob centres.
    gap = np.sqrt(((choice.centres[:, None, :] - truth[None, :, :]) ** 2).sum(axis=2))
    assert sorted(gap.argmin(axis=1).tolist()) == list(range(true_k))
    assert gap.min(axis=1).max() < 0.5
    assert choice.reason.startswith(
        f"k={true_k} has the highest silhouette ({choice.scores[true_k]:.3f}) "
        f"on {40 * true_k} users; "
    )
    for k, s in choice.scores.items():
        if k != true_k:
            assert f"k={k} {s:.3f}" in choice.reason


def test_choose_k_is_deterministic_for_a_seed() -> None:
    points = np.random.default_rng(0).normal(size=(300, 4))
    a = choose_k(points, 2, 5, np.random.default_rng(9), sample_size=100)
    b = choose_k(points, 2, 5, np.random.default_rng(9), sample_size=100)
    assert a.k == b.k
    assert a.scores == b.scores
    assert a.reason == b.reason
    np.testing.assert_array_equal(a.centres, b.centres)


def test_choose_k_on_a_sample() -> None:
    points, _ = blobs(np.random.default_rng(3), corners(3), 500, 1.0)
    choice = choose_k(points, 2, 4, np.random.default_rng(0), sample_size=60)
    assert choice.k == 3
    assert choice.n_points == 1500
    assert "on 1,500 users (scored on a sample of 60); " in choice.reason


def test_choose_k_with_a_fixed_k() -> None:
    points, _ = blobs(np.random.default_rng(4), corners(3), 30, 1.0)
    choice = choose_k(points, 4, 4, np.random.default_rng(0))
    assert choice.k == 4
    assert list(choice.scores) == [4]
    assert choice.centres.shape == (4, 3)
    assert choice.reason == (
        f"k=4 is fixed (k_min = k_max); its silhouette is {choice.scores[4]:.3f} on 90 users"
    )


def test_choose_k_skips_k_above_the_distinct_rows() -> None:
    rng = np.random.default_rng(5)
    points = np.repeat(corners(3), 10, axis=0)[rng.permutation(30)]
    choice = choose_k(points, 2, 5, np.random.default_rng(0))
    assert choice.k == 3
    assert sorted(choice.scores) == [2, 3]
    assert choice.scores[3] == 1.0
    assert choice.reason.endswith("k=4, k=5 skipped, as the points have only 3 distinct rows")


def test_choose_k_ties_go_to_the_smaller_k(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selection, "silhouette", lambda points, labels: 0.5)
    points, _ = blobs(np.random.default_rng(6), corners(4), 20, 1.0)
    choice = choose_k(points, 3, 5, np.random.default_rng(0))
    assert choice.k == 3
    assert choice.scores == {3: 0.5, 4: 0.5, 5: 0.5}
    assert "tied with k=4, k=5 (ties go to the smaller k)" in choice.reason


def test_choose_k_when_no_k_can_be_scored() -> None:
    # One outlier among 999 identical points: a sample of 6 almost surely misses it.
    points = np.zeros((1000, 2))
    points[123] = [5.0, 5.0]
    choice = choose_k(points, 2, 3, np.random.default_rng(0), sample_size=6)
    assert choice.k == 2
    assert choice.scores == {}
    assert sorted(map(tuple, choice.centres.tolist())) == [(0.0, 0.0), (5.0, 5.0)]
    assert choice.reason == (
        "k=2 is the smallest candidate, as no k could be scored by silhouette on 1,000 users "
        "(scored on a sample of 6); k=3 skipped, as the points have only 2 distinct rows"
    )


@pytest.mark.parametrize(
    ("points", "kwargs", "name"),
    [
        (np.zeros((10, 2)), {"k_min": 1}, "k_min"),
        (np.zeros((10, 2)), {"k_min": 4, "k_max": 3}, "k_max"),
        (np.zeros((10, 2)), {"sample_size": 7}, "sample_size"),
        (np.zeros((10, 2)), {"n_init": 0}, "n_init"),
        (np.zeros(10), {}, "points"),
        (np.arange(4.0).reshape(2, 2), {}, "points"),
        (np.full((10, 2), np.nan), {}, "points"),
        (np.zeros((10, 2)), {}, "points"),
    ],
)
def test_choose_k_validation_names_the_argument(
    points: np.ndarray, kwargs: dict[str, Any], name: str
) -> None:
    args: dict[str, Any] = {"k_min": 2, "k_max": 4} | kwargs
    with pytest.raises(ValueError, match=f"^{name} "):
        choose_k(points, args.pop("k_min"), args.pop("k_max"), np.random.default_rng(0), **args)


# -- prediction strength ------------------------------------------------------------------


def zero_inflated(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Four groups shaped like the user features: a spike at zero on the money axes for
    the two groups that do not buy, heavy right tails for the two that do, and overlap."""
    truth = np.repeat(np.arange(4), n)
    x = np.zeros((4 * n, 4))
    # Activity (log events): browsers are busy, buyers less so.
    x[:, 0] = np.log1p(rng.gamma(np.where(truth < 2, 30.0, 8.0), 2.0))
    buys = truth >= 2
    # Purchases and spend: zero for non-buyers, log-normal for buyers; the big spenders
    # spend ten times more per order.
    x[buys, 1] = np.log1p(rng.poisson(4.0, buys.sum()) + 1)
    x[buys, 2] = rng.normal(np.where(truth[buys] == 3, 6.0, 3.5), 0.6)
    # Recency: the two non-buying groups differ in how long ago they were last seen.
    x[:, 3] = np.where(truth == 0, rng.normal(0.5, 0.3, 4 * n), rng.normal(2.5, 0.4, 4 * n))
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    order = rng.permutation(4 * n)
    return x[order], truth[order]


def test_prediction_strength_is_one_for_separated_blobs_and_lower_past_them() -> None:
    points, _ = blobs(np.random.default_rng(0), corners(3), 60, 1.0)
    rng = np.random.default_rng(1)
    assert selection.prediction_strength(points, 1, rng) == 1.0
    assert selection.prediction_strength(points, 3, rng) == 1.0
    assert selection.prediction_strength(points, 4, rng) < 0.8
    assert selection.prediction_strength(points, 6, rng) < 0.8


def test_prediction_strength_is_deterministic_for_a_seed() -> None:
    points = np.random.default_rng(3).normal(size=(200, 3))
    a = selection.prediction_strength(points, 3, np.random.default_rng(5), n_splits=3)
    b = selection.prediction_strength(points, 3, np.random.default_rng(5), n_splits=3)
    assert a == b
    assert 0.0 <= a <= 1.0


def test_pair_share_counts_the_pairs_kept_together() -> None:
    # Test cluster 0: four points, predicted 0, 0, 0, 1: 6 of its 12 ordered pairs kept.
    # Test cluster 1: two points predicted together, all kept. Cluster 2: a singleton.
    test = np.array([0, 0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 0, 1, 2, 2, 1])
    assert selection._pair_share(test, predicted, 3) == 0.5


@pytest.mark.parametrize("true_k", [2, 3, 4, 5, 6])
def test_choose_k_by_prediction_strength_finds_the_separated_blobs(true_k: int) -> None:
    truth = corners(true_k)
    points, labels = blobs(np.random.default_rng(true_k), truth, 40, 1.0)
    # 40 points a blob: halves of 20 score lower than the thousands of users the default
    # threshold (0.8) is set for.
    choice = choose_k(
        points,
        2,
        7,
        np.random.default_rng(100 + true_k),
        criterion="prediction_strength",
        min_strength=0.7,
    )
    assert choice.k == true_k
    assert sorted(choice.scores) == [2, 3, 4, 5, 6, 7]
    assert same_partition(np.argmin(selection._sq_distances(points, choice.centres), 1), labels)
    assert choice.reason.startswith(
        f"k={true_k} is the largest k whose prediction strength ({choice.scores[true_k]:.3f}) "
        f"reaches 0.70 on {40 * true_k} users: segments found on one half of the users, "
        "applied to the other half, keep that share of each segment's pairs of users together"
    )
    assert all(s < 0.7 for k, s in choice.scores.items() if k > true_k)


@pytest.mark.parametrize("seed", range(3))
def test_choose_k_by_prediction_strength_on_zero_inflated_groups(seed: int) -> None:
    points, truth = zero_inflated(np.random.default_rng(seed), 150)
    choice = choose_k(points, 2, 7, np.random.default_rng(seed), criterion="prediction_strength")
    assert choice.k == 4
    labels = np.argmin(selection._sq_distances(points, choice.centres), axis=1)
    assert adjusted_rand_score(truth, labels) > 0.9
    # The shape silhouette is known to misjudge: it merges two of the groups.
    assert choose_k(points, 2, 7, np.random.default_rng(seed)).k < 4


def test_choose_k_by_silhouette_is_the_default() -> None:
    points, _ = zero_inflated(np.random.default_rng(4), 60)
    a = choose_k(points, 2, 5, np.random.default_rng(2))
    b = choose_k(points, 2, 5, np.random.default_rng(2), criterion="silhouette")
    assert (a.k, a.scores, a.reason) == (b.k, b.scores, b.reason)
    np.testing.assert_array_equal(a.centres, b.centres)
    assert "silhouette" in a.reason


def test_choose_k_by_prediction_strength_is_deterministic_for_a_seed() -> None:
    points = np.random.default_rng(0).normal(size=(300, 4))
    kwargs: dict[str, Any] = {"criterion": "prediction_strength", "n_splits": 3}
    a = choose_k(points, 2, 4, np.random.default_rng(9), **kwargs)
    b = choose_k(points, 2, 4, np.random.default_rng(9), **kwargs)
    assert (a.k, a.scores, a.reason) == (b.k, b.scores, b.reason)
    np.testing.assert_array_equal(a.centres, b.centres)


def test_choose_k_by_prediction_strength_takes_the_largest_strong_k(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    strengths = {2: 0.95, 3: 0.6, 4: 0.75, 5: 0.5}
    monkeypatch.setattr(selection, "prediction_strength", lambda p, k, rng, **kw: strengths[k])
    points, _ = blobs(np.random.default_rng(6), corners(4), 20, 1.0)
    choice = choose_k(
        points, 2, 5, np.random.default_rng(0), criterion="prediction_strength", min_strength=0.7
    )
    # A weak k below a strong one does not stop the search: k=4 is kept over k=2.
    assert choice.k == 4
    assert choice.scores == strengths
    assert choice.centres.shape == (4, 3)
    assert choice.reason.endswith("random halvings); k=2 0.950, k=3 0.600, k=5 0.500")
    high = choose_k(
        points, 2, 5, np.random.default_rng(0), criterion="prediction_strength", min_strength=0.9
    )
    assert high.k == 2
    # The default threshold, 0.8: k=4 (0.75) is not strong enough.
    default = choose_k(points, 2, 5, np.random.default_rng(0), criterion="prediction_strength")
    assert default.k == 2


def test_choose_k_by_prediction_strength_when_no_k_is_strong_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    strengths = {2: 0.4, 3: 0.55, 4: 0.55}
    monkeypatch.setattr(selection, "prediction_strength", lambda p, k, rng, **kw: strengths[k])
    points, _ = blobs(np.random.default_rng(6), corners(4), 20, 1.0)
    choice = choose_k(points, 2, 4, np.random.default_rng(0), criterion="prediction_strength")
    assert choice.k == 3  # the highest; the tie goes to the smaller k
    assert choice.reason.startswith(
        "k=3 has the highest prediction strength (0.550) on 80 users, as no k reaches 0.80: "
    )


def test_choose_k_by_prediction_strength_with_a_fixed_k_and_few_distinct_rows() -> None:
    rng = np.random.default_rng(5)
    points = np.repeat(corners(3), 10, axis=0)[rng.permutation(30)]
    choice = choose_k(points, 2, 5, np.random.default_rng(0), criterion="prediction_strength")
    assert choice.k == 3
    assert sorted(choice.scores) == [2, 3]
    assert choice.reason.endswith("k=4, k=5 skipped, as the points have only 3 distinct rows")
    fixed = choose_k(points, 2, 2, np.random.default_rng(0), criterion="prediction_strength")
    assert fixed.k == 2
    assert fixed.reason.startswith(
        f"k=2 is fixed (k_min = k_max); its prediction strength is {fixed.scores[2]:.3f} "
        "on 30 users"
    )


def test_choose_k_by_prediction_strength_when_halves_are_too_small() -> None:
    points = np.arange(26.0).reshape(13, 2)
    choice = choose_k(
        points, 2, 4, np.random.default_rng(0), sample_size=8, criterion="prediction_strength"
    )
    assert sorted(choice.scores) == [2, 3]
    assert choice.reason.endswith(
        "k=4 could not be scored, as half the points are fewer than twice k"
    )


def test_choosing_k_by_prediction_strength_is_fast() -> None:
    import time

    points, _ = zero_inflated(np.random.default_rng(0), 750)  # 3,000 users
    t0 = time.process_time()
    choose_k(points, 2, 8, np.random.default_rng(0), criterion="prediction_strength")
    # A few seconds on one core; generous for a slow test machine.
    assert time.process_time() - t0 < 20.0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"criterion": "elbow"}, "criterion"),
        ({"criterion": "prediction_strength", "min_strength": 0.0}, "min_strength"),
        ({"criterion": "prediction_strength", "min_strength": 1.5}, "min_strength"),
        ({"criterion": "prediction_strength", "n_splits": 0}, "n_splits"),
        ({"criterion": "prediction_strength", "n_init": 0}, "n_init"),
    ],
)
def test_choose_k_validation_of_the_criterion_names_the_argument(
    kwargs: dict[str, Any], name: str
) -> None:
    points = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match=f"^{name} "):
        choose_k(points, 2, 4, np.random.default_rng(0), **kwargs)


@pytest.mark.parametrize(
    ("points", "k", "kwargs", "name"),
    [
        (np.zeros(10), 2, {}, "points"),
        (np.random.default_rng(0).normal(size=(10, 2)), 0, {}, "k"),
        (np.random.default_rng(0).normal(size=(15, 2)), 4, {}, "points"),
        (np.random.default_rng(0).normal(size=(10, 2)), 2, {"n_splits": 0}, "n_splits"),
        (np.random.default_rng(0).normal(size=(10, 2)), 2, {"n_init": 0}, "n_init"),
    ],
)
def test_prediction_strength_validation_names_the_argument(
    points: np.ndarray, k: int, kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        selection.prediction_strength(points, k, np.random.default_rng(0), **kwargs)


def _three_blobs() -> np.ndarray:
    rng = np.random.default_rng(0)
    truth = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    return np.concatenate([c + rng.normal(size=(40, 2)) for c in truth])


@pytest.mark.parametrize(
    ("strengths", "current", "chosen", "says"),
    [
        ({2: 0.99, 3: 0.95, 4: 0.82}, None, 4, "largest k"),  # a first fit: no current k
        ({2: 0.99, 3: 0.95, 4: 0.82}, 3, 3, "k=3 is kept"),  # 0.82 does not clear 0.85
        ({2: 0.99, 3: 0.95, 4: 0.86}, 3, 4, "largest k"),  # 0.86 does
        ({2: 0.99, 3: 0.95, 4: 0.82}, 4, 4, "largest k"),  # the current k is the largest
        ({2: 0.99, 3: 0.70, 4: 0.82}, 3, 4, "largest k"),  # the current k no longer holds
        # From 2, 3 clears the margin and 4 does not: 3.
        ({2: 0.99, 3: 0.95, 4: 0.82}, 2, 3, "clears 0.80 by the 0.05 a change from k=2"),
        ({2: 0.99, 3: 0.83, 4: 0.82}, 2, 2, "k=2 is kept"),
    ],
)
def test_a_larger_k_must_clear_the_bar_by_a_margin_to_replace_the_current_one(
    monkeypatch: pytest.MonkeyPatch,
    strengths: dict[int, float],
    current: int | None,
    chosen: int,
    says: str,
) -> None:
    monkeypatch.setattr(selection, "prediction_strength", lambda points, k, rng, **kw: strengths[k])
    choice = choose_k(
        _three_blobs(),
        2,
        4,
        np.random.default_rng(1),
        criterion="prediction_strength",
        current_k=current,
    )
    assert choice.k == chosen and says in choice.reason
    assert choice.centres.shape == (chosen, 2)


def test_the_switch_margin_is_checked() -> None:
    with pytest.raises(ValueError, match="switch_margin"):
        choose_k(_three_blobs(), 2, 4, np.random.default_rng(1), switch_margin=1.0)
