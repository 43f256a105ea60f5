"""Model sync: one process's learning merged into the group's model, and the result adopted.

Every process decides with the published centres of the checkpoint it adopted and learns
locally between syncs. :meth:`ModelSync.sync` merges that learning into the shared
checkpoint in Redis under a version fence (:meth:`state.model_store.ModelCheckpoints.commit_model`,
:func:`stream.checkpoint.merge`): the warm start, publication of new versions, refits and
rollbacks all happen there, and every process adopts what the merge produced. What an
adoption starts is handed back to the loop as flags: segments that changed (every user
due for a new look), queued users to decide, retired segments whose members must move.

The segment catalogue (``seg:segments``: names, descriptions, centroids, sizes) and the
quality gauges are refreshed here too, from the adopted model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from consumers.wiring import Wiring
from stream.checkpoint import Checkpoint, empty_checkpoint, merge, refit_due, retired_ids
from stream.errors import ModelError, RedisError
from stream.feature_registry import DAY_MS
from stream.naming import profiles
from stream.selection import silhouette

__all__ = ["ModelSync"]

log = logging.getLogger("segmenter")

#: Sampled users the live silhouette gauge is computed on (it is quadratic).
QUALITY_SAMPLE = 1000
#: Seconds between two computations of the silhouette gauge, unless the segments changed.
#: Reading and featurising the sample and the silhouette take about 100 ms of a process's
#: CPU, measured: at every catalogue refresh (5 s), that was 2% of each process.
QUALITY_INTERVAL_S = 30.0


class ModelSync:
    """Merges, adopts, and keeps the catalogue and model gauges up to date.

    Parameters
    ----------
    wiring
        The process's settings, Redis store, metrics, model (adopted in place), segment
        names and event-time clock.
    sample_size
        How many users the model's user sample holds (the warm start waits for
        ``warmup_users`` of them).
    activity
        ``(monotonic time of the last batch or None, segment moves, users updated)`` so
        far: when the input went idle, and the flap ratio's counts.
    """

    def __init__(
        self,
        wiring: Wiring,
        sample_size: Callable[[], int],
        activity: Callable[[], tuple[float | None, int, int]],
    ) -> None:
        self.settings = wiring.settings
        self.store = wiring.store
        self.metrics = wiring.metrics
        self.model = wiring.model
        self.names = wiring.names
        self.watermark = wiring.watermark
        self._sample_size = sample_size
        self._activity = activity
        #: The segments themselves changed (a refit, a re-seed, a rollback), or their
        #: centres moved far since every user was last re-decided: every user of this
        #: process's partitions is to be re-decided. The loop clears it.
        self.resweep = False
        #: Why, for the log: "segments changed" or "centres moved".
        self.resweep_cause = ""
        #: The centres moved (not the segments): every partition is to be re-decided, even
        #: one already re-decided under this model's epoch. The loop clears it.
        self.resweep_every_partition = False
        #: The centres (and their ids) as of the last re-decision of every user.
        self._swept_centres: tuple[list[int], np.ndarray] | None = None
        #: Queued users may be waiting for this process. The loop clears it.
        self.reassess_pending = False
        #: Retired segments whose members are still to be queued, and the retiring version.
        self.to_queue: dict[int, int] = {}
        self.last_sync = time.monotonic()
        self.last_catalogue = 0.0
        #: When the silhouette gauge was last computed, and for which segment ids.
        self._quality_at: tuple[float, tuple[int, ...]] = (-math.inf, ())
        self._last_refit_wall = 0.0
        self._moves_at_refresh = (0, 0)
        #: The next segment id and model version a model started afresh begins at: the
        #: highest the group's committed offsets carry (stream.state_gaps), so that a
        #: model lost with Redis's key space never gives an id or version out twice.
        self.id_floor = (0, 0)

    def raise_id_floor(self, next_id: int, version: int) -> None:
        """Raise :attr:`id_floor` to ``(next_id, version)`` where they are higher."""
        self.id_floor = (max(self.id_floor[0], next_id), max(self.id_floor[1], version))

    def _start_from(self) -> Checkpoint | None:
        """What to merge into when Redis has no model: the version this process adopted,
        published again (Redis lost it), or an empty model whose ids and versions begin
        past every one downstream readers have seen; ``None`` if neither applies."""
        own = self.model.checkpoint
        if own.version > 0:
            log.warning(
                "Redis has no model: publishing this process's version %d again", own.version
            )
            return own
        next_id, version = self.id_floor
        if next_id or version:
            log.info(
                "Redis has no model: a new one starts at segment id %d and version %d, past "
                "every one published before",
                next_id,
                version + 1,
            )
            return replace(
                empty_checkpoint(self.model.params.features), next_id=next_id, version=version
            )
        return None

    def _past_floor(self, current: Checkpoint) -> Checkpoint:
        """``current`` with its next segment id and version past :attr:`id_floor`: a model
        older than what the committed offsets record (a replica promoted before it got the
        last one) must not give out again an id or a version readers have seen."""
        next_id, version = self.id_floor
        if current.next_id >= next_id and current.version >= version:
            return current
        log.warning(
            "Redis's model (version %d, next segment id %d) is older than the one the "
            "committed offsets record (version %d, next id %d): new segments and versions "
            "start past those",
            current.version,
            current.next_id,
            version,
            next_id,
        )
        return replace(
            current, next_id=max(current.next_id, next_id), version=max(current.version, version)
        )

    # -- start-up -------------------------------------------------------------------------

    def restore(self) -> None:
        """Adopt the checkpoint in Redis, if there is one."""
        checkpoint = self.store.load_model()
        if checkpoint is not None:
            self.model.adopt(checkpoint)
            self.names.refresh(self.model)
            self.reassess_pending = self.model.ready
            log.info(
                "adopted model version %d (%d segments)", self.model.version, self.model.n_clusters
            )
        self.gauges()

    # -- when -----------------------------------------------------------------------------

    def due(self, now: float) -> bool:
        """Whether to sync now. Until the warm start, after every batch: the sooner the
        user sample is full, the sooner users get segments. After it, every
        ``model_sync_interval_s``, or sooner when this process has learned from
        ``model_sync_updates`` users (a backlog moves through days of event time fast)."""
        s, model = self.settings, self.model
        warming = not model.ready and model.dirty
        return (
            warming
            or model.observed >= s.model_sync_updates
            or now - self.last_sync >= s.model_sync_interval_s
        )

    def caught_up(self, now: float) -> bool:
        """Whether the input has been idle a while and the watermark moved a day or more
        past the last fit (see :meth:`sync`)."""
        s, model = self.settings, self.model
        last, _, _ = self._activity()
        return (
            model.ready
            and last is not None
            and now - last >= 2 * s.model_sync_interval_s
            and now - self._last_refit_wall >= s.model_refit_min_interval_s
            and self.watermark.value - (model.checkpoint.fitted_at_event_ms or 0) >= DAY_MS
        )

    def refit_tried(self, now: float) -> None:
        """Count a refit try at ``now``: one per interval, even if Redis is away."""
        self._last_refit_wall = now

    # -- merge and adopt ------------------------------------------------------------------

    def sync(self, caught_up: bool = False, final: bool = False) -> None:
        """Merge what this process learned into the shared model, and adopt the result.

        The merge runs under a version fence, so when several processes sync at once each
        merge sees the others' and none is lost. A process with nothing new only adopts a
        newer version if there is one. If Redis is away the local learning is kept and
        merged at the next sync.

        ``caught_up``: the input is idle and the watermark moved a day or more since the
        last fit: refit now (if it lowers the inertia), so a backlog just drained, or a
        quiet night, ends on centres fitted to the users as they are now.

        ``final``: the process is stopping; it merges its learning but changes no segment
        (no re-seed, no refit), as it could no longer move the members of one it retired.
        """
        self.last_sync = time.monotonic()
        model, s = self.model, self.settings
        now_ms = int(time.time() * 1000)
        try:
            if not model.dirty and not caught_up:
                stored = self.store.load_model()
                if stored is not None and stored.merges != model.merges:
                    self._adopt(stored, [])
                return
            delta = model.delta()
            params = model.params
            wm = self.watermark.value
            refit_allowed = (
                caught_up
                or time.monotonic() - self._last_refit_wall >= s.model_refit_min_interval_s
            )
            tried = {"refit": False}  # whether the build that was committed tried a refit

            def build(
                current: Checkpoint | None,
            ) -> tuple[Checkpoint, list[dict[str, Any]]]:
                if current is None:
                    current = self._start_from()
                else:
                    current = self._past_floor(current)
                seeding = (current is None or not current.ready) and (
                    self._sample_size() >= params.warmup_users
                )
                refit = (
                    not final
                    and refit_allowed
                    and (caught_up or refit_due(current, params, delta.updates, wm))
                )
                snapshot = (
                    self.store.snapshot(wm, s.rfm_horizon, used=params.features)
                    if seeding or refit
                    else None
                )
                tried["refit"] = refit
                if refit:
                    self._last_refit_wall = time.monotonic()
                return merge(
                    current,
                    delta,
                    snapshot,
                    params,
                    now_ms,
                    wm,
                    refit=caught_up,
                    structural=not final,
                )

            ckpt, events = self.store.commit_model(
                build, int(s.checkpoint_interval_s * 1000), now_ms, keep=s.model_versions_kept
            )
        except (RedisError, ModelError) as exc:
            self.metrics.model_syncs.labels("failed").inc()
            if isinstance(exc, RedisError):
                self.metrics.redis_errors.inc()
            log.warning("model not synced: %s", exc)
            return
        self.metrics.model_syncs.labels("merged").inc()
        if tried["refit"]:
            kept = any("refit" in str(e.get("cause", "")) for e in events)
            self.metrics.refits.labels("kept" if kept else "not_kept").inc()
        self._adopt(ckpt, events)

    def _adopt(self, ckpt: Checkpoint, events: list[dict[str, Any]]) -> None:
        before = self.model.centres() if self.model.ready else None
        ids = list(self.model.ids)
        was_ready, version, epoch = self.model.ready, self.model.version, self.model.epoch
        self.model.adopt(ckpt)
        if was_ready and self.model.ready and self.model.epoch != epoch:
            # The segments themselves changed (a refit, a re-seed, a rollback): every user
            # is re-decided by the sweep, not only those who send an event.
            self._resweep("segments changed")
        if before is not None and ids == self.model.ids:
            drift = float(np.sqrt(((self.model.centres() - before) ** 2).sum(axis=1)).max())
            self.metrics.model_sync_drift.set(drift)
        if self.model.ready:
            self._check_moved()

        for e in events:
            self.metrics.lineage_events.labels(str(e["event"])).inc()
            log.info(
                "segment %s %s (%s)",
                e.get("segment"),
                e["event"],
                ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("event", "segment")),
            )
        # Every process queues the members of the segments its adoption retires, not only
        # the one whose merge retired them: users this process moved into such a segment
        # while it still had it joined its members after the retiring process listed them.
        retired = sorted(set(ids) - set(self.model.ids)) if was_ready else []
        retired = sorted({*retired, *retired_ids(events)})
        for seg in retired:
            self.to_queue[seg] = self.model.version
        self.queue_retired()
        if self.model.ready and self.model.version != version:
            # Entries left for a newer version than the one this process had are due now.
            self.reassess_pending = True
        if self.model.ready and (not was_ready or ids != self.model.ids):
            if not was_ready:
                log.info("model seeded: %s", ckpt.k_choice.reason if ckpt.k_choice else "")
            self.refresh_catalogue()
        self.gauges()

    def _resweep(self, cause: str) -> None:
        self.resweep, self.resweep_cause = True, cause
        self.metrics.resweeps.labels(cause.replace(" ", "_")).inc()
        self._swept_centres = (list(self.model.ids), self.model.centres().copy())

    def _check_moved(self) -> None:
        """Re-decide everyone once the centres have moved ``resweep_drift`` since the last
        time everyone was: a quiet user's timer was set by the centres of then, and
        centres learned online since may put them in another segment already."""
        limit = self.settings.resweep_drift
        swept = self._swept_centres
        ids, centres = list(self.model.ids), self.model.centres()
        if swept is None or swept[0] != ids or swept[1].shape != centres.shape:
            # A new set of segments (or the first): the users were decided by it anyway.
            self._swept_centres = (ids, centres.copy())
            return
        moved = float(np.sqrt(((centres - swept[1]) ** 2).sum(axis=1)).max())
        if limit > 0 and moved >= limit:
            self._resweep("centres moved")
            self.resweep_every_partition = True

    def queue_retired(self) -> None:
        """Queue the members of retired segments; what Redis refuses is tried again later."""
        if not self.to_queue:
            return
        segments = sorted(self.to_queue)
        version = max(self.to_queue.values())
        try:
            n = self.store.queue_members(segments, version)
        except RedisError as exc:
            self.metrics.redis_errors.inc()
            log.warning("members of retired segments %s not queued yet: %s", segments, exc)
            return
        self.to_queue.clear()
        self.reassess_pending = True
        log.info(
            "segments %s retired at model version %d: %d more members queued to move",
            segments,
            version,
            n,
        )

    def gauges(self) -> None:
        m = self.metrics
        m.model_version.set(self.model.version)
        m.model_epoch.set(self.model.epoch)
        m.model_ready.set(1 if self.model.ready else 0)
        m.model_segments.set(self.model.n_clusters)

    # -- the catalogue --------------------------------------------------------------------

    def refresh_catalogue(self) -> None:
        """Rename segments from their profiles, publish sizes to ``seg:segments``, and
        update the quality gauges (the silhouette when the segments changed, and every
        :data:`QUALITY_INTERVAL_S` otherwise)."""
        now = self.last_catalogue = time.monotonic()
        if not self.model.ready:
            return
        model, m = self.model, self.metrics
        ids = tuple(model.ids)
        quality_due = now - self._quality_at[0] >= QUALITY_INTERVAL_S or self._quality_at[1] != ids
        self.names.refresh(model)
        profs = profiles(model.centres(), model.scaler, model.ids, population=model.population)
        # Segment ids this model does not have: their membership sets must be empty.
        retired = sorted(set(range(model.checkpoint.next_id)) - set(model.ids))
        try:
            sizes = self.store.segment_sizes(model.ids)
            self.store.write_catalogue(profs, sizes)
            sample = (
                self.store.snapshot(
                    self.watermark.value,
                    self.settings.rfm_horizon,
                    limit=QUALITY_SAMPLE,
                    used=model.params.features,
                )
                if quality_due
                else None
            )
            left = self.store.segment_sizes(retired) if retired else []
        except RedisError as exc:
            m.redis_errors.inc()
            log.warning("catalogue not refreshed: %s", exc)
            return
        # A process still on an older version can move users into a segment after the
        # retiring process (and every other that adopted the retirement) listed its
        # members, and die before it adopts the retirement itself: those users are found
        # here, by whichever process looks next.
        for seg, n in zip(retired, left, strict=True):
            if n:
                self.to_queue[seg] = model.version
        m.segment_users.clear()
        for p, size in zip(profs, sizes, strict=True):
            m.segment_users.labels(str(p.segment), p.name).set(size)
        total = sum(sizes)
        if total and model.n_clusters > 1:
            probs = [n / total for n in sizes if n]
            m.size_entropy.set(-sum(p * math.log(p) for p in probs) / math.log(model.n_clusters))
        if sample is not None:
            self._quality_at = (now, ids)
        if sample is not None and len(sample) > model.n_clusters:
            z = model.scale(sample)
            labels = np.argmin(model.distances(z), axis=1)
            if len(set(labels.tolist())) > 1:
                m.silhouette.set(silhouette(z, labels))
        _, moves, updated = self._activity()
        d_moves, d_updated = moves - self._moves_at_refresh[0], updated - self._moves_at_refresh[1]
        if d_updated > 0:
            m.flap_ratio.set(d_moves / d_updated)
        self._moves_at_refresh = (moves, updated)
