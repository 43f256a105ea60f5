"""The clustering model: River's incremental K-Means behind an online scaler.

River's :class:`river.cluster.KMeans` is the learning engine. Around it this module adds
what a live segmenter needs: a warm start (the first ``warmup_users`` user vectors are
collected and the centres seeded from them with k-means++ instead of River's random
Gaussian draws), vectorised distances to every centre for decisions and explanations, and
checkpoints as plain values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from river import cluster

from stream.errors import ModelError
from stream.scaling import MODEL_FEATURES, OnlineScaler

CHECKPOINT_FORMAT = 1


def kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``k`` initial centres from ``points`` by k-means++ (D² sampling).

    Examples
    --------
    >>> import numpy as np
    >>> pts = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0]])
    >>> c = kmeans_plus_plus(pts, 2, np.random.default_rng(0))
    >>> sorted(round(float(x)) for x in c[:, 0])
    [0, 10]
    """
    n = len(points)
    centres = [points[rng.integers(n)]]
    d2 = ((points - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:
            # Fewer distinct points than k: fall back to uniform picks.
            idx = int(rng.integers(n))
        else:
            idx = int(rng.choice(n, p=d2 / total))
        centres.append(points[idx])
        d2 = np.minimum(d2, ((points - points[idx]) ** 2).sum(axis=1))
    return np.array(centres)


class SegmentModel:
    """Online scaler + River incremental K-Means with a k-means++ warm start.

    Parameters
    ----------
    n_clusters
        Number of segments.
    halflife
        River's step: how far the winning centre moves toward a new user vector.
    warmup_users
        How many user updates to collect before seeding the centres.
    seed
        Seed for seeding and for River's generator.

    Examples
    --------
    >>> import numpy as np
    >>> m = SegmentModel(n_clusters=2, halflife=0.1, warmup_users=4, seed=1)
    >>> rng = np.random.default_rng(0)
    >>> for v in rng.normal(size=(4, len(MODEL_FEATURES))):
    ...     m.observe(v)
    >>> m.ready, m.distances(m.scale(np.zeros(len(MODEL_FEATURES)))).shape
    (True, (2,))
    """

    def __init__(
        self, n_clusters: int = 5, halflife: float = 0.05, warmup_users: int = 200, seed: int = 42
    ) -> None:
        if n_clusters < 2:
            raise ValueError(f"n_clusters must be at least 2, got {n_clusters}")
        if not 0.0 < halflife <= 1.0:
            raise ValueError(f"halflife must be in (0, 1], got {halflife}")
        if warmup_users < n_clusters:
            raise ValueError(f"warmup_users must be at least n_clusters, got {warmup_users}")
        self.n_clusters = n_clusters
        self.halflife = halflife
        self.warmup_users = warmup_users
        self.seed = seed
        self.features = MODEL_FEATURES
        self.scaler = OnlineScaler.empty(len(MODEL_FEATURES))
        self.kmeans = cluster.KMeans(n_clusters=n_clusters, halflife=halflife, seed=seed)
        self.reservoir: list[np.ndarray] = []
        #: Users seen before the centres were seeded, still to get a first segment.
        self.unassigned: list[str] = []
        self.ready = False
        self.version = 0
        self.updates = 0
        self._centres: np.ndarray | None = None

    def scale(self, raw: np.ndarray) -> np.ndarray:
        return self.scaler.transform(raw)

    def observe(self, raw: np.ndarray) -> None:
        """Learn the scaler from one user vector; before warm start, collect it."""
        self.scaler.learn(raw)
        self.updates += 1
        if not self.ready:
            self.reservoir.append(raw.copy())
            if len(self.reservoir) >= self.warmup_users:
                self._seed()

    def _seed(self) -> None:
        points = self.scaler.transform(np.stack(self.reservoir))
        centres = kmeans_plus_plus(points, self.n_clusters, np.random.default_rng(self.seed))
        self._set_centres(centres)
        self.reservoir = []
        self.ready = True
        self.version = max(self.version, 1)

    def _set_centres(self, centres: np.ndarray) -> None:
        for i, row in enumerate(centres):
            self.kmeans.centers[i].update(zip(self.features, map(float, row), strict=True))
        self._centres = None

    def centres(self) -> np.ndarray:
        """The scaled centres as a ``(n_clusters, n_features)`` matrix (cached)."""
        if self._centres is None:
            self._centres = np.array(
                [[self.kmeans.centers[i][f] for f in self.features] for i in range(self.n_clusters)]
            )
        return self._centres

    def distances(self, z: np.ndarray) -> np.ndarray:
        """Euclidean distances from scaled vector(s) ``z`` to every centre."""
        c = self.centres()
        if z.ndim == 1:
            return np.sqrt(((c - z) ** 2).sum(axis=1))
        return np.sqrt(((z[:, None, :] - c[None, :, :]) ** 2).sum(axis=2))

    def learn(self, z: np.ndarray) -> None:
        """Move the nearest centre toward scaled vector ``z`` (River's update)."""
        if not self.ready:
            return
        self.kmeans.learn_one(dict(zip(self.features, map(float, z), strict=True)))
        self._centres = None

    def to_dict(self) -> dict[str, object]:
        """A checkpoint as plain values."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": self.version,
            "features": list(self.features),
            "n_clusters": self.n_clusters,
            "halflife": self.halflife,
            "seed": self.seed,
            "ready": self.ready,
            "updates": self.updates,
            "scaler": self.scaler.to_dict(),
            "centres": self.centres().tolist() if self.ready else None,
            "reservoir": [r.tolist() for r in self.reservoir],
            "unassigned": list(self.unassigned),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], warmup_users: int) -> SegmentModel:
        """Restore a checkpoint written by :meth:`to_dict`."""
        if d.get("format") != CHECKPOINT_FORMAT or list(d.get("features", [])) != list(
            MODEL_FEATURES
        ):
            raise ModelError(
                "the model checkpoint in Redis was written for other features or by another "
                "format; delete the seg:model key to start a fresh model"
            )
        m = cls(int(d["n_clusters"]), float(d["halflife"]), warmup_users, int(d["seed"]))
        m.scaler = OnlineScaler.from_dict(d["scaler"])
        m.version = int(d["version"])
        m.updates = int(d["updates"])
        m.reservoir = [np.array(r, float) for r in d["reservoir"]]
        m.unassigned = list(d.get("unassigned", []))
        if d["ready"]:
            m._set_centres(np.array(d["centres"], float))
            m.ready = True
        return m
