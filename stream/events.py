"""Input events: the frozen :class:`Event`, the :class:`DeadLetter`, and :func:`decode`.

Bad messages are values, not exceptions: :func:`decode` returns either an ``Event`` or a
``DeadLetter`` carrying the original bytes and a machine-readable reason, so one poison
message can never stop a partition.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import orjson

#: Event types accepted on the input topics, in the order feature vectors count them.
EVENT_TYPES: tuple[str, ...] = (
    "view",
    "click",
    "add_to_cart",
    "remove_from_cart",
    "purchase",
    "search",
)
TYPE_INDEX: dict[str, int] = {t: i for i, t in enumerate(EVENT_TYPES)}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_ID_LEN = 256
_MAX_TEXT_LEN = 256
_MAX_FLOAT = sys.float_info.max


@dataclass(frozen=True, slots=True)
class Limits:
    """What :func:`decode` accepts; built from the settings once."""

    max_event_bytes: int = 65536
    max_future_skew_ms: int = 3_600_000
    #: Earliest event time accepted: the epoch by default, so that a backfill of any
    #: history is accepted (``SEGMENTER_MIN_EVENT_YEAR`` raises it).
    min_ts_ms: int = 0

    def time_range(self, now_ms: int) -> str:
        """The accepted event times in words, for dead-letter details.

        >>> Limits().time_range(1_700_000_000_000)
        'from 1970-01-01T00:00:00Z to 2023-11-14T23:13:20Z (now plus 3600 s)'
        """
        start = (_EPOCH + timedelta(milliseconds=self.min_ts_ms)).strftime("%Y-%m-%dT%H:%M:%SZ")
        end = _EPOCH + timedelta(milliseconds=now_ms + self.max_future_skew_ms)
        skew = self.max_future_skew_ms // 1000
        return f"from {start} to {end.strftime('%Y-%m-%dT%H:%M:%SZ')} (now plus {skew} s)"


class Event(NamedTuple):
    """One validated shop event, with the Kafka position it was read from.

    A named tuple rather than a frozen dataclass: it is as immutable, and five times
    cheaper to build, which counts at one per input message.
    """

    event_id: str
    user_id: str
    type: str
    ts_ms: int
    topic: str
    partition: int
    offset: int
    session_id: str | None = None
    product_id: str | None = None
    category: str | None = None
    price: float | None = None
    quantity: int | None = None
    amount: float | None = None
    currency: str | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not become an :class:`Event`, with why.

    ``reason`` is a short machine-readable code (``not_json``, ``missing_field`` ...);
    ``detail`` says which field or value, for people.
    """

    reason: str
    detail: str
    value: bytes | None
    key: bytes | None
    topic: str
    partition: int
    offset: int


#: What a person can do about each dead-letter reason, when most of the input has it.
ADVICE: dict[str, str] = {
    "timestamp_out_of_range": "event times must lie within the accepted range: raise "
    "SEGMENTER_MAX_FUTURE_SKEW_S for clocks that run ahead, or lower "
    "SEGMENTER_MIN_EVENT_YEAR if it was raised; epoch seconds are not epoch milliseconds",
    "bad_timestamp": "send ts as epoch milliseconds (a JSON number) or an ISO-8601 string",
    "not_json": "the producer does not write JSON: check its value serialiser",
    "not_utf8": "the producer does not write UTF-8 JSON: check its value serialiser",
    "not_object": "each message must be one JSON object, not an array or a scalar",
    "missing_field": "every event needs event_id, user_id, type and ts (and amount for a "
    "purchase): check the producer's field names",
    "key_mismatch": "key every message by its user_id, so that a user's clicks and "
    "purchases reach the same partition",
    "unknown_type": "type must be one of " + ", ".join(EVENT_TYPES),
    "oversized": "raise SEGMENTER_MAX_EVENT_BYTES, or send smaller events",
}


def dominant_reason(dead: list[DeadLetter], total: int) -> tuple[str, int] | None:
    """The dead-letter reason of most of a batch of ``total`` messages, and its count.

    ``None`` unless one reason covers more than half of the batch (and the batch is not
    tiny): a few bad messages are routine, a batch that is mostly one kind of bad message
    is a producer or configuration problem a person should hear about.

    >>> dl = DeadLetter("not_json", "", b"x", None, "t", 0, 0)
    >>> dominant_reason([dl] * 6, 10), dominant_reason([dl] * 5, 10), dominant_reason([dl], 1)
    (('not_json', 6), None, None)
    """
    if total < 10 or 2 * len(dead) <= total:
        return None
    counts: dict[str, int] = {}
    for d in dead:
        counts[d.reason] = counts.get(d.reason, 0) + 1
    reason, n = max(counts.items(), key=lambda kv: kv[1])
    return (reason, n) if 2 * n > total else None


