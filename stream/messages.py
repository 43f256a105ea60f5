"""Messages the segmenter publishes, as frozen values serialised only at the boundary.

The JSON shape of :class:`SegmentChange` is the contract of the ``segments.changes``
topic, published as a JSON Schema in ``schemas/segment_change.schema.json``.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass

import orjson

SCHEMA_VERSION = 1


def iso_ms(epoch_ms: int) -> str:
    """Epoch milliseconds as an ISO-8601 UTC string with millisecond precision.

    >>> iso_ms(1700000000123)
    '2023-11-14T22:13:20.123Z'
    """
    seconds, ms = divmod(int(epoch_ms), 1000)
    return "%s.%03dZ" % (_iso_second(seconds), ms)  # noqa: UP031


@functools.lru_cache(maxsize=8192)
def _iso_second(seconds: int) -> str:
    # Formatted by hand: datetime.isoformat costs three times as much. Cached by the
    # second: a batch formats the same few seconds (its wall clock, its users' events)
    # over and over.
    t = time.gmtime(seconds)
    return "%04d-%02d-%02dT%02d:%02d:%02d" % t[:6]  # noqa: UP031


def change_id(user_id: str, event_id: str, previous: int | None, segment: int) -> str:
    """An id for a segment change that replays of the same events reproduce.

    >>> change_id("u1", "e9", None, 2) == change_id("u1", "e9", None, 2)
    True
    """
    # A JSON array keeps the parts apart whatever characters the ids contain.
    text = orjson.dumps([user_id, event_id, previous, segment])
    return hashlib.sha256(text).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class SegmentChange:
    """One user moving into a segment (``previous_segment`` is None for a new user)."""

    change_id: str
    user_id: str
    previous_segment: int | None
    previous_segment_name: str | None
    segment: int
    segment_name: str
    model_version: int
    event_time_ms: int
    emitted_at_ms: int
    distance_margin: float
    runner_up_segment: int
    top_features: tuple[str, ...]
    features: dict[str, float | None]
    #: The group's event-time watermark the features were taken as of (0: not known).
    watermark_ms: int = 0
    #: Why the change came without an event of the user's own (``no purchase for 45
    #: days``); ``None`` for a change an event triggered.
    reason: str | None = None
    #: The user's RFM quintile scores (recency, frequency, monetary; 1-5, 5 best).
    rfm: tuple[int, int, int] | None = None
    #: The user's state was rebuilt without events Redis lost and Kafka no longer
    #: retained (``SEGMENTER_ON_LOST_HISTORY=continue``); the field is left out otherwise.
    state_incomplete: bool = False

    def to_json(self) -> bytes:
        """The message value for ``segments.changes`` and ``segments.current``."""
        return orjson.dumps(
            {
                "schema_version": SCHEMA_VERSION,
                "change_id": self.change_id,
                "user_id": self.user_id,
                "previous_segment": self.previous_segment,
                "previous_segment_name": self.previous_segment_name,
                "segment": self.segment,
                "segment_name": self.segment_name,
                "model_version": self.model_version,
                "event_time": iso_ms(self.event_time_ms),
                "watermark": iso_ms(self.watermark_ms) if self.watermark_ms else None,
                "emitted_at": iso_ms(self.emitted_at_ms),
                "explanation": {
                    "distance_margin": self.distance_margin,
                    "runner_up_segment": self.runner_up_segment,
                    "top_features": list(self.top_features),
                    "reason": self.reason,
                },
                "rfm": None
                if self.rfm is None
                else {
                    "recency": self.rfm[0],
                    "frequency": self.rfm[1],
                    "monetary": self.rfm[2],
                    "code": "%d%d%d" % self.rfm,  # noqa: UP031
                },
                "features": self.features,
                **({"state_incomplete": True} if self.state_incomplete else {}),
            }
        )
