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
_WIN_DECAY = 0.999  # recent wins forget with a horizon of about 1,000 user updates
_RECENT_POINTS = 512
_DEAD_CHECK_EVERY = 500


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
        #: User updates each centre has learned from (seeding points included).
        self.counts = np.zeros(n_clusters)
        #: Exponentially decayed wins per centre, to find centres that stopped winning.
        self.recent_wins = np.zeros(n_clusters)
        #: Recent scaled vectors, where a dead centre is re-seeded from (not checkpointed).
        self._recent_points: list[np.ndarray] = []
        #: What happened to segments: re-seeded centres, with the update count.
        self.events: list[dict[str, int | str]] = []
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
        nearest = np.argmin(((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=1)
        self.counts = np.bincount(nearest, minlength=self.n_clusters).astype(float)
        self.recent_wins = self.counts.copy()
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
        """Move the nearest centre toward scaled vector ``z`` with River's update.

        The step is ``max(1 / (n + 1), halflife)`` for a centre that has learned from ``n``
        user updates: a running mean while a centre is young (River's fixed step would let
        the last few users drag it about), and never less than ``halflife``, so centres
        keep following drifting behaviour.
        """
        if not self.ready:
            return
        j = int(np.argmin(self.distances(z)))
        self.kmeans.halflife = max(1.0 / (self.counts[j] + 1.0), self.halflife)
        self.kmeans.learn_one(dict(zip(self.features, map(float, z), strict=True)))
        self.kmeans.halflife = self.halflife
        self._centres = None
        self.counts[j] += 1
        self.recent_wins *= _WIN_DECAY
        self.recent_wins[j] += 1
        self._recent_points.append(z)
        if len(self._recent_points) > _RECENT_POINTS:
            del self._recent_points[: len(self._recent_points) - _RECENT_POINTS]
        if int(self.counts.sum()) % _DEAD_CHECK_EVERY == 0:
            self._reseed_dead()

    def _reseed_dead(self) -> None:
        """Move a centre that stopped winning users to where users are worst served.

        A centre is dead when its share of recent wins is below a tenth of a fair share.
        It is re-seeded at the recent user farthest from every other centre, and the event
        is recorded in ``events`` (the segment id then stands for a new group).
        """
        share = self.recent_wins / max(self.recent_wins.sum(), 1e-9)
        dead = [j for j in range(self.n_clusters) if share[j] < 0.1 / self.n_clusters]
        if not dead or len(self._recent_points) < 2 * self.n_clusters:
            return
        points = np.stack(self._recent_points)
        for j in dead:
            c = self.centres()
            others = np.delete(c, j, axis=0)
            gap = ((points[:, None, :] - others[None, :, :]) ** 2).sum(axis=2).min(axis=1)
            target = points[int(np.argmax(gap))]
            self.kmeans.centers[j].update(zip(self.features, map(float, target), strict=True))
            self._centres = None
            self.counts[j] = 1.0
            self.recent_wins[j] = self.recent_wins.sum() / self.n_clusters
            self.events.append(
                {"event": "reseeded", "segment": j, "at_update": int(self.counts.sum())}
            )

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
            "counts": self.counts.tolist(),
            "recent_wins": self.recent_wins.tolist(),
            "events": list(self.events),
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
        m.counts = np.array(d.get("counts", np.zeros(m.n_clusters)), float)
        m.recent_wins = np.array(d.get("recent_wins", np.zeros(m.n_clusters)), float)
        m.events = list(d.get("events", []))
        if d["ready"]:
            m._set_centres(np.array(d["centres"], float))
            m.ready = True
        return m
