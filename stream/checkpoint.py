"""The shared model checkpoint and the pure steps that move it forward.

Every process of a consumer group uses one model: the checkpoint in Redis (``seg:model``).
It holds two things:

- the *learning* state (centres, counts, scaler), which every merge moves forward;
- the *published* model (``version``, with its own centres and scaler), a snapshot of the
  learning state taken at most every ``publish_interval_ms`` and at once after any change
  of segments. Processes decide segments with the published model only, so two processes
  at the same ``version`` give the same segment to the same vector, and since every
  process adopts the newest checkpoint at each sync, all are on the same version except
  for at most one sync interval after each publication.

Between syncs each process learns on its own users (River moves its local copy of the
learning centres), and at a sync it hands what it learned, a :class:`ModelDelta`, to
:func:`merge`, which folds it into the newest checkpoint. The store writes the result only
if the checkpoint's ``merges`` count is still the one it read (a fence); otherwise it reads
again and merges again. Merging is additive:

- scaler statistics combine exactly (:meth:`~stream.scaling.OnlineScaler.merged`);
- each process's centre movement since its base version is added to the current centres,
  which for one process is exactly its own learning, and for several is what asynchronous
  stochastic gradient steps on disjoint users amount to;
- counts and recent wins add up.

Structural changes happen only here, where every process sees them: the warm start (seed
from the shared reservoir, k chosen by silhouette), re-seeding a dead centre, a refit, a
rollback. Each bumps the ``epoch``; a delta learned in an older epoch keeps its scaler
statistics but its centre movement is dropped, since it moved centres that are gone. New
centres are matched to old ones (:func:`stream.matching.match_centres`), so a segment id
keeps its meaning, and what was born, retired, merged or split is recorded in ``events``.

The checkpoint is a frozen value (:class:`~stream.checkpoint_value.Checkpoint`, with its
codec to and from the JSON in Redis); every step here returns a new one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stream.checkpoint_value import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    KChoiceRecord,
    PublishedModel,
    ScalerStats,
    usable_features,
)
from stream.errors import ModelError
from stream.matching import Lineage, match_centres
from stream.rfm import RFMSketches, sketches_of
from stream.scaling import DAYS_CAP, MODEL_FEATURES, OnlineScaler, check_model_features, to_human
from stream.selection import KChoice, choose_k, lloyd

#: Recent wins forget with a horizon of about 1,000 user updates.
WIN_DECAY = 0.999
#: Lineage events kept in the checkpoint (older ones are in earlier versions).
KEEP_EVENTS = 100
#: A centre is dead when its share of recent wins is below this fraction of a fair share.
DEAD_SHARE = 0.1
#: Two centres have collapsed onto each other when closer than this fraction of the
#: match threshold; the one with fewer recent wins is then re-seeded.
COLLAPSE_FRACTION = 0.25


@dataclass(frozen=True, slots=True)
class ModelParams:
    """The model's hyperparameters, validated on entry.

    Parameters
    ----------
    k_min, k_max
        Range of segment counts; k is chosen by silhouette on the reservoir at the warm
        start. Equal values fix k.
    warmup_users
        User vectors the shared reservoir must hold before the centres are seeded.
    halflife
        River's step floor: how far the winning centre moves toward a user vector once it
        has learned from many users.
    match_threshold
        Largest distance (in standardised units) a centre may move and keep its segment id
        when centres are replaced.
    reservoir_size
        Most user vectors kept in the shared reservoir.
    publish_interval_ms, publish_updates
        The learning state is published as a new model version when the last
        publication is this old, or when this many user updates were merged since it,
        whichever comes first (a backlog moves through days of event time in seconds).
    refit_interval_ms, refit_updates
        A refit is due when the watermark has moved this much event time since the last
        fit, or this many user updates were merged since it (0 turns either off; both 0:
        no automatic refit). It fits the centres afresh on a snapshot of one vector per
        sampled user as of the watermark (k chosen again), and keeps the result only when
        it lowers the inertia on that snapshot by ``refit_gain`` (or k changed): the
        online learner's centres drift with whoever is active, and can settle in a poor
        local optimum; the refit brings them back to every user, quiet ones included.
    refit_gain
        Relative inertia reduction a refit with an unchanged k must bring to be kept.
    refit_starts
        k-means++ starts per candidate k at a seed or refit (the best is kept).
    k_criterion
        How k is chosen (:func:`stream.selection.choose_k`).
    seed
        Seed of k-means++ and of the k choice.
    features
        The model features clustered on (:func:`stream.scaling.check_model_features`):
        all of them by default; a shop whose events are orders only clusters on recency,
        frequency and monetary value, as its other features are copies of recency or
        constant there.
    """

    k_min: int = 3
    k_max: int = 8
    warmup_users: int = 200
    halflife: float = 0.01
    match_threshold: float = 2.0
    reservoir_size: int = 2000
    publish_interval_ms: int = 10_000
    publish_updates: int = 500
    refit_interval_ms: int = 7 * 86_400_000
    refit_updates: int = 500_000
    refit_gain: float = 0.01
    refit_starts: int = 5
    k_criterion: str = "prediction_strength"
    seed: int = 42
    features: tuple[str, ...] = MODEL_FEATURES

    def __post_init__(self) -> None:
        check_model_features(self.features)
        if self.k_min < 2:
            raise ValueError(f"k_min must be at least 2, got {self.k_min}")
        if self.k_max < self.k_min:
            raise ValueError(f"k_max must be at least k_min ({self.k_min}), got {self.k_max}")
        if self.warmup_users < 2 * self.k_max:
            raise ValueError(
                f"warmup_users must be at least twice k_max ({self.k_max}), got {self.warmup_users}"
            )
        if not 0.0 < self.halflife <= 1.0:
            raise ValueError(f"halflife must be in (0, 1], got {self.halflife}")
        if not self.match_threshold > 0:
            raise ValueError(f"match_threshold must be positive, got {self.match_threshold}")
        if self.refit_updates < 0:
            raise ValueError(f"refit_updates must be 0 or more, got {self.refit_updates}")
        if self.refit_interval_ms < 0:
            raise ValueError(f"refit_interval_ms must be 0 or more, got {self.refit_interval_ms}")
        if not 0.0 <= self.refit_gain < 1.0:
            raise ValueError(f"refit_gain must be in [0, 1), got {self.refit_gain}")
        if self.refit_starts < 1:
            raise ValueError(f"refit_starts must be at least 1, got {self.refit_starts}")
        if self.publish_updates < 1:
            raise ValueError(f"publish_updates must be at least 1, got {self.publish_updates}")
        if self.publish_interval_ms < 0:
            raise ValueError(
                f"publish_interval_ms must be 0 or more, got {self.publish_interval_ms}"
            )
        if self.reservoir_size < self.warmup_users:
            raise ValueError(
                f"reservoir_size must be at least warmup_users ({self.warmup_users}), "
                f"got {self.reservoir_size}"
            )


@dataclass(frozen=True, slots=True)
class ModelDelta:
    """What one process learned since it adopted the checkpoint after merge ``base_merges``."""

    base_merges: int
    epoch: int
    #: Scaler standard deviations of the base version: the units of ``shift``.
    base_std: np.ndarray | None
    #: Movement of each centre since the base version (``None`` before the warm start).
    shift: np.ndarray | None
    #: User updates each centre learned from since the base version.
    counts: np.ndarray | None
    #: User updates learned from since the base version.
    learned: int
    #: Statistics of the raw vectors observed since the base version.
    scaler: OnlineScaler
    #: User updates observed since the base version.
    updates: int
    #: Recent raw vectors, where a dead centre is re-seeded from.
    recent: np.ndarray


def empty_checkpoint(features: tuple[str, ...] = MODEL_FEATURES) -> Checkpoint:
    """A checkpoint before any learning on ``features``: no centres, version 0, epoch 0."""
    return Checkpoint(
        format=CHECKPOINT_FORMAT,
        features=tuple(features),
        merges=0,
        version=0,
        published=None,
        epoch=0,
        ready=False,
        k=0,
        ids=(),
        next_id=0,
        centres=(),
        counts=(),
        recent_wins=(),
        scaler=ScalerStats.of(OnlineScaler.empty(len(MODEL_FEATURES))),
        updates=0,
        k_choice=None,
        events=(),
    )


def check(ckpt: Checkpoint, features: tuple[str, ...] | None = None) -> Checkpoint:
    """Return ``ckpt`` if this code can use it (and it clusters on ``features``, when given),
    else raise :class:`ModelError` saying why."""
    usable_features(ckpt.format, ckpt.features, features)
    return ckpt


def _reexpress(centres: np.ndarray, old: OnlineScaler, new: OnlineScaler) -> np.ndarray:
    """Centres in the units of scaler ``new``, kept where they were in raw space."""
    return new.transform(old.inverse(centres))


def _caused(events: list[dict[str, Any]], cause: str) -> list[dict[str, Any]]:
    return [{**e, "cause": cause} for e in events]


def _rows(centres: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(row) for row in centres.tolist())


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(values.tolist())


def _publish(
    ckpt: Checkpoint, events: list[dict[str, Any]], params: ModelParams, now_ms: int
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """Publish the learning state as the next version if due; stamp and record ``events``.

    Due when the model was just seeded or its segments changed (``events``), or when the
    last publication is ``publish_interval_ms`` old or ``publish_updates`` user updates
    behind.
    """
    pub = ckpt.published
    due = ckpt.ready and (
        bool(events)
        or pub is None
        or now_ms - pub.at_ms >= params.publish_interval_ms
        or ckpt.updates - (pub.updates or 0) >= params.publish_updates
    )
    if due:
        ckpt = replace(
            ckpt,
            version=ckpt.version + 1,
            published=PublishedModel(now_ms, ckpt.updates, ckpt.centres, ckpt.scaler),
        )
    stamped = [{**e, "version": ckpt.version, "epoch": ckpt.epoch, "at_ms": now_ms} for e in events]
    return replace(ckpt, events=(*ckpt.events, *stamped)[-KEEP_EVENTS:]), stamped


def _replace_centres(
    ckpt: Checkpoint, centres: np.ndarray, lineage: Lineage, counts: np.ndarray
) -> Checkpoint:
    return replace(
        ckpt,
        k=len(centres),
        ids=tuple(lineage.ids),
        next_id=lineage.next_id,
        centres=_rows(centres),
        counts=_floats(counts),
        recent_wins=_floats(counts),
        epoch=ckpt.epoch + 1,
    )


def _canonical(points: np.ndarray) -> np.ndarray:
    """Rows in lexicographic order: the fit then depends on the set of users, not on the
    order partitions happened to be read in (a backfill seeds what the live run did)."""
    return points[np.lexsort(points.T[::-1])]


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.argmin(((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2), axis=1)


def merge(
    checkpoint: Checkpoint | None,
    delta: ModelDelta,
    snapshot: np.ndarray | None,
    params: ModelParams,
    now_ms: int,
    watermark_ms: int = 0,
    refit: bool = False,
    structural: bool = True,
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """Fold ``delta`` into ``checkpoint``; return the next version and its new events.

    ``structural=False`` merges the learning only: no dead centre is re-seeded and no
    refit is made (what a stopping process does, as it could not move the members of a
    segment it retired).

    ``snapshot`` (raw model vectors, one per sampled user, as of the watermark) is needed
    only before the warm start (when it holds at least ``warmup_users`` users the centres
    are seeded from it) and when an automatic refit is due (:func:`refit_due`, or
    ``refit``: try one now, kept on the same terms).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d = len(MODEL_FEATURES)
    >>> blobs = np.concatenate([rng.normal(c, 0.1, (100, d)) for c in (0.0, 3.0, 6.0)])
    >>> s = OnlineScaler.empty(d)
    >>> for x in blobs:
    ...     s.learn(x)
    >>> delta = ModelDelta(0, 0, None, None, None, 0, s, len(blobs), blobs[:0])
    >>> ckpt, events = merge(None, delta, blobs, ModelParams(k_min=2, k_max=4), now_ms=0)
    >>> ckpt.ready, ckpt.k, ckpt.merges, ckpt.version, [e["event"] for e in events]
    (True, 3, 1, 1, ['born', 'born', 'born'])
    """
    ckpt = (
        check(checkpoint, params.features)
        if checkpoint is not None
        else empty_checkpoint(params.features)
    )
    old_scaler = ckpt.scaler.to_scaler()
    scaler = old_scaler.merged(delta.scaler)
    ckpt = replace(
        ckpt,
        scaler=ScalerStats.of(scaler),
        updates=ckpt.updates + delta.updates,
        merges=ckpt.merges + 1,
    )
    events: list[dict[str, Any]] = []

    if ckpt.ready:
        centres = _reexpress(np.array(ckpt.centres, float), old_scaler, scaler)
        counts = np.array(ckpt.counts, float)
        wins = np.array(ckpt.recent_wins, float)
        if (
            delta.epoch == ckpt.epoch
            and delta.shift is not None
            and delta.counts is not None
            and delta.base_std is not None
            and delta.shift.shape == centres.shape
        ):
            centres = centres + delta.shift * (delta.base_std / scaler.std)
            counts = counts + delta.counts
            wins = wins * WIN_DECAY**delta.learned + delta.counts
        ckpt = replace(
            ckpt, centres=_rows(centres), counts=_floats(counts), recent_wins=_floats(wins)
        )
        if structural:
            ckpt, reseeded = _reseed_dead(ckpt, scaler, delta.recent, params)
            events += reseeded
        if (
            structural
            and not events
            and snapshot is not None
            and (refit or refit_due(ckpt, params, watermark_ms=watermark_ms))
            # Last: it sorts the snapshot, and a refit is seldom due.
            and _fit_ready(snapshot, params)
        ):
            ckpt, refitted = _refit(ckpt, snapshot, params, "automatic refit", False, watermark_ms)
            events += refitted
    elif snapshot is not None and _fit_ready(snapshot, params):
        ckpt, seeded = _seed(ckpt, snapshot, params, watermark_ms)
        events += seeded
    published = ckpt.version
    ckpt, stamped = _publish(ckpt, events, params, now_ms)
    if ckpt.version != published:
        ckpt = replace(ckpt, rolled_back_from=None)  # it described the previous version
    return ckpt, stamped


def snapshot_scaler(snapshot: np.ndarray) -> OnlineScaler:
    """Scaler statistics of a snapshot: one vector per user, so every user weighs the same
    however often they shop, and the population as it is now, not as it was."""
    n = len(snapshot)
    mean = snapshot.mean(axis=0)
    m2 = ((snapshot - mean) ** 2).sum(axis=0)
    return OnlineScaler(n, mean, m2)


_ORDERS = MODEL_FEATURES.index("frequency")
_NO_ORDER_DAYS = MODEL_FEATURES.index("days_without_purchase")


def population(snapshot: np.ndarray) -> np.ndarray:
    """The typical customer of a snapshot (raw model vectors): the median of each feature,
    except days without an order, which is the median over those with an order over the
    RFM horizon: "longer than usual without an order" means longer than buyers go.

    >>> snap = np.zeros((4, len(MODEL_FEATURES)))
    >>> snap[:, _NO_ORDER_DAYS] = np.log1p([3.0, 5.0, 90.0, 90.0])
    >>> snap[:2, _ORDERS] = np.log1p(2.0)  # two buyers; two never bought in 90 days
    >>> round(float(np.expm1(population(snap)[_NO_ORDER_DAYS])), 1)  # between 3 and 5
    3.9
    """
    out = np.median(snapshot, axis=0)
    buyers = snapshot[:, _ORDERS] > 0
    if buyers.any():
        out[_NO_ORDER_DAYS] = np.median(snapshot[buyers, _NO_ORDER_DAYS])
    return out


def rfm_population(snapshot: np.ndarray) -> RFMSketches:
    """The RFM sketches of a snapshot's users (recency, orders and spend in human units;
    a user with no order over the RFM horizon, or a year or more from one, adds no
    recency)."""
    human = [to_human(row) for row in snapshot]
    return sketches_of(
        (
            h["days_without_purchase"]
            if h["frequency"] >= 0.5 and h["days_without_purchase"] < DAYS_CAP
            else None
            for h in human
        ),
        (h["frequency"] for h in human),
        (h["monetary"] for h in human),
    )


def _fitted(
    ckpt: Checkpoint, snapshot: np.ndarray, watermark_ms: int
) -> tuple[Checkpoint, OnlineScaler]:
    """Record a fit on ``snapshot``: its scaler becomes the learning scaler, its medians
    the typical customer names are given against."""
    scaler = snapshot_scaler(snapshot)
    fitted = replace(
        ckpt,
        scaler=ScalerStats.of(scaler),
        population=_floats(population(snapshot)),
        rfm=rfm_population(snapshot).to_dict(),
        fitted_at_updates=ckpt.updates,
        fitted_at_event_ms=int(watermark_ms),
    )
    return fitted, scaler


def _fit_ready(snapshot: np.ndarray, params: ModelParams) -> bool:
    """Whether ``snapshot`` can be fitted: ``warmup_users`` users, and more distinct
    vectors than the fewest segments allowed. A stream's first users can all look alike
    (one view each, at one instant); the model then keeps warming up rather than fail."""
    return len(snapshot) >= params.warmup_users and len(np.unique(snapshot, axis=0)) > params.k_min


def _k_choice(choice: KChoice) -> KChoiceRecord:
    return KChoiceRecord(
        k=choice.k,
        scores=tuple((k, round(v, 4)) for k, v in choice.scores.items()),
        n_points=choice.n_points,
        reason=choice.reason,
    )


def _choose(
    points: np.ndarray, params: ModelParams, epoch: int, current_k: int | None = None
) -> KChoice:
    return choose_k(
        points,
        params.k_min,
        params.k_max,
        np.random.default_rng(params.seed + epoch),
        n_init=params.refit_starts,
        criterion=params.k_criterion,
        current_k=current_k,
    )


def _seed(
    ckpt: Checkpoint, snapshot: np.ndarray, params: ModelParams, watermark_ms: int
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    ckpt, scaler = _fitted(ckpt, snapshot, watermark_ms)
    points = scaler.transform(_canonical(snapshot))
    choice = _choose(points, params, ckpt.epoch)
    lineage = match_centres(np.empty((0, points.shape[1])), [], choice.centres, ckpt.next_id, 1.0)
    counts = np.bincount(_nearest(points, choice.centres), minlength=choice.k).astype(float)
    ckpt = _replace_centres(ckpt, choice.centres, lineage, counts)
    ckpt = replace(ckpt, ready=True, k_choice=_k_choice(choice))
    return ckpt, _caused(lineage.events(), "warm start: " + choice.reason)


def _reseed_dead(
    ckpt: Checkpoint,
    scaler: OnlineScaler,
    recent_raw: np.ndarray,
    params: ModelParams,
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """Move dead or collapsed centres to where users are worst served.

    A centre is dead when its share of recent wins is below a tenth of a fair share (and
    there is enough evidence: at least 20 wins per centre), but only when no refit is
    ever due: with refits, a centre that wins no recent update is the segment of customers
    who went quiet (the dormant, whom the sweep keeps re-deciding without an update), and
    the refit on one vector per user is what corrects a poor fit. Two centres have collapsed
    when they are closer than a quarter of the match threshold, and the one with fewer
    recent wins goes. It is re-seeded at the recent user farthest from every other
    centre; matching then records the old segment as retired (merged into its neighbour
    when it had collapsed onto it) and the new one as born.
    """
    k = ckpt.k
    wins = np.array(ckpt.recent_wins, float)
    if wins.sum() < 20 * k or len(recent_raw) < 2 * k:
        return ckpt, []
    share = wins / wins.sum()
    old = np.array(ckpt.centres, float)
    refits = bool(params.refit_updates or params.refit_interval_ms)
    dead = [] if refits else [j for j in range(k) if share[j] < DEAD_SHARE / k]
    gaps = np.sqrt(((old[:, None, :] - old[None, :, :]) ** 2).sum(axis=2))
    for i in range(k):
        for j in range(i + 1, k):
            if gaps[i, j] < COLLAPSE_FRACTION * params.match_threshold:
                loser = i if wins[i] < wins[j] else j
                if loser not in dead:
                    dead.append(loser)
    if not dead:
        return ckpt, []
    centres = old.copy()
    counts = np.array(ckpt.counts, float)
    points = scaler.transform(recent_raw)
    for j in dead:
        others = np.delete(centres, j, axis=0)
        gap = ((points[:, None, :] - others[None, :, :]) ** 2).sum(axis=2).min(axis=1)
        centres[j] = points[int(np.argmax(gap))]
        counts[j] = 1.0
        wins[j] = wins.sum() / k
    lineage = match_centres(old, ckpt.ids, centres, ckpt.next_id, params.match_threshold)
    # Every id survived: nothing structural happened, and the epoch stays.
    epoch = ckpt.epoch + 1 if lineage.events() else ckpt.epoch
    ckpt = _replace_centres(ckpt, centres, lineage, counts)
    ckpt = replace(ckpt, recent_wins=_floats(wins), epoch=epoch)
    return ckpt, _caused(lineage.events(), "re-seeded a dead or collapsed centre")


def refit(
    checkpoint: Checkpoint,
    snapshot: np.ndarray,
    params: ModelParams,
    now_ms: int,
    watermark_ms: int = 0,
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """Fit the centres afresh on ``snapshot`` (k chosen again), kept whatever the gain,
    and match them to the old: segment ids whose centres moved less than
    ``match_threshold`` are kept; the rest are born or retired, with merges and splits
    recorded."""
    ckpt = check(checkpoint, params.features)
    if not ckpt.ready:
        raise ModelError("the model has not been seeded yet; there is nothing to refit")
    if len(snapshot) < params.warmup_users:
        raise ModelError(
            f"the user sample holds {len(snapshot)} users, fewer than warmup_users "
            f"({params.warmup_users}); let more traffic through first"
        )
    ckpt = replace(ckpt, merges=ckpt.merges + 1)
    ckpt, events = _refit(ckpt, snapshot, params, "refit", True, watermark_ms)
    return _publish(ckpt, events, params, now_ms)


def refit_due(
    ckpt: Checkpoint | None, params: ModelParams, pending: int = 0, watermark_ms: int = 0
) -> bool:
    """Whether an automatic refit is due (and so needs the snapshot) once ``pending`` more
    user updates are merged into ``ckpt`` at ``watermark_ms``: ``refit_interval_ms`` of
    event time or ``refit_updates`` user updates since the last fit."""
    if ckpt is None or not ckpt.ready:
        return False
    since = ckpt.updates + pending - (ckpt.fitted_at_updates or 0)
    if params.refit_updates and since >= params.refit_updates:
        return True
    fitted_at = ckpt.fitted_at_event_ms or 0
    return bool(params.refit_interval_ms) and watermark_ms - fitted_at >= params.refit_interval_ms


def _inertia(points: np.ndarray, centres: np.ndarray) -> float:
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    return float(d2.min(axis=1).sum())


def _refit(
    ckpt: Checkpoint,
    snapshot: np.ndarray,
    params: ModelParams,
    what: str,
    force: bool,
    watermark_ms: int,
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """Refit ``ckpt`` on ``snapshot``; unless ``force``, keep the new centres only if k
    changed or they lower the inertia on the snapshot by ``refit_gain``."""
    old_scaler = ckpt.scaler.to_scaler()
    old_population = ckpt.population
    ckpt, scaler = _fitted(ckpt, snapshot, watermark_ms)
    points = scaler.transform(_canonical(snapshot))
    old = _reexpress(np.array(ckpt.centres, float), old_scaler, scaler)
    choice = _choose(points, params, ckpt.epoch, current_k=len(old))
    centres = choice.centres
    if choice.k == len(old):
        # The old centres are one more start: Lloyd from them keeps ids where the groups
        # did not move, and the better of the two fits is kept.
        warm, _ = lloyd(points, old.copy())
        if _inertia(points, warm) < _inertia(points, centres):
            centres = warm
    before, after = _inertia(points, old), _inertia(points, centres)
    if not force and choice.k == len(old) and after >= (1.0 - params.refit_gain) * before:
        # Not worth it: keep the centres (in the snapshot's units) and the old population.
        kept = old_population if old_population is not None else ckpt.population
        return replace(ckpt, centres=_rows(old), population=kept), []
    lineage = match_centres(old, ckpt.ids, centres, ckpt.next_id, params.match_threshold)
    counts = np.bincount(_nearest(points, centres), minlength=len(centres)).astype(float)
    ckpt = _replace_centres(ckpt, centres, lineage, counts)
    ckpt = replace(ckpt, k_choice=_k_choice(choice), rolled_back_from=None)
    moved = {str(i): round(d, 4) for i, d in lineage.kept.items()}
    n = len(points)
    cause = (
        f"{what} on {n:,} users (inertia {before / n:.3f} -> {after / n:.3f} per user): "
        f"{choice.reason}; kept {moved}"
    )
    # A refit always publishes, even when every id survived: its centres are new.
    return ckpt, _caused(lineage.events(), cause) or [{"event": "refit", "cause": cause}]


def rollback(
    current: Checkpoint, old: Checkpoint, now_ms: int
) -> tuple[Checkpoint, list[dict[str, Any]]]:
    """Publish checkpoint ``old``'s model again, as a new version in a new epoch.

    History is never rewritten: the version number moves on, and ids born since ``old``
    are never given out again (``next_id`` keeps the newer value).
    """
    current = check(current)
    old = check(old, current.features)
    ckpt = replace(
        old,
        merges=current.merges + 1,
        version=current.version,
        epoch=current.epoch + 1,
        next_id=max(current.next_id, old.next_id),
        rolled_back_from=old.version,
        events=current.events,
    )
    if old.published is not None:
        # The version rolled back to is what is published again, not the learning that
        # had happened after it.
        ckpt = replace(ckpt, centres=old.published.centres, scaler=old.published.scaler)
    cur_ids, old_ids = set(current.ids), set(old.ids)
    cause = f"rolled back to version {old.version}"
    events: list[dict[str, Any]] = [
        {"event": "retired", "segment": i, "cause": cause} for i in sorted(cur_ids - old_ids)
    ] + [{"event": "restored", "segment": i, "cause": cause} for i in sorted(old_ids - cur_ids)]
    if not events:
        events = [{"event": "rolled_back", "cause": cause}]
    # Any params will do: events make the publication due at once.
    return _publish(ckpt, events, ModelParams(), now_ms)


def retired_ids(events: list[dict[str, Any]]) -> list[int]:
    """Segment ids that ``events`` retired (their members need a new segment)."""
    return sorted({int(e["segment"]) for e in events if e["event"] == "retired"})
