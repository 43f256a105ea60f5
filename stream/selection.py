"""Choosing the number of segments and fitting their centres on a reservoir of user vectors.

The shared reservoir holds scaled user vectors. For every candidate ``k`` the centres are
fitted by batch k-means (k-means++ seeding, then Lloyd iterations, best of a few runs), and
the candidates are compared by one of two criteria (:data:`K_CRITERIA`):

* ``"silhouette"``: the mean silhouette on one random sample of the reservoir. The highest
  wins; a tie goes to the smaller ``k``, the simpler model.
* ``"prediction_strength"`` (Tibshirani and Walther, 2005): how well segments found on one
  half of the users predict the segments found on the other half. The largest ``k`` whose
  strength reaches a threshold wins.

Silhouette rewards compact, well-separated blobs. User features are not like that: many are
zero for most users (no purchase, no cart), so a persona is a smear along a few axes next to
a spike at zero, and silhouette often merges real segments (three for five personas).
Prediction strength asks only whether a segment is *reproducible*, which a real persona is
however it is shaped, and choosing the largest reproducible ``k`` errs towards too many
segments, which costs far less than too few: a superfluous segment splits one persona in
two, a missing one mixes two personas for good.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The ways :func:`choose_k` can choose ``k``.
K_CRITERIA: tuple[str, ...] = ("silhouette", "prediction_strength")

#: Most float64 values one block of pairwise differences may hold (32 MiB).
_BLOCK_VALUES = 1 << 22


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``k`` initial centres from ``points`` by k-means++ (D² sampling).

    The first centre is a uniform pick; each next one is a point drawn with probability
    proportional to its squared distance to the nearest centre picked so far.

    Parameters
    ----------
    points
        The ``(n, n_features)`` points to pick from.
    k
        Number of centres.
    rng
        Source of the random picks.

    Returns
    -------
    np.ndarray
        ``(k, n_features)`` centres, each one of the points.

    Examples
    --------
    >>> import numpy as np
    >>> pts = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0]])
    >>> c = kmeans_plus_plus(pts, 2, np.random.default_rng(0))
    >>> sorted(round(float(x)) for x in c[:, 0])
    [0, 10]
    """
    if points.ndim != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty 2-D array, got shape {points.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n = len(points)
    centres = [points[rng.integers(n)]]
    d2 = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:
            # Fewer distinct points than k: fall back to uniform picks.
            idx = int(rng.integers(n))
        else:
            # Inverse-CDF sampling: the draw ``rng.choice(n, p=d2 / total)`` makes, without
            # its checks of ``p``, which take as long again as the draw.
            cdf = (d2 / total).cumsum()
            cdf /= cdf[-1]
            idx = int(cdf.searchsorted(rng.random(), side="right"))
        centres.append(points[idx])
        d2 = np.minimum(d2, ((points - points[idx]) ** 2).sum(axis=1))
    return np.array(centres)


def _sq_distances(
    points: np.ndarray, centres: np.ndarray, norms: np.ndarray | None = None
) -> np.ndarray:
    """``(n, k)`` squared Euclidean distances from every point to every centre; ``norms``
    are the points' squared norms, when the caller has them already."""
    if norms is None:
        norms = (points**2).sum(axis=1)
    # |x|² + |c|² - 2x·c: one matrix product instead of an (n, k, d) array of differences.
    d2 = norms[:, None] + (centres**2).sum(axis=1)[None, :]
    d2 -= 2.0 * (points @ centres.T)
    return np.maximum(d2, 0.0)


def _assign(
    points: np.ndarray, centres: np.ndarray, norms: np.ndarray | None = None
) -> tuple[np.ndarray, bool]:
    """Label every point with its nearest centre, then give every empty cluster a point;
    return the labels and whether a cluster was re-seeded.

    An empty cluster is re-seeded (``centres`` is changed in place) at the point farthest
    from its nearest centre, taken from a cluster that keeps at least one other point, so
    re-seeding never empties another cluster. With at least as many points as centres such
    a point always exists; with at least as many distinct points as centres it is never
    one already sitting on a centre. ``norms`` are the points' squared norms, if known.
    """
    d2 = _sq_distances(points, centres, norms)
    labels = np.argmin(d2, axis=1)
    sizes = np.bincount(labels, minlength=len(centres))
    if sizes.all():
        return labels, False  # the common case: no cluster to re-seed
    nearest = d2[np.arange(len(points)), labels]
    for j in np.flatnonzero(sizes == 0):
        gap = np.where(sizes[labels] > 1, nearest, -1.0)
        i = int(np.argmax(gap))
        sizes[labels[i]] -= 1
        sizes[j] = 1
        labels[i] = j
        centres[j] = points[i]
        nearest[i] = 0.0
        # The next empty cluster is re-seeded with this centre in place.
        nearest = np.minimum(nearest, ((points - points[i]) ** 2).sum(axis=1))
    return labels, True


def lloyd(
    points: np.ndarray, centres: np.ndarray, max_iter: int = 50, tol: float = 1e-6
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means iterations from the given centres.

    Each iteration labels every point with its nearest centre and moves every centre to the
    mean of its points. A cluster that becomes empty is re-seeded at the point farthest from
    its nearest centre, so ``k`` centres with at least one point each always come back.

    Parameters
    ----------
    points
        The ``(n, n_features)`` points.
    centres
        The ``(k, n_features)`` starting centres, ``1 <= k <= n``; not modified.
    max_iter
        Most iterations.
    tol
        Stop once no centre moves farther than this (Euclidean) in an iteration.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        The ``(k, n_features)`` centres and the ``(n,)`` label of every point (its nearest
        centre, except for a point a last-step re-seed moved to an empty cluster).

    Examples
    --------
    >>> import numpy as np
    >>> pts = np.array([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
    >>> c, labels = lloyd(pts, np.array([[1.0, 0.0], [2.0, 0.0]]))
    >>> c.tolist(), labels.tolist()
    ([[0.0, 0.5], [10.0, 0.5]], [0, 0, 1, 1])

    Two centres on the same spot: one is re-seeded rather than left empty.

    >>> c, labels = lloyd(pts, np.array([[5.0, 0.5], [5.0, 0.5]]))
    >>> sorted(c.tolist()), sorted(labels.tolist())
    ([[0.0, 0.5], [10.0, 0.5]], [0, 0, 1, 1])
    """
    if points.ndim != 2:
        raise ValueError(f"points must be a 2-D array, got shape {points.shape}")
    if centres.ndim != 2 or centres.shape[1] != points.shape[1]:
        raise ValueError(
            f"centres must be a 2-D array with {points.shape[1]} columns like points, "
            f"got shape {centres.shape}"
        )
    if not 1 <= len(centres) <= len(points):
        raise ValueError(
            f"centres must have between 1 and len(points) ({len(points)}) rows, got {len(centres)}"
        )
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be non-negative, got {tol}")
    k = len(centres)
    c = np.array(centres, dtype=float)
    # The same every iteration: computed once.
    norms = (points**2).sum(axis=1)
    previous = None
    for _ in range(max_iter):
        labels, reseeded = _assign(points, c, norms)
        if not reseeded and previous is not None and np.array_equal(labels, previous):
            # The labels the centres are the means of: the next step would give the same
            # centres back (moving 0) and label with them again, to these labels.
            return c, labels
        # Per-cluster sums as one product with the one-hot labels (np.add.at is far slower).
        sums = np.eye(k)[labels].T @ points
        # Every cluster has a point after _assign, so no count is zero.
        new = sums / np.bincount(labels, minlength=k)[:, None]
        moved = float(np.sqrt(((new - c) ** 2).sum(axis=1)).max())
        c, previous = new, labels
        if moved <= tol:
            break
    # Label with the final centres, so labels and centres agree.
    labels, _ = _assign(points, c, norms)
    return c, labels


def silhouette(points: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient of a labelling, with Euclidean distances.

    For a point, ``a`` is its mean distance to the other points of its cluster and ``b`` its
    mean distance to the points of the nearest other cluster; its coefficient is
    ``(b - a) / max(a, b)``, and 0 for a point alone in its cluster (or when ``a = b = 0``).
    This is the definition of scikit-learn's ``silhouette_score``, computed exactly from all
    pairwise distances (``O(n²)`` time, memory in bounded blocks).

    Parameters
    ----------
    points
        The ``(n, n_features)`` points.
    labels
        The ``(n,)`` cluster label of every point; between 2 and ``n - 1`` distinct values.

    Returns
    -------
    float
        The mean coefficient, in ``[-1, 1]``.

    Examples
    --------
    >>> import numpy as np
    >>> pts = np.array([[0.0], [1.0], [10.0], [11.0]])
    >>> round(silhouette(pts, np.array([0, 0, 1, 1])), 3)
    0.9
    >>> round(silhouette(pts, np.array([0, 1, 2, 2])), 3)  # the two singletons score 0
    0.447
    """
    points = np.asarray(points, dtype=float)
    labels = np.asarray(labels)
    if points.ndim != 2:
        raise ValueError(f"points must be a 2-D array, got shape {points.shape}")
    n = len(points)
    if labels.shape != (n,):
        raise ValueError(f"labels must have one label per point, shape ({n},), got {labels.shape}")
    names, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_labels = len(names)
    if not 1 < n_labels < n:
        raise ValueError(
            f"labels must have between 2 and n - 1 ({n - 1}) distinct values, got {n_labels}"
        )
    members = np.zeros((n, n_labels))
    members[np.arange(n), inverse] = 1.0
    sizes = members.sum(axis=0)
    # sums[i, c]: total distance from point i to the points of cluster c.
    # Distances by |x|² + |y|² - 2x·y, a matrix product (as scikit-learn computes them):
    # ten times faster than differencing every pair, and exact to ~1e-12 here.
    sums = np.empty((n, n_labels))
    sq = (points**2).sum(axis=1)
    step = max(1, _BLOCK_VALUES // max(1, n))
    for start in range(0, n, step):
        block = points[start : start + step]
        d2 = sq[start : start + step, None] + sq[None, :] - 2.0 * (block @ points.T)
        d = np.sqrt(np.maximum(d2, 0.0))
        d[np.arange(len(block)), np.arange(start, start + len(block))] = 0.0
        sums[start : start + step] = d @ members
    rows = np.arange(n)
    own_size = sizes[inverse]
    a = sums[rows, inverse] / np.maximum(own_size - 1.0, 1.0)
    to_others = sums / sizes
    to_others[rows, inverse] = np.inf
    b = to_others.min(axis=1)
    denom = np.maximum(a, b)
    s = np.divide(b - a, denom, out=np.zeros(n), where=denom > 0)
    s[own_size == 1] = 0.0
    return float(s.mean())


@dataclass(frozen=True, slots=True)
class KChoice:
    """The chosen number of segments, its fitted centres, and why it was chosen."""

    #: The chosen number of segments.
    k: int
    #: The ``(k, n_features)`` fitted centres.
    centres: np.ndarray
    #: Score of each candidate ``k`` that could be fitted and scored: its silhouette or its
    #: prediction strength, by the criterion used.
    scores: dict[int, float]
    #: Number of points the choice was made on.
    n_points: int
    #: One plain-English sentence saying why ``k`` was chosen.
    reason: str


def _fit(
    points: np.ndarray, k: int, rng: np.random.Generator, n_init: int
) -> tuple[np.ndarray, np.ndarray]:
    """The lowest-inertia of ``n_init`` k-means++ + Lloyd runs: (centres, labels)."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centres, labels = lloyd(points, kmeans_plus_plus(points, k, rng))
        inertia = float(((points - centres[labels]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centres, labels)
    assert best is not None
    return best[1], best[2]


def _pair_share(test_labels: np.ndarray, predicted: np.ndarray, k: int) -> float:
    """Lowest share, over the clusters of ``test_labels``, of their pairs of points that
    ``predicted`` puts in the same cluster too; clusters of one point are left out."""
    # Row j, column c: points of test cluster j predicted into cluster c. Same-cluster
    # pairs of a row are then sum(n * (n - 1)) over its cells.
    table = np.zeros((k, k))
    np.add.at(table, (test_labels, predicted), 1.0)
    sizes = table.sum(axis=1)
    pairs = sizes * (sizes - 1.0)
    kept = (table * (table - 1.0)).sum(axis=1)
    scored = pairs > 0
    return float((kept[scored] / pairs[scored]).min())


def prediction_strength(
    points: np.ndarray, k: int, rng: np.random.Generator, *, n_splits: int = 10, n_init: int = 3
) -> float:
    """Prediction strength of k-means with ``k`` clusters (Tibshirani and Walther, 2005).

    The points are split at random into two halves. Each half is clustered by k-means; the
    other half's centres then *predict* a cluster for every point of this half (its nearest
    centre). For every cluster found on this half, the share of its pairs of points that the
    prediction keeps together is computed, and the strength of the split is the lowest share:
    how well the worst-reproduced cluster is reproduced. Both halves take both roles, and the
    strength is the mean over ``2 * n_splits`` such values.

    A ``k`` no larger than the number of well-separated groups scores close to 1; a ``k``
    that cuts a group where nothing separates it scores lower, as each half cuts it
    somewhere else.

    Parameters
    ----------
    points
        The ``(n, n_features)`` points; each half (``n // 2`` points) must have at least
        ``2 * k`` of them, so that some cluster of it has a pair of points to score.
    k
        Number of clusters, at least 1.
    rng
        Source of the splits and of the k-means++ picks.
    n_splits
        Random halvings; at least 1.
    n_init
        k-means runs per half (the lowest inertia is kept); at least 1.

    Returns
    -------
    float
        The strength, in ``[0, 1]``.

    Examples
    --------
    Two blobs: two clusters are reproduced exactly, four are not.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> pts = np.concatenate([rng.normal(size=(100, 2)), 10 + rng.normal(size=(100, 2))])
    >>> prediction_strength(pts, 2, np.random.default_rng(1))
    1.0
    >>> prediction_strength(pts, 4, np.random.default_rng(1)) < 0.8
    True
    """
    points = np.asarray(points, dtype=float)
    if points.ndim != 2:
        raise ValueError(f"points must be a 2-D array, got shape {points.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(points) // 2 < 2 * k:
        raise ValueError(
            f"points must have at least 4 * k ({4 * k}) rows, so that each half has twice k, "
            f"got {len(points)}"
        )
    if n_splits < 1:
        raise ValueError(f"n_splits must be at least 1, got {n_splits}")
    if n_init < 1:
        raise ValueError(f"n_init must be at least 1, got {n_init}")
    n = len(points)
    values = []
    for _ in range(n_splits):
        order = rng.permutation(n)
        halves = (points[order[: n // 2]], points[order[n // 2 :]])
        fits = [_fit(h, k, rng, n_init) for h in halves]
        for test, train in ((0, 1), (1, 0)):
            predicted = np.argmin(_sq_distances(halves[test], fits[train][0]), axis=1)
            values.append(_pair_share(fits[test][1], predicted, k))
    return float(np.mean(values))


def _ks(ks: list[int]) -> str:
    return ", ".join(f"k={k}" for k in ks)


#: How far over the bar a larger k's prediction strength must be to replace the current k
#: at a refit (:func:`choose_k`). In the quality runs, the wrong k was chosen at 0.817 to
#: 0.841 where the current k scored 0.93 to 0.98.
K_SWITCH_MARGIN = 0.05


def choose_k(
    points: np.ndarray,
    k_min: int,
    k_max: int,
    rng: np.random.Generator,
    *,
    sample_size: int = 1000,
    n_init: int = 3,
    criterion: str = "silhouette",
    min_strength: float = 0.8,
    n_splits: int = 10,
    current_k: int | None = None,
    switch_margin: float = K_SWITCH_MARGIN,
) -> KChoice:
    """Fit k-means for every ``k`` in ``k_min..k_max`` and keep the best by ``criterion``.

    By ``"silhouette"`` (the default):

    For each ``k``, ``n_init`` runs of k-means++ then Lloyd are made on all the points and
    the run with the lowest inertia is kept. It is scored by its silhouette on a random
    sample of at most ``sample_size`` points, drawn once, so every ``k`` is judged on the
    same users. The highest silhouette wins and ties go to the smaller ``k``.

    A ``k`` larger than the number of distinct rows of ``points`` is skipped: it would need
    two centres on the same spot. A ``k`` whose labels on the sample leave fewer than two
    clusters (or only singletons) cannot be scored; if no ``k`` can be scored, the smallest
    is kept. Skipped and unscored candidates are named in the reason.

    By ``"prediction_strength"``: every ``k`` is scored by its
    :func:`prediction_strength` over ``n_splits`` random halvings of all the points, and the
    largest ``k`` whose strength is at least ``min_strength`` is kept (the highest strength
    if none reaches it; ties go to the smaller ``k``). When the model has ``current_k``
    segments and that ``k`` still reaches ``min_strength``, a larger ``k`` replaces it only
    when its strength clears ``min_strength`` by ``switch_margin``: a strength just over the
    bar is as often noise as structure, and each change of ``k`` moves many customers.
    The chosen ``k``'s centres are then fitted on all the points as above. A ``k`` larger
    than the number of distinct rows is skipped, and one larger than a quarter of the
    points cannot be scored. The cost is ``4 * n_splits * n_init`` k-means runs on half the
    points per ``k``: linear in the number of points.

    Parameters
    ----------
    points
        The ``(n, n_features)`` scaled user vectors; more than ``k_min`` rows, at least
        ``k_min`` of them distinct, all finite.
    k_min, k_max
        Range of candidate segment counts, ``2 <= k_min <= k_max``. Equal values fix ``k``
        (it is still fitted and scored).
    rng
        Source of the sample and of the k-means++ picks; the same seed gives the same
        choice.
    sample_size
        Most points the silhouette is computed on (its cost grows with the square of this);
        at least ``2 * k_max``, so every cluster can have a few points in the sample.
    n_init
        k-means runs per ``k`` (and per half, for the prediction strength); at least 1.
    criterion
        One of :data:`K_CRITERIA`.
    min_strength
        The prediction strength a ``k`` needs to be kept, in ``(0, 1]``; only for
        ``"prediction_strength"``. Tibshirani and Walther suggest 0.8 to 0.9 for
        well-separated groups. On the simulated shoppers (``loadtest.lab``, four
        scenarios, three seeds, 2,000 users each) 0.8 found the true k in 12 of 12 runs,
        0.7 in 7 (one too many: a persona split into its buyers and the rest).
    n_splits
        Random halvings the prediction strength is averaged over; at least 1. Only for
        ``"prediction_strength"``.
    current_k
        The number of segments of the model being refitted (``None`` at a first fit). Only
        for ``"prediction_strength"``.
    switch_margin
        How far over ``min_strength`` a larger ``k`` must score to replace ``current_k``,
        in ``[0, 1)``.

    Returns
    -------
    KChoice
        The chosen ``k``, its centres, the score of every scored ``k`` and the reason.

    Examples
    --------
    Three well-separated blobs:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> truth = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    >>> pts = np.concatenate([c + rng.normal(size=(60, 2)) for c in truth])
    >>> choice = choose_k(pts, 2, 5, np.random.default_rng(1))
    >>> choice.k, sorted(choice.scores), choice.centres.shape, choice.n_points
    (3, [2, 3, 4, 5], (3, 2), 180)
    >>> print(choice.reason)
    k=3 has the highest silhouette (0.763) on 180 users; k=2 0.583, k=4 0.623, k=5 0.484

    The same by prediction strength:

    >>> choice = choose_k(pts, 2, 5, np.random.default_rng(1), criterion="prediction_strength")
    >>> choice.k, choice.centres.shape
    (3, (3, 2))
    >>> print(choice.reason)  # doctest: +NORMALIZE_WHITESPACE
    k=3 is the largest k whose prediction strength (1.000) reaches 0.80 on 180 users:
    segments found on one half of the users, applied to the other half, keep that share of
    each segment's pairs of users together (the worst segment's, averaged over 10 random
    halvings); k=2 0.649, k=4 0.547, k=5 0.499
    """
    if k_min < 2:
        raise ValueError(f"k_min must be at least 2, got {k_min}")
    if k_max < k_min:
        raise ValueError(f"k_max must be at least k_min ({k_min}), got {k_max}")
    if sample_size < 2 * k_max:
        raise ValueError(
            f"sample_size must be at least twice k_max ({2 * k_max}), got {sample_size}"
        )
    if criterion not in K_CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(K_CRITERIA)}, got {criterion!r}")
    if not 0.0 < min_strength <= 1.0:
        raise ValueError(f"min_strength must be in (0, 1], got {min_strength}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be at least 1, got {n_splits}")
    if n_init < 1:
        raise ValueError(f"n_init must be at least 1, got {n_init}")
    if not 0.0 <= switch_margin < 1.0:
        raise ValueError(f"switch_margin must be in [0, 1), got {switch_margin}")
    points = np.asarray(points, dtype=float)
    if points.ndim != 2:
        raise ValueError(f"points must be a 2-D array, got shape {points.shape}")
    n = len(points)
    if n <= k_min:
        raise ValueError(f"points must have more rows than k_min ({k_min}), got {n}")
    if not np.isfinite(points).all():
        raise ValueError("points must be finite (no NaN or infinity)")
    distinct = len(np.unique(points, axis=0))
    if distinct < k_min:
        raise ValueError(f"points must have at least k_min ({k_min}) distinct rows, got {distinct}")

    if criterion == "prediction_strength":
        return _choose_by_strength(
            points,
            k_min,
            k_max,
            rng,
            n_init,
            distinct,
            min_strength,
            n_splits,
            current_k,
            switch_margin,
        )
    sample = np.sort(rng.choice(n, size=sample_size, replace=False)) if n > sample_size else None
    scored_on = points if sample is None else points[sample]

    fits: dict[int, np.ndarray] = {}
    scores: dict[int, float] = {}
    skipped: list[int] = []
    unscored: list[int] = []
    for k in range(k_min, k_max + 1):
        if k > distinct:
            skipped.append(k)
            continue
        centres, labels = _fit(points, k, rng, n_init)
        fits[k] = centres
        sample_labels = labels if sample is None else labels[sample]
        if 1 < len(np.unique(sample_labels)) < len(sample_labels):
            scores[k] = silhouette(scored_on, sample_labels)
        else:
            unscored.append(k)

    # Strict comparison in increasing k: a tie keeps the smaller k.
    best: int | None = None
    for k, score in scores.items():
        if best is None or score > scores[best]:
            best = k

    users = f"{n:,} users"
    if sample is not None:
        users += f" (scored on a sample of {len(sample):,})"
    if best is None:
        chosen = min(fits)
        head = (
            f"k={chosen} is fixed (k_min = k_max) but could not be scored by silhouette on {users}"
            if k_min == k_max
            else f"k={chosen} is the smallest candidate, as no k could be scored by "
            f"silhouette on {users}"
        )
    else:
        chosen = best
        if k_min == k_max:
            head = f"k={chosen} is fixed (k_min = k_max); its silhouette is "
            head += f"{scores[chosen]:.3f} on {users}"
        else:
            head = f"k={chosen} has the highest silhouette ({scores[chosen]:.3f}) on {users}"
            tied = [k for k, s in scores.items() if k != chosen and s == scores[chosen]]
            if tied:
                head += f", tied with {_ks(tied)} (ties go to the smaller k)"
    parts = [head]
    others = [f"k={k} {s:.3f}" for k, s in scores.items() if k != chosen]
    if others:
        parts.append(", ".join(others))
    if skipped:
        parts.append(f"{_ks(skipped)} skipped, as the points have only {distinct:,} distinct rows")
    left = [k for k in unscored if k != chosen]
    if left:
        parts.append(
            f"{_ks(left)} could not be scored, as the sample holds only one of its clusters "
            "or only singletons"
        )
    return KChoice(
        k=chosen, centres=fits[chosen], scores=scores, n_points=n, reason="; ".join(parts)
    )


def _choose_by_strength(
    points: np.ndarray,
    k_min: int,
    k_max: int,
    rng: np.random.Generator,
    n_init: int,
    distinct: int,
    min_strength: float,
    n_splits: int,
    current_k: int | None = None,
    switch_margin: float = 0.0,
) -> KChoice:
    """The ``"prediction_strength"`` branch of :func:`choose_k` (arguments checked there)."""
    n = len(points)
    scores: dict[int, float] = {}
    skipped: list[int] = []
    unscored: list[int] = []
    for k in range(k_min, k_max + 1):
        if k > distinct:
            skipped.append(k)
        elif n // 2 < 2 * k:
            unscored.append(k)
        else:
            scores[k] = prediction_strength(points, k, rng, n_splits=n_splits, n_init=n_init)
    users = f"{n:,} users"
    what = (
        "segments found on one half of the users, applied to the other half, keep that share "
        "of each segment's pairs of users together (the worst segment's, averaged over "
        f"{n_splits} random halving{'s' if n_splits > 1 else ''})"
    )
    strong = [k for k, s in scores.items() if s >= min_strength]
    if not scores:
        chosen = min(k for k in range(k_min, k_max + 1) if k <= distinct)
        head = (
            f"k={chosen} is fixed (k_min = k_max) but could not be scored by prediction "
            f"strength on {users}"
            if k_min == k_max
            else f"k={chosen} is the smallest candidate, as no k could be scored by "
            f"prediction strength on {users}"
        )
    elif k_min == k_max:
        chosen = k_min
        head = (
            f"k={chosen} is fixed (k_min = k_max); its prediction strength is "
            f"{scores[chosen]:.3f} on {users}: {what}"
        )
    elif current_k in strong and max(strong) != current_k:
        assert current_k is not None
        bar = min_strength + switch_margin
        movers = [k for k in strong if k > current_k and scores[k] >= bar]
        if movers:
            chosen = max(movers)
            head = (
                f"k={chosen} is the largest k whose prediction strength "
                f"({scores[chosen]:.3f}) clears {min_strength:.2f} by the {switch_margin:.2f} "
                f"a change from k={current_k} needs, on {users}: {what}"
            )
        else:
            chosen = current_k
            head = (
                f"k={chosen} is kept: its prediction strength ({scores[chosen]:.3f}) reaches "
                f"{min_strength:.2f} on {users}, and no larger k clears it by the "
                f"{switch_margin:.2f} a change of k needs: {what}"
            )
    elif strong:
        chosen = max(strong)
        head = (
            f"k={chosen} is the largest k whose prediction strength ({scores[chosen]:.3f}) "
            f"reaches {min_strength:.2f} on {users}: {what}"
        )
    else:
        # Strict comparison in increasing k: a tie keeps the smaller k.
        chosen = min(scores)
        for k, score in scores.items():
            if score > scores[chosen]:
                chosen = k
        head = (
            f"k={chosen} has the highest prediction strength ({scores[chosen]:.3f}) on "
            f"{users}, as no k reaches {min_strength:.2f}: {what}"
        )
    parts = [head]
    others = [f"k={k} {s:.3f}" for k, s in scores.items() if k != chosen]
    if others:
        parts.append(", ".join(others))
    if skipped:
        parts.append(f"{_ks(skipped)} skipped, as the points have only {distinct:,} distinct rows")
    if unscored:
        parts.append(
            f"{_ks(unscored)} could not be scored, as half the points are fewer than twice k"
        )
    centres, _ = _fit(points, chosen, rng, n_init)
    return KChoice(k=chosen, centres=centres, scores=scores, n_points=n, reason="; ".join(parts))
