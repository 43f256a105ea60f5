"""Thousands of hostile payloads through the decoder: none raises, each bad one is a
dead letter with a known reason, and anything accepted really is a valid event."""

from __future__ import annotations

import math
import random

import orjson
import pytest

from stream.events import EVENT_TYPES, DeadLetter, Event, Limits, decode

NOW = 1_800_000_000_000
REASONS = {
    "empty",
    "oversized",
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "bad_type",
    "bad_value",
    "negative_value",
    "unknown_type",
    "bad_timestamp",
    "timestamp_out_of_range",
    "key_mismatch",
}
GOOD = {
    "event_id": "e1",
    "user_id": "u1",
    "type": "purchase",
    "ts": NOW - 1000,
    "amount": 12.5,
    "price": 12.5,
    "quantity": 1,
    "category": "books",
    "session_id": "s1",
    "currency": "EUR",
}
WEIRD_VALUES = [
    None,
    True,
    False,
    0,
    -1,
    2**63,
    -(2**63),
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    "",
    " ",
    "x" * 300,
    "\u0000",
    "\ud7ff",
    "2300-01-01T00:00:00Z",
    "1999-12-31T23:59:59Z",
    "not a date",
    [],
    [1],
    {},
    {"a": 1},
    1.5,
    "1700000000000",
    -0.0,
]


def mutate(rng: random.Random) -> tuple[bytes, bytes | None]:
    doc = dict(GOOD)
    for _ in range(rng.randint(1, 3)):
        action = rng.random()
        field = rng.choice([*GOOD, "extra"])
        if action < 0.3:
            doc.pop(field, None)
        elif action < 0.8:
            doc[field] = rng.choice(WEIRD_VALUES)
        else:
            doc[field] = rng.choice((*EVENT_TYPES, "teleport", "VIEW"))
    try:
        raw = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError):
        raw = repr(doc).encode()  # NaN, surrogates ... become not-JSON on purpose
    roll = rng.random()
    if roll < 0.1:
        raw = raw[: rng.randrange(len(raw))]  # truncated
    elif roll < 0.15:
        i = rng.randrange(len(raw))
        raw = raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1 :]  # flipped byte
    elif roll < 0.18:
        raw = raw.decode("utf-8", "replace").encode("utf-16")  # wrongly encoded
    elif roll < 0.2:
        raw = b'{"pad":"' + b"y" * rng.randint(65_000, 70_000) + b'"}'
    key = rng.choice([b"u1", b"u1", b"u2", None])
    return raw, key


#: 2000-01-01T00:00:00Z, a lower bound a deployment may set (SEGMENTER_MIN_EVENT_YEAR).
Y2K_MS = 946_684_800_000


@pytest.mark.parametrize("limits", [Limits(), Limits(min_ts_ms=Y2K_MS)], ids=["1970", "2000"])
def test_ten_thousand_hostile_payloads(limits: Limits) -> None:
    rng = random.Random(20261123)
    reasons: set[str] = set()
    accepted = 0
    for i in range(10_000):
        raw, key = mutate(rng)
        result = decode(raw, key, "shop.clicks", 0, i, NOW, limits)
        if isinstance(result, DeadLetter):
            assert result.reason in REASONS
            assert result.value == raw  # the original bytes travel with the dead letter
            assert result.offset == i
            reasons.add(result.reason)
            continue
        accepted += 1
        assert isinstance(result, Event)
        assert result.type in EVENT_TYPES
        assert result.user_id and result.event_id
        assert limits.min_ts_ms <= result.ts_ms <= NOW + limits.max_future_skew_ms
        if result.type == "purchase":
            assert result.amount is not None and math.isfinite(result.amount)
            assert result.amount >= 0
        assert key is None or key == result.user_id.encode()
    # The corpus reaches most reasons, and still lets some valid mutants through.
    assert len(reasons) >= 11, reasons
    assert accepted > 100