class _Invalid(ValueError):
    """Internal control flow of :func:`decode`; never leaves this module."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def parse_timestamp(raw: object) -> int:
    """Return epoch milliseconds from epoch milliseconds or an ISO-8601 string.

    Naive ISO-8601 times are taken as UTC.

    Examples
    --------
    >>> parse_timestamp(1700000000000)
    1700000000000
    >>> parse_timestamp("2023-11-14T22:13:20Z")
    1700000000000
    """
    if isinstance(raw, bool):
        raise _Invalid("bad_timestamp", "ts is a boolean")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise _Invalid("bad_timestamp", "ts is not finite")
        return int(raw)
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            raise _Invalid("bad_timestamp", "ts is neither epoch ms nor ISO-8601") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        # Exact integer arithmetic: float seconds * 1000 can land a millisecond short.
        return (dt - _EPOCH) // timedelta(milliseconds=1)
    raise _Invalid("bad_timestamp", f"ts has type {type(raw).__name__}")


def _text(doc: dict[str, object], name: str, required: bool, max_len: int) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise _Invalid("missing_field", name)
        return None
    if not isinstance(value, str):
        raise _Invalid("bad_type", f"{name} must be a string")
    if required and not value:
        raise _Invalid("bad_value", f"{name} is empty")
    if len(value) > max_len:
        raise _Invalid("bad_value", f"{name} longer than {max_len}")
    return value


def _number(doc: dict[str, object], name: str) -> float | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("bad_type", f"{name} must be a number")
    if not math.isfinite(value):
        raise _Invalid("bad_value", f"{name} is not finite")
    if value < 0:
        raise _Invalid("negative_value", f"{name} is negative")
    return float(value)


#: Optional text fields and their longest allowed length.
_OPTIONAL_TEXT = (
    ("session_id", _MAX_ID_LEN),
    ("product_id", _MAX_ID_LEN),
    ("category", _MAX_TEXT_LEN),
    ("currency", 8),
)


def _validate(
    doc: object,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    limits: Limits,
    now_ms: int,
) -> Event:
    if not isinstance(doc, dict):
        raise _Invalid("not_object", f"top level is a JSON {type(doc).__name__}")
    get = doc.get
    event_id, user_id, etype, ts = get("event_id"), get("user_id"), get("type"), get("ts")
    # One test for the common case; anything else goes through the field checks, which
    # say exactly what is wrong (and let through what is merely unusual).
    if not (
        type(event_id) is str
        and type(user_id) is str
        and 0 < len(event_id) <= _MAX_ID_LEN
        and 0 < len(user_id) <= _MAX_ID_LEN
        and type(etype) is str
        and etype in TYPE_INDEX
    ):
        event_id = _text(doc, "event_id", True, _MAX_ID_LEN)
        user_id = _text(doc, "user_id", True, _MAX_ID_LEN)
        etype = _text(doc, "type", True, _MAX_TEXT_LEN)
        assert event_id is not None and user_id is not None and etype is not None
        if etype not in TYPE_INDEX:
            allowed = ", ".join(EVENT_TYPES)
            raise _Invalid("unknown_type", f"type {etype[:40]!r} is not one of {allowed}")
    if type(ts) is int:
        ts_ms = ts
    else:
        if "ts" not in doc:
            raise _Invalid("missing_field", "ts")
        ts_ms = parse_timestamp(ts)
    if ts_ms < limits.min_ts_ms or ts_ms > now_ms + limits.max_future_skew_ms:
        raise _Invalid(
            "timestamp_out_of_range", f"ts {ts_ms} is outside {limits.time_range(now_ms)}"
        )
    if key is not None and key != user_id.encode():
        # Co-partitioning of the input topics rests on key == user_id.
        raise _Invalid("key_mismatch", "the Kafka key differs from user_id")
    # Finite, non-negative floats pass at once; anything else (ints, errors) goes through
    # _number, which converts or names the problem.
    amount, price = get("amount"), get("price")
    if amount is not None and not (type(amount) is float and 0.0 <= amount <= _MAX_FLOAT):
        amount = _number(doc, "amount")
    if etype == "purchase" and amount is None:
        raise _Invalid("missing_field", "amount (required for purchase)")
    if price is not None and not (type(price) is float and 0.0 <= price <= _MAX_FLOAT):
        price = _number(doc, "price")
    qty_raw = get("quantity")
    quantity: int | None = None
    if qty_raw is not None:
        if type(qty_raw) is not int:
            raise _Invalid("bad_type", "quantity must be an integer")
        if qty_raw < 0:
            raise _Invalid("negative_value", "quantity is negative")
        quantity = qty_raw
    texts: list[str | None] = []
    for name, max_len in _OPTIONAL_TEXT:
        value = get(name)
        if value is not None and (type(value) is not str or len(value) > max_len):
            _text(doc, name, False, max_len)  # raises, naming the field
        texts.append(value)
    session_id, product_id, category, currency = texts
    return Event(
        event_id,
        user_id,
        etype,
        ts_ms,
        topic,
        partition,
        offset,
        session_id,
        product_id,
        category,
        price,
        quantity,
        amount,
        currency,
    )


def decode(
    value: bytes | None,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    now_ms: int,
    limits: Limits = Limits(),
) -> Event | DeadLetter:
    """Decode and validate one Kafka message.

    Parameters
    ----------
    value, key
        The raw message value and key.
    topic, partition, offset
        Where the message was read; kept on the result for offsets and dead letters.
    now_ms
        Wall-clock time, only to reject timestamps absurdly far in the future.
    limits
        Size and time bounds.

    Returns
    -------
    Event or DeadLetter

    Examples
    --------
    >>> raw = b'{"event_id":"e1","user_id":"u1","type":"view","ts":1700000000000}'
    >>> decode(raw, b"u1", "shop.clicks", 0, 7, now_ms=1700000000000).type
    'view'
    >>> decode(b"{oops", b"u1", "shop.clicks", 0, 8, now_ms=1700000000000).reason
    'not_json'
    """
    try:
        if not value:
            raise _Invalid("empty", "message has no value")
        if len(value) > limits.max_event_bytes:
            raise _Invalid("oversized", f"{len(value)} bytes > {limits.max_event_bytes}")
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            if "utf-8" in str(exc).lower():
                raise _Invalid("not_utf8", "value is not valid UTF-8") from None
            raise _Invalid("not_json", str(exc)[:120]) from None
        return _validate(doc, key, topic, partition, offset, limits, now_ms)
    except _Invalid as bad:
        return DeadLetter(bad.reason, bad.detail, value, key, topic, partition, offset)
