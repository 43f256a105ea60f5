"""The shared model checkpoint as a frozen, typed value, and its one codec.

:mod:`stream.checkpoint` moves the checkpoint forward (merges, seeds, refits, rollbacks);
this module says what it holds and how it is written. The store keeps it in Redis as
JSON (``seg:model``, and each kept version in ``seg:model:versions``), made with
:meth:`Checkpoint.to_dict` and read back with :meth:`Checkpoint.from_dict`, the only two
places where its keys are spelled.

The plain dict holds the keys the checkpoint has always been written with, so processes
of older and newer releases can share one checkpoint:

- a checkpoint written by an older release lacks the keys added since (``population``,
  ``rfm``, ``fitted_at_event_ms``, ...): they read as ``None``, and are written once set;
- keys are written in one fixed order (the required ones, then the optional ones that are
  set, then unknown ones), so the same checkpoint is always the same bytes; the store puts
  ``merges`` first for its fence script;
- a key this release does not know (written by a newer one) is carried unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream.errors import ModelError
from stream.rfm import RFMSketches
from stream.scaling import OnlineScaler, check_model_features

CHECKPOINT_FORMAT = 2

#: One row per centre, one value per model feature (in the units of a scaler).
Matrix = tuple[tuple[float, ...], ...]

_FRESH = "delete the seg:model key (and seg:model:versions) to start a fresh model"

#: Keys every checkpoint holds, in the order a fresh one is written with.
_REQUIRED = (
    "format",
    "features",
    "merges",
    "version",
    "published",
    "epoch",
    "ready",
    "k",
    "ids",
    "next_id",
    "centres",
    "counts",
    "recent_wins",
    "scaler",
    "updates",
    "k_choice",
    "events",
)
#: Keys a checkpoint holds once something set them (``None`` in the value until then), in
#: the order they are first set in: a fit sets the first four together, a rollback the
#: fifth, the store the last two at each write.
_OPTIONAL = (
    "population",
    "rfm",
    "fitted_at_updates",
    "fitted_at_event_ms",
    "rolled_back_from",
    "saved_at_ms",
    "history_at_ms",
)
_KNOWN = frozenset(_REQUIRED + _OPTIONAL)


def usable_features(
    fmt: object, stored: Any, features: tuple[str, ...] | None = None
) -> tuple[str, ...]:
    """The features a checkpoint of format ``fmt`` clusters on (``stored``), if this code
    can use it (and they are ``features``, when given), else raise :class:`ModelError`
    saying why."""
    found = tuple(stored)
    try:
        check_model_features(found)
    except ValueError:
        found = ()
    if fmt != CHECKPOINT_FORMAT or not found:
        raise ModelError(
            f"the model checkpoint in Redis was written for other features or in another "
            f"format; {_FRESH}"
        )
    if features is not None and found != tuple(features):
        raise ModelError(
            f"the model checkpoint in Redis clusters on {', '.join(found)}, but "
            f"SEGMENTER_MODEL_FEATURES asks for {', '.join(features)}; set it back, or {_FRESH}"
        )
    return found


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _matrix(rows: Any) -> Matrix:
    return tuple(_floats(r) for r in rows)


def _optional_int(d: Mapping[str, Any], key: str) -> int | None:
    v = d.get(key)
    return None if v is None else int(v)


@dataclass(frozen=True, slots=True)
class ScalerStats:
    """The statistics of an :class:`~stream.scaling.OnlineScaler`, frozen.

    >>> s = OnlineScaler.empty(2)
    >>> s.learn(np.array([1.0, 3.0]))
    >>> stats = ScalerStats.of(s)
    >>> stats, stats.to_dict() == s.to_dict()
    (ScalerStats(count=1, mean=(1.0, 3.0), m2=(0.0, 0.0)), True)
    >>> stats.to_scaler().transform(np.array([1.0, 3.0])).tolist()
    [0.0, 0.0]
    """

    count: int
    mean: tuple[float, ...]
    m2: tuple[float, ...]

    @classmethod
    def of(cls, scaler: OnlineScaler) -> ScalerStats:
        return cls(int(scaler.count), tuple(scaler.mean.tolist()), tuple(scaler.m2.tolist()))

    def to_scaler(self) -> OnlineScaler:
        """A scaler with these statistics, of its own (learning in it changes nothing here)."""
        return OnlineScaler(self.count, np.array(self.mean, float), np.array(self.m2, float))

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": list(self.mean), "m2": list(self.m2)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScalerStats:
        return cls(int(d["count"]), _floats(d["mean"]), _floats(d["m2"]))


@dataclass(frozen=True, slots=True)
class PublishedModel:
    """The model processes decide segments with: the learning state as it was published."""

    #: When it was published (wall clock, ms).
    at_ms: int
    #: User updates the checkpoint had merged when it was published; ``None`` in
    #: checkpoints written before it was recorded (read as 0).
    updates: int | None
    centres: Matrix
    scaler: ScalerStats

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at_ms": self.at_ms}
        if self.updates is not None:
            out["updates"] = self.updates
        out["centres"] = [list(r) for r in self.centres]
        out["scaler"] = self.scaler.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PublishedModel:
        return cls(
            int(d["at_ms"]),
            _optional_int(d, "updates"),
            _matrix(d["centres"]),
            ScalerStats.from_dict(d["scaler"]),
        )


@dataclass(frozen=True, slots=True)
class KChoiceRecord:
    """How the number of segments was chosen at the last seed or kept refit (for people:
    ``segmenter model history`` prints ``reason``)."""

    k: int
    #: Score of each candidate k, rounded to 4 places, in the order they were scored.
    scores: tuple[tuple[int, float], ...]
    #: Users the choice was made on.
    n_points: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "scores": {str(k): v for k, v in self.scores},
            "n_points": self.n_points,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KChoiceRecord:
        scores = tuple((int(k), float(v)) for k, v in d["scores"].items())
        return cls(int(d["k"]), scores, int(d["n_points"]), str(d["reason"]))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The shared model checkpoint: the learning state and the published model.

    Each step of :mod:`stream.checkpoint` returns a new value; none changes one. The
    fields after ``events`` are set later in a checkpoint's life (by a fit, a rollback,
    the store) or were added by later releases: they are ``None`` where a checkpoint does
    not have them.

    Examples
    --------
    >>> from stream.checkpoint import empty_checkpoint
    >>> c = empty_checkpoint(("frequency", "monetary", "days_without_purchase"))
    >>> c.ready, c.version, c.features
    (False, 0, ('frequency', 'monetary', 'days_without_purchase'))
    >>> d = c.to_dict()
    >>> list(d)[:5], d["published"]
    (['format', 'features', 'merges', 'version', 'published'], None)
    >>> Checkpoint.from_dict(d) == c
    True

    Keys are read in any order (Redis holds ``merges`` first) and written in one:

    >>> stored = {"merges": d["merges"], **d}
    >>> back = Checkpoint.from_dict(stored)
    >>> list(back.to_dict()) == list(d), back == c
    (True, True)

    What this release cannot use is refused, saying what to do:

    >>> Checkpoint.from_dict({**d, "format": 1})
    Traceback (most recent call last):
    ...
    stream.errors.ModelError: the model checkpoint in Redis was written for other features \
or in another format; delete the seg:model key (and seg:model:versions) to start a fresh model
    """

    format: int
    #: The model features the centres are on (:func:`stream.scaling.check_model_features`).
    features: tuple[str, ...]
    #: Merges, refits and rollbacks folded in so far: the count the store fences its writes
    #: on (:data:`state.model_store.MODEL_CAS`).
    merges: int
    #: The published model's version; 0 before the first publication.
    version: int
    published: PublishedModel | None
    #: Bumped by every change of segments; learning from an older epoch is not merged.
    epoch: int
    #: Whether the centres were seeded.
    ready: bool
    #: Number of learning centres.
    k: int
    #: The segment id of each learning centre, in row order.
    ids: tuple[int, ...]
    #: The next segment id to give out (ids are never given out twice).
    next_id: int
    #: The learning centres, in the units of ``scaler``.
    centres: Matrix
    #: User updates each centre learned from.
    counts: tuple[float, ...]
    #: Decayed count of recent updates each centre won (dead centres have few).
    recent_wins: tuple[float, ...]
    #: The learning scaler.
    scaler: ScalerStats
    #: User updates merged so far.
    updates: int
    k_choice: KChoiceRecord | None
    #: The newest lineage events (born, retired, merged, split, ...). They are records for
    #: people, of no fixed shape (an event has the fields its kind needs), so they stay
    #: plain dicts: nothing here reads or changes them once they are recorded.
    events: tuple[dict[str, Any], ...]
    #: The typical customer's raw model vector (medians of the last fit's snapshot), which
    #: segment names are given against.
    population: tuple[float, ...] | None = None
    #: The population's RFM sketches from the last fit, kept as
    #: :meth:`~stream.rfm.RFMSketches.to_dict` wrote them: merges only carry them, and each
    #: process decodes them once per adoption (:meth:`rfm_sketches`). Never changed in place.
    rfm: Mapping[str, Any] | None = None
    #: ``updates`` at the last fit (seed or refit, kept or not).
    fitted_at_updates: int | None = None
    #: The watermark at the last fit.
    fitted_at_event_ms: int | None = None
    #: The version this one rolled back to, until the next publication.
    rolled_back_from: int | None = None
    #: When the store last wrote the checkpoint (wall clock, ms).
    saved_at_ms: int | None = None
    #: When the store last kept a version in the history (wall clock, ms).
    history_at_ms: int | None = None
    #: Keys this release does not know, with their values, carried unchanged: a newer
    #: release may add one without a new format, and a merge here must not lose it.
    unknown: tuple[tuple[str, Any], ...] = ()

    def rfm_sketches(self) -> RFMSketches | None:
        """The RFM sketches of the last fit, decoded afresh; ``None`` before a fit kept them."""
        return RFMSketches.from_dict(dict(self.rfm)) if self.rfm else None

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint as plain JSON-ready values: the required keys, the optional ones
        that are set, then the unknown ones."""
        pub, choice, pop = self.published, self.k_choice, self.population
        plain: dict[str, Any] = {
            "format": self.format,
            "features": list(self.features),
            "merges": self.merges,
            "version": self.version,
            "published": None if pub is None else pub.to_dict(),
            "epoch": self.epoch,
            "ready": self.ready,
            "k": self.k,
            "ids": list(self.ids),
            "next_id": self.next_id,
            "centres": [list(r) for r in self.centres],
            "counts": list(self.counts),
            "recent_wins": list(self.recent_wins),
            "scaler": self.scaler.to_dict(),
            "updates": self.updates,
            "k_choice": None if choice is None else choice.to_dict(),
            "events": list(self.events),
            "population": None if pop is None else list(pop),
            "rfm": None if self.rfm is None else dict(self.rfm),
            "fitted_at_updates": self.fitted_at_updates,
            "fitted_at_event_ms": self.fitted_at_event_ms,
            "rolled_back_from": self.rolled_back_from,
            "saved_at_ms": self.saved_at_ms,
            "history_at_ms": self.history_at_ms,
        }
        out = {k: v for k, v in plain.items() if k in _REQUIRED or v is not None}
        out.update(self.unknown)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Checkpoint:
        """Read a checkpoint as :meth:`to_dict` (or any release) wrote it.

        Raises :class:`ModelError` when this release cannot use it: another format, model
        features it does not have, or a value missing or of the wrong kind.
        """
        features = usable_features(d.get("format"), d.get("features", ()))
        try:
            pub, choice, pop, rfm = (
                d.get(k) for k in ("published", "k_choice", "population", "rfm")
            )
            return cls(
                format=int(d["format"]),
                features=features,
                merges=int(d["merges"]),
                version=int(d["version"]),
                published=None if pub is None else PublishedModel.from_dict(pub),
                epoch=int(d["epoch"]),
                ready=bool(d["ready"]),
                k=int(d["k"]),
                ids=tuple(int(i) for i in d["ids"]),
                next_id=int(d["next_id"]),
                centres=_matrix(d["centres"]),
                counts=_floats(d["counts"]),
                recent_wins=_floats(d["recent_wins"]),
                scaler=ScalerStats.from_dict(d["scaler"]),
                updates=int(d["updates"]),
                k_choice=None if choice is None else KChoiceRecord.from_dict(choice),
                events=tuple(d["events"]),
                population=None if pop is None else _floats(pop),
                rfm=None if rfm is None else dict(rfm),
                fitted_at_updates=_optional_int(d, "fitted_at_updates"),
                fitted_at_event_ms=_optional_int(d, "fitted_at_event_ms"),
                rolled_back_from=_optional_int(d, "rolled_back_from"),
                saved_at_ms=_optional_int(d, "saved_at_ms"),
                history_at_ms=_optional_int(d, "history_at_ms"),
                unknown=tuple((k, v) for k, v in d.items() if k not in _KNOWN),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(
                f"the model checkpoint in Redis cannot be read ({type(exc).__name__}: {exc}); "
                f"{_FRESH}"
            ) from None
