"""Online feature scaling: caps and log-compression of heavy-tailed features, then
standardisation.

Which features the model uses, their caps and whether they are log-compressed come from
:mod:`stream.feature_registry`. Means and variances are learned online (Welford) and
merged across processes exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from stream.feature_registry import DAYS_CAP, FEATURES_BY_NAME, MODEL_FEATURES, RFM_CORE

__all__ = [
    "DAYS_CAP",
    "LOG_FEATURES",
    "MODEL_FEATURES",
    "OnlineScaler",
    "check_model_features",
    "to_human",
    "to_vector",
    "to_vectors",
]

_MODEL = [FEATURES_BY_NAME[n] for n in MODEL_FEATURES]
#: Features that are compressed with log1p before scaling (heavy-tailed counts, money and
#: days); rates in [0, 1] are used as they are.
LOG_FEATURES = frozenset(f.name for f in _MODEL if f.log)
_LOG_MASK = np.array([f.log for f in _MODEL])
_CAPS = np.array([np.inf if f.cap is None else f.cap for f in _MODEL])
_MISSING = [(i, f.name, f.missing) for i, f in enumerate(_MODEL)]
_VAR_FLOOR = 1e-6
#: The smallest spread the scaler divides by, per model feature (the registry's
#: resolutions): see :attr:`OnlineScaler.std`.
STD_FLOOR = np.array([f.resolution for f in _MODEL])


def check_model_features(used: tuple[str, ...]) -> tuple[str, ...]:
    """Return ``used`` if it can be the model's features, else raise ``ValueError`` saying why.

    The model's features are a subset of :data:`MODEL_FEATURES`, in its order, holding at
    least :data:`~stream.feature_registry.RFM_CORE`.

    >>> check_model_features(("frequency", "monetary", "days_without_purchase"))
    ('frequency', 'monetary', 'days_without_purchase')
    >>> check_model_features(("frequency", "monetary"))
    Traceback (most recent call last):
    ...
    ValueError: the model's features must include days_without_purchase (RFM needs it)
    """
    every = ", ".join(MODEL_FEATURES)
    unknown = [n for n in used if n not in MODEL_FEATURES]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} cannot be a model feature; choose from {every}")
    missing = [n for n in RFM_CORE if n not in used]
    if missing:
        raise ValueError(f"the model's features must include {', '.join(missing)} (RFM needs it)")
    if tuple(n for n in MODEL_FEATURES if n in used) != tuple(used):
        raise ValueError(f"the model's features must be listed once each, in the order {every}")
    return tuple(used)


@lru_cache(maxsize=8)
def _unused(used: tuple[str, ...]) -> np.ndarray:
    return np.array([i for i, n in enumerate(MODEL_FEATURES) if n not in used], dtype=np.intp)


def to_vector(
    features: Mapping[str, float | None], used: tuple[str, ...] = MODEL_FEATURES
) -> np.ndarray:
    """The model-space (capped, log-compressed, unscaled) vector of a user's features.

    Parameters
    ----------
    features
        The user's features by name (:func:`stream.features.compute_features`).
    used
        The model features the deployment clusters on (``SEGMENTER_MODEL_FEATURES``). The
        vector keeps one width whatever this is, so checkpoints and stored state keep one
        layout; a feature left out is 0 for every user, a constant that weighs nothing in
        any distance.

    >>> v = to_vector({"frequency": 3.0, "days_since_last_event": None})
    >>> float(v[MODEL_FEATURES.index("days_since_last_event")]) == float(np.log1p(DAYS_CAP))
    True
    >>> rfm_only = ("frequency", "monetary", "days_without_purchase")
    >>> float(to_vector({"events_30d": 40.0}, rfm_only)[MODEL_FEATURES.index("events_30d")])
    0.0
    """
    raw = np.empty(len(MODEL_FEATURES))
    for i, name, missing in _MISSING:
        v = features.get(name)
        raw[i] = missing if v is None else v
    np.minimum(raw, _CAPS, out=raw)
    raw[_LOG_MASK] = np.log1p(raw[_LOG_MASK])
    if used is not MODEL_FEATURES:
        raw[_unused(used)] = 0.0
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
        """The spread per dimension, never below a floor. For the model's vectors the
        floor is each feature's resolution (:data:`STD_FLOOR`): a feature almost every
        user shares would otherwise get a tiny spread, and any centre a little off it
        would sit many units away from everyone."""
        var = self.m2 / self.count if self.count > 1 else np.ones_like(self.mean)
        std = np.sqrt(np.maximum(var, _VAR_FLOOR))
        if std.shape == STD_FLOOR.shape:
            std = np.maximum(std, STD_FLOOR)
        return std

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


def to_vectors(
    columns: Mapping[str, np.ndarray], used: tuple[str, ...] = MODEL_FEATURES
) -> np.ndarray:
    """:func:`to_vector` of many rows at once: ``columns`` holds each model feature as an
    array (no nulls), one value per row; the result is a ``(rows, n_features)`` matrix.

    >>> m = to_vectors({n: np.zeros(3) for n in MODEL_FEATURES})
    >>> m.shape, float(m.max())
    ((3, 11), 0.0)
    """
    raw = np.stack([np.asarray(columns[n], dtype=float) for n in MODEL_FEATURES], axis=1)
    np.minimum(raw, _CAPS, out=raw)
    raw[:, _LOG_MASK] = np.log1p(raw[:, _LOG_MASK])
    if used is not MODEL_FEATURES:
        raw[:, _unused(used)] = 0.0
    return raw
