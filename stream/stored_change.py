"""The last segment change of a user, kept with their state until its commit is certain.

A change is published in the batch's transaction, and the batch's Redis writes happen
before that commits. If the commit is lost (a crash, a fenced producer), the batch is read
again, and the event that triggered the change is seen again: the stored change is then
published again, byte for byte, so readers see it once whatever happened.

Most stored changes are never read again: the next write of the user drops them once
their batch is known committed. So a :class:`StoredChange` keeps the message's fields
packed (about 150 bytes instead of about 600 of JSON) and builds the JSON only when it is
published again.

Examples
--------
>>> c = SegmentChange("ab" * 16, "u1", None, None, 2, "loyal", 7, 1_700_000_000_000,
...                   1_700_000_000_500, 0.25, 1, ("spend_30d",), {"spend_30d": 40.0})
>>> s = StoredChange.of("shop.purchases:3", 41, c)
>>> s.value() == c.to_json(), s.segments(), len(s.packed) < len(c.to_json()) // 2
(True, (None, 2), True)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import orjson

from stream.events import parse_timestamp
from stream.feature_registry import FEATURE_NAMES
from stream.messages import SCHEMA_VERSION, SegmentChange

# previous segment (-1: none), segment, model version, event time, emission time,
# watermark, distance margin, runner-up, RFM scores (0: none), then counts of top features
# and of features
_FIELDS = struct.Struct("<iiqqqqdiBBBBB")
_LEN = struct.Struct("<H")
_FLOAT = struct.Struct("<d")
_NO_NAME = 0xFFFF
# The two high bits of a feature's index say how its value follows: most values of a
# change are zero or a whole count, which take no or two bytes instead of eight.
_NULL = 0x80  # null, nothing follows
_ZERO = 0x40  # 0.0, nothing follows
_WHOLE = 0xC0  # a whole number from 1 to 65535, two bytes follow
_KIND = 0xC0
_UINT16 = struct.Struct("<H")
_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
# Version 1 kept every value in eight bytes; it is still read.
_AS_FIELDS_V1, _AS_FIELDS, _AS_JSON = b"\x01", b"\x02", b"\x00"


@dataclass(frozen=True, slots=True)
class StoredChange:
    """A published change and the input position of the event that triggered it.

    Attributes
    ----------
    pos
        ``topic:partition`` of the triggering event, or ``"assign"`` for a first segment
        given without an event.
    offset
        The triggering event's offset (``-1`` for an assignment).
    packed
        The message, packed by :meth:`of` (its fields) or :meth:`from_json` (its JSON
        when its fields would not rebuild it exactly).
    """

    pos: str
    offset: int
    packed: bytes

    @classmethod
    def of(cls, pos: str, offset: int, change: SegmentChange) -> StoredChange:
        """Keep ``change``; :meth:`value` gives back exactly ``change.to_json()``."""
        try:
            return cls(pos, offset, _AS_FIELDS + _pack(change))
        except (KeyError, ValueError, struct.error):
            # A feature name or value this packing does not know: keep the JSON.
            return cls(pos, offset, _AS_JSON + change.to_json())

    @classmethod
    def from_json(cls, pos: str, offset: int, value: str | bytes) -> StoredChange:
        """Keep a message given as JSON, as fields when they rebuild it byte for byte."""
        raw = value.encode() if isinstance(value, str) else value
        change = _parse(raw)
        if change is not None and change.to_json() == raw:
            packed = cls.of(pos, offset, change)
            if packed.value() == raw:
                return packed
        return cls(pos, offset, _AS_JSON + raw)

    def value(self) -> bytes:
        """The message, as it was published."""
        if self.packed[:1] == _AS_JSON:
            return self.packed[1:]
        return _unpack(self.packed, 1, compact=self.packed[:1] == _AS_FIELDS).to_json()

    def segments(self) -> tuple[int | None, int]:
        """The previous segment and the segment of the change, without building JSON."""
        if self.packed[:1] == _AS_JSON:
            msg = orjson.loads(self.packed[1:])
            return msg["previous_segment"], msg["segment"]
        prev, segment = _FIELDS.unpack_from(self.packed, 17)[:2]
        return (None if prev < 0 else prev), segment


def _text(value: str, out: list[bytes]) -> None:
    raw = value.encode()
    out.append(_LEN.pack(len(raw)))
    out.append(raw)


def _pack(c: SegmentChange) -> bytes:
    if c.state_incomplete:
        # Rare (a rebuild without part of the history): kept as JSON, not in the layout.
        raise ValueError("the packed layout has no state_incomplete")
    change_id = bytes.fromhex(c.change_id)
    if len(change_id) != 16 or change_id.hex() != c.change_id:
        raise ValueError("change id is not 32 lower-case hex digits")
    prev = c.previous_segment
    out = [
        change_id,
        _FIELDS.pack(
            -1 if prev is None else prev,
            c.segment,
            c.model_version,
            c.event_time_ms,
            c.emitted_at_ms,
            c.watermark_ms,
            c.distance_margin,
            c.runner_up_segment,
            *(c.rfm or (0, 0, 0)),
            len(c.top_features),
            len(c.features),
        ),
        bytes(_INDEX[f] for f in c.top_features),
    ]
    for name, v in c.features.items():
        i = _INDEX[name]
        if i & _KIND:
            raise ValueError(f"feature index {i} does not leave room for the value's kind")
        if v is None:
            out.append(bytes([i | _NULL]))
        elif v == 0 and math.copysign(1.0, v) > 0:
            out.append(bytes([i | _ZERO]))
        elif 0 < v < 65536 and v == int(v):
            out.append(bytes([i | _WHOLE]) + _UINT16.pack(int(v)))
        else:
            out.append(bytes([i]) + _FLOAT.pack(v))
    _text(c.user_id, out)
    _text(c.segment_name, out)
    for optional in (c.previous_segment_name, c.reason):
        if optional is None:
            out.append(_LEN.pack(_NO_NAME))
        else:
            _text(optional, out)
    return b"".join(out)


def _unpack(data: bytes, at: int, compact: bool = True) -> SegmentChange:
    change_id = data[at : at + 16].hex()
    at += 16
    (
        prev,
        segment,
        version,
        event_ms,
        emitted_ms,
        watermark_ms,
        margin,
        runner_up,
        r,
        f,
        m,
        n_top,
        n_f,
    ) = _FIELDS.unpack_from(data, at)
    at += _FIELDS.size
    top = tuple(FEATURE_NAMES[i] for i in data[at : at + n_top])
    at += n_top
    features: dict[str, float | None] = {}
    for _ in range(n_f):
        i = data[at]
        at += 1
        kind = i & _KIND if compact else i & _NULL
        name = FEATURE_NAMES[i & ~kind]
        if kind == _NULL:
            features[name] = None
        elif kind == _ZERO:
            features[name] = 0.0
        elif kind == _WHOLE:
            features[name] = float(_UINT16.unpack_from(data, at)[0])
            at += _UINT16.size
        else:
            (features[name],) = _FLOAT.unpack_from(data, at)
            at += _FLOAT.size
    texts: list[str | None] = []
    for _ in range(4):
        (n,) = _LEN.unpack_from(data, at)
        at += _LEN.size
        if n == _NO_NAME:
            texts.append(None)
        else:
            texts.append(data[at : at + n].decode())
            at += n
    user_id, segment_name, prev_name, reason = texts
    assert user_id is not None and segment_name is not None
    return SegmentChange(
        change_id=change_id,
        user_id=user_id,
        previous_segment=None if prev < 0 else prev,
        previous_segment_name=prev_name,
        segment=segment,
        segment_name=segment_name,
        model_version=version,
        event_time_ms=event_ms,
        emitted_at_ms=emitted_ms,
        distance_margin=margin,
        runner_up_segment=runner_up,
        top_features=top,
        features=features,
        watermark_ms=watermark_ms,
        reason=reason,
        rfm=(r, f, m) if r else None,
    )


def _parse(raw: bytes) -> SegmentChange | None:
    """A change message read back into its fields, or None if it is not one."""
    try:
        m = orjson.loads(raw)
        x = m["explanation"]
        if m["schema_version"] != SCHEMA_VERSION:
            return None
        return SegmentChange(
            change_id=m["change_id"],
            user_id=m["user_id"],
            previous_segment=m["previous_segment"],
            previous_segment_name=m["previous_segment_name"],
            segment=m["segment"],
            segment_name=m["segment_name"],
            model_version=m["model_version"],
            event_time_ms=parse_timestamp(m["event_time"]),
            emitted_at_ms=parse_timestamp(m["emitted_at"]),
            distance_margin=x["distance_margin"],
            runner_up_segment=x["runner_up_segment"],
            top_features=tuple(x["top_features"]),
            features=m["features"],
            watermark_ms=0 if m.get("watermark") is None else parse_timestamp(m["watermark"]),
            reason=x.get("reason"),
            rfm=None
            if m.get("rfm") is None
            else (m["rfm"]["recency"], m["rfm"]["frequency"], m["rfm"]["monetary"]),
            state_incomplete=bool(m.get("state_incomplete", False)),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
