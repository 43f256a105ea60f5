"""The clustering model a process works with: the shared checkpoint plus local learning.

River's :class:`river.cluster.KMeans` is the learning engine. Around it this module keeps
what one process needs between syncs of the shared model (:mod:`stream.checkpoint`):

- the adopted checkpoint's published model, frozen: its scaler and centres are what
  segments are decided with, so every process at the same version decides alike;
- a River K-Means holding a local copy of the checkpoint's learning centres, which learns
  once per user update with a counted step, and the statistics of what was observed since
  the adoption; these make the :class:`~stream.checkpoint.ModelDelta` handed to the next
  merge;
- the most recent user vectors, where a dead centre is re-seeded from (and, for a model
  without Redis, :meth:`SegmentModel.sync_local`, what it is seeded and refitted on).

Processes share the fits through Redis: seeds and refits are made on a snapshot of one
vector per sampled user as of the watermark (:meth:`state.redis_store.RedisStore.snapshot`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from river import cluster

from stream.checkpoint import (
    Checkpoint,
    ModelDelta,
    ModelParams,
    check,
    empty_checkpoint,
    merge,
)
from stream.decision import Decision, decide, decide_many
from stream.rfm import RFMSketches
from stream.scaling import MODEL_FEATURES, OnlineScaler

_RECENT_POINTS = 256


class SegmentModel:
    """One process's view of the shared model.

    Parameters
    ----------
    params
        The model's hyperparameters.

    Examples
    --------
    Alone (without Redis), :meth:`sync_local` merges into the process's own checkpoint:

    >>> import numpy as np
    >>> m = SegmentModel(ModelParams(k_min=2, k_max=2, warmup_users=8, reservoir_size=8))
    >>> m.population is None
    True
    >>> rng = np.random.default_rng(0)
    >>> for v in rng.normal(size=(8, len(MODEL_FEATURES))):
    ...     m.observe(v)
    >>> m.ready
    False
    >>> _ = m.sync_local(now_ms=0)
    >>> m.ready, m.version, m.ids, m.distances(m.scale(np.zeros(len(MODEL_FEATURES)))).shape
    (True, 1, [0, 1], (2,))
    """

    def __init__(self, params: ModelParams | None = None) -> None:
        self.params = params or ModelParams()
        self.features = MODEL_FEATURES
        #: Users seen before the centres were seeded, still to get a first segment.
        self.unassigned: list[str] = []
        self._recent: deque[np.ndarray] = deque(maxlen=_RECENT_POINTS)
        self._local_reservoir: deque[np.ndarray] = deque(maxlen=self.params.reservoir_size)
        self.adopt(empty_checkpoint(self.params.features))

    # -- the adopted checkpoint -----------------------------------------------------------

    def adopt(self, checkpoint: Checkpoint) -> None:
        """Make ``checkpoint`` the one decisions use, and restart local learning on it."""
        ckpt = check(checkpoint, self.params.features)
        #: The adopted checkpoint.
        self.checkpoint = ckpt
        self.merges = ckpt.merges
        self.epoch = ckpt.epoch
        self.updates = ckpt.updates
        # What decisions use: the published model.
        pub = ckpt.published
        self.ready = pub is not None
        self.version = ckpt.version
        self.ids: list[int] = list(ckpt.ids) if self.ready else []
        #: The typical customer's raw vector (medians of the last fit's snapshot), which
        #: segment names are given against; ``None`` before a fit recorded one.
        self.population: tuple[float, ...] | None = ckpt.population
        #: The population's RFM sketches from the last fit, which users are scored against.
        self.rfm: RFMSketches | None = ckpt.rfm_sketches()
        self._slots = {sid: j for j, sid in enumerate(self.ids)}
        d = len(self.features)
        self.scaler = (pub.scaler if pub else ckpt.scaler).to_scaler()
        self._centres = np.array(pub.centres if pub else (), float).reshape(len(self.ids), d)
        # What learning starts from: the learning state.
        self._learn_scaler = ckpt.scaler.to_scaler()
        self._base = np.array(ckpt.centres, float).reshape(len(ckpt.ids), d)
        self._counts = np.array(ckpt.counts, float)
        self.kmeans: cluster.KMeans | None = None
        if self.ready:
            self.kmeans = cluster.KMeans(
                n_clusters=len(self.ids), halflife=self.params.halflife, seed=self.params.seed
            )
            for j, row in enumerate(self._base):
                self.kmeans.centers[j].update(zip(self.features, map(float, row), strict=True))
        #: River's centres as a matrix, kept in step with them row by row.
        self._local = self._base.copy()
        self._local_counts = np.zeros(len(self._base))
        self._learned = 0
        self._seen = OnlineScaler.empty(d)
        self._observed = 0

    @property
    def n_clusters(self) -> int:
        return len(self.ids)

    def centres(self) -> np.ndarray:
        """The published centres, scaled, as a ``(k, n_features)`` matrix."""
        return self._centres

    def slot(self, segment: int | None) -> int | None:
        """Row of ``segment`` in :meth:`centres`, or ``None`` if it is not a current segment."""
        return None if segment is None else self._slots.get(segment)

    def scale(self, raw: np.ndarray) -> np.ndarray:
        return self.scaler.transform(raw)

    def distances(self, z: np.ndarray) -> np.ndarray:
        """Euclidean distances from scaled vector(s) ``z`` to every adopted centre."""
        c = self._centres
        if z.ndim == 1:
            return np.sqrt(((c - z) ** 2).sum(axis=1))
        return np.sqrt(((z[:, None, :] - c[None, :, :]) ** 2).sum(axis=2))

    def decide(self, current: int | None, z: np.ndarray, d: np.ndarray, margin: float) -> Decision:
        """:func:`~stream.decision.decide` in segment ids rather than rows.

        A user whose segment was retired has no current row: they move to the nearest
        segment without hysteresis, and the decision still names the old segment.
        """
        dec = decide(self.slot(current), z, self._centres, d, margin, self.features)
        return replace(
            dec,
            segment=self.ids[dec.segment],
            previous=current,
            runner_up=self.ids[dec.runner_up],
        )

    def decide_many(
        self, current: Sequence[int | None], z: np.ndarray, d: np.ndarray, margin: float
    ) -> list[Decision]:
        """:meth:`decide` for the users of ``current`` (segment ids), scaled vectors ``z``
        and distances ``d`` in rows, computed for all of them at once
        (:func:`~stream.decision.decide_many`)."""
        rows = np.array([-1 if (r := self.slot(c)) is None else r for c in current], dtype=np.int64)
        chosen, runner_up, gap, top = decide_many(rows, z, self._centres, d, margin)
        ids, names = self.ids, self.features
        return [
            Decision(
                ids[c],
                cur,
                ids[r],
                round(float(g), 4),
                tuple(names[i] for i in t if i >= 0),
            )
            for cur, c, r, g, t in zip(
                current,
                chosen.tolist(),
                runner_up.tolist(),
                gap.tolist(),
                top.tolist(),
                strict=True,
            )
        ]

    # -- local learning -------------------------------------------------------------------

    def observe(self, raw: np.ndarray) -> None:
        """Count one user vector for the scaler and keep it among the recent ones."""
        self._seen.learn(raw)
        self._observed += 1
        self._recent.append(raw)
        self._local_reservoir.append(raw)

    def learn(self, raw: np.ndarray) -> None:
        """Move the nearest local centre toward user vector ``raw`` with River's update.

        The step is ``max(1 / (n + 1), halflife)`` for a centre that has learned from ``n``
        user updates (across every process, up to the last sync): a running mean while a
        centre is young (River's fixed step would let the last few users drag it about),
        and never less than ``halflife``, so centres keep following drifting behaviour.
        """
        if self.kmeans is None:
            return
        z = self._learn_scaler.transform(raw)
        local = self._local
        j = int(np.argmin(((local - z) ** 2).sum(axis=1)))
        n = self._counts[j] + self._local_counts[j]
        self.kmeans.halflife = max(1.0 / (n + 1.0), self.params.halflife)
        self.kmeans.learn_one(dict(zip(self.features, map(float, z), strict=True)))
        self.kmeans.halflife = self.params.halflife
        centre = self.kmeans.centers[j]
        local[j] = [centre[f] for f in self.features]  # the one row River moved
        self._local_counts[j] += 1
        self._learned += 1

    def local_centres(self) -> np.ndarray:
        """The learning centres as this process has moved them since the last sync (in the
        units of the checkpoint's learning scaler, not the published one)."""
        return self._local.copy()

    # -- syncing --------------------------------------------------------------------------

    def delta(self) -> ModelDelta:
        """What this process learned since it adopted the current checkpoint."""
        recent = np.stack(self._recent) if self._recent else np.empty((0, len(self.features)))
        return ModelDelta(
            base_merges=self.merges,
            epoch=self.epoch,
            base_std=self._learn_scaler.std if self.ready else None,
            shift=self.local_centres() - self._base if self.ready else None,
            counts=self._local_counts.copy() if self.ready else None,
            learned=self._learned,
            scaler=OnlineScaler(self._seen.count, self._seen.mean.copy(), self._seen.m2.copy()),
            updates=self._observed,
            recent=recent,
        )

    @property
    def observed(self) -> int:
        """User updates observed since the last adoption."""
        return self._observed

    @property
    def dirty(self) -> bool:
        """Whether anything was observed since the last adoption."""
        return self._observed > 0

    def sync_local(self, now_ms: int, watermark_ms: int = 0) -> list[dict[str, Any]]:
        """Merge into this process's own checkpoint (no other process, no Redis); its
        newest ``reservoir_size`` observed vectors stand in for the snapshot."""
        reservoir = np.stack(self._local_reservoir) if self._local_reservoir else None
        ckpt, events = merge(
            self.checkpoint, self.delta(), reservoir, self.params, now_ms, watermark_ms
        )
        self.adopt(ckpt)
        return events
