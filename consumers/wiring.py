"""What the parts of one segmenter process share, handed to each of them once."""

from __future__ import annotations

from dataclasses import dataclass

from consumers.metrics import Metrics
from state.redis_store import RedisStore
from stream.batch import SegmentNames
from stream.model import SegmentModel
from stream.settings import Settings
from stream.watermark import Watermark


@dataclass(frozen=True, slots=True)
class Wiring:
    """One process's settings, Redis store, metrics, model (adopted in place), segment
    names and event-time clock: the loop (:class:`consumers.app.Segmenter`), the commit
    protocol (:class:`consumers.transaction.BatchTransaction`) and the model sync
    (:class:`consumers.model_sync.ModelSync`) work on the same ones."""

    settings: Settings
    store: RedisStore
    metrics: Metrics
    model: SegmentModel
    names: SegmentNames
    watermark: Watermark
