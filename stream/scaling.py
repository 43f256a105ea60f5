"""Online feature scaling: log-compression of heavy-tailed features, then standardisation.

Spend, counts and durations are heavy-tailed, so they are compressed with ``log1p`` before
standardising; rates in [0, 1] are used as they are. Means and variances are learned online
(Welford), one update per user update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The features the model clusters on, in vector order.
MODEL_FEATURES: tuple[str, ...] = (
    "events_30d",
    "purchases_30d",
    "spend_30d",
    "days_since_last_purchase",
    "avg_order_value",
    "conversion_rate_30d",
    "cart_abandonment_30d",
    "category_diversity_30d",
    "tenure_days",
)
#: Features that are compressed with log1p before scaling.
LOG_FEATURES = frozenset(MODEL_FEATURES) - {"conversion_rate_30d", "cart_abandonment_30d"}
#: Recency and tenure saturate: past this many days the difference stops mattering, and a
#: user who never purchased counts as this far from a purchase.
DAYS_CAP = 60.0

_LOG_MASK = np.array([f in LOG_FEATURES for f in MODEL_FEATURES])
_VAR_FLOOR = 1e-6


def to_vector(features: dict[str, float | None]) -> np.ndarray:
    """The model-space (log-compressed, unscaled) vector of a user's human features."""
    raw = np.empty(len(MODEL_FEATURES))
    for i, name in enumerate(MODEL_FEATURES):
        v = features.get(name)
        if name in ("days_since_last_purchase", "tenure_days"):
            v = DAYS_CAP if v is None else min(v, DAYS_CAP)
        raw[i] = 0.0 if v is None else v
    raw[_LOG_MASK] = np.log1p(raw[_LOG_MASK])
    return raw


def to_human(vector: np.ndarray) -> dict[str, float]:
    """The inverse of :func:`to_vector`, for centroids and profiles."""
    v = np.array(vector, dtype=float)
    # A centroid can sit below zero in log space; no one has negative spend or counts.
    v[_LOG_MASK] = np.expm1(np.maximum(v[_LOG_MASK], 0.0))
    v[~_LOG_MASK] = np.clip(v[~_LOG_MASK], 0.0, 1.0)
    return {name: round(float(x), 3) for name, x in zip(MODEL_FEATURES, v, strict=True)}


@dataclass
class OnlineScaler:
    """Running mean and variance per dimension (Welford), and standardisation by them.

    Examples
    --------
    >>> import numpy as np
    >>> s = OnlineScaler.empty(2)
    >>> for x in ([1.0, 10.0], [3.0, 10.0]):
    ...     s.learn(np.array(x))
    >>> s.transform(np.array([3.0, 10.0])).round(3).tolist()
    [1.0, 0.0]
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> OnlineScaler:
        return cls(0, np.zeros(dim), np.zeros(dim))

    def learn(self, x: np.ndarray) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> np.ndarray:
        var = self.m2 / self.count if self.count > 1 else np.ones_like(self.mean)
        return np.sqrt(np.maximum(var, _VAR_FLOOR))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardise ``x`` (one vector or a matrix of row vectors)."""
        return (x - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean

    def merged(self, other: OnlineScaler) -> OnlineScaler:
        """The statistics of both sets of vectors together (Chan et al.'s pairwise update).

        This is what lets every process learn the scaler on its own users and still share
        one: the merge of two processes' statistics equals learning all their vectors.

        >>> import numpy as np
        >>> a, b, both = OnlineScaler.empty(1), OnlineScaler.empty(1), OnlineScaler.empty(1)
        >>> for x in (1.0, 2.0):
        ...     a.learn(np.array([x])); both.learn(np.array([x]))
        >>> for x in (4.0, 9.0):
        ...     b.learn(np.array([x])); both.learn(np.array([x]))
        >>> m = a.merged(b)
        >>> m.count, np.allclose(m.mean, both.mean), np.allclose(m.m2, both.m2)
        (4, True, True)
        """
        n = self.count + other.count
        if other.count == 0:
            return OnlineScaler(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return OnlineScaler(other.count, other.mean.copy(), other.m2.copy())
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return OnlineScaler(n, mean, m2)

    def to_dict(self) -> dict[str, object]:
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OnlineScaler:
        return cls(int(d["count"]), np.array(d["mean"], float), np.array(d["m2"], float))
