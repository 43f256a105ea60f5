"""StoredChange: a published change kept packed, published again byte for byte."""

from __future__ import annotations

import dataclasses
import struct

import orjson
import pytest

from stream.feature_registry import FEATURE_NAMES
from stream.messages import SegmentChange, change_id
from stream.stored_change import _FIELDS, StoredChange

T = 1_700_000_000_000


def change(**kw: object) -> SegmentChange:
    base = SegmentChange(
        change_id=change_id("ü-user", "e-1", 4, 2),
        user_id="ü-user",
        previous_segment=4,
        previous_segment_name="window shoppers",
        segment=2,
        segment_name="loyal high spenders",
        model_version=31,
        event_time_ms=T,
        emitted_at_ms=T + 1_234,
        distance_margin=0.1 + 0.2,  # not a short decimal
        runner_up_segment=0,
        top_features=("spend_30d", "tenure_days"),
        features={"events_30d": 9.0, "days_since_last_purchase": None, "spend_30d": 1e-7},
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "c",
    [
        change(),
        change(previous_segment=None, previous_segment_name=None),
        change(top_features=(), features={}),
        change(segment_name="", distance_margin=0.0),
    ],
)
def test_packed_fields_give_back_the_message_byte_for_byte(c: SegmentChange) -> None:
    s = StoredChange.of("shop.clicks:3", 17, c)
    assert s.packed[0] == 2  # kept as fields
    assert s.value() == c.to_json()
    assert s.segments() == (c.previous_segment, c.segment)
    assert len(s.packed) < len(c.to_json()) // 2


VALUES = [0.0, -0.0, 1.0, 2.0, 65535.0, 65536.0, 0.5, 3.25, -1.0, 1e-7, 1e300, None]


def test_zeros_and_whole_counts_take_less_and_every_value_comes_back_exactly() -> None:
    names = [
        "events_30d",
        "purchases_30d",
        "spend_30d",
        "frequency",
        "monetary",
        "avg_order_value",
        "days_since_last_purchase",
        "days_since_last_event",
        "conversion_rate_30d",
        "conversion_rate_365d",
        "tenure_days",
        "spend_7d",
    ]
    c = change(features=dict(zip(names, VALUES, strict=True)))
    s = StoredChange.of("shop.clicks:3", 17, c)
    assert s.packed[0] == 2
    assert s.value() == c.to_json()
    back = orjson.loads(s.value())["features"]
    for name, v in zip(names, VALUES, strict=True):
        assert back[name] == v and (v is None or str(back[name]) == str(v)), name
    # Nine bytes a value before; here a zero takes one and a count three.
    zeros = StoredChange.of("p:0", 1, change(features=dict.fromkeys(names, 0.0)))
    fractions = StoredChange.of("p:0", 1, change(features=dict.fromkeys(names, 0.3)))
    assert len(fractions.packed) - len(zeros.packed) == 8 * len(names)


def test_the_first_packing_is_still_read() -> None:
    c = change()
    # Version 1: every value as its index and eight bytes, null as the index | 0x80.
    v2 = StoredChange.of("p:0", 1, c).packed
    fixed = 1 + 16 + _FIELDS.size + len(c.top_features)
    body = b"".join(
        bytes([FEATURE_NAMES.index(n) | 0x80])
        if v is None
        else bytes([FEATURE_NAMES.index(n)]) + struct.pack("<d", v)
        for n, v in c.features.items()
    )
    tail_at = fixed + len(_features_bytes(c))
    v1 = b"\x01" + v2[1:fixed] + body + v2[tail_at:]
    assert StoredChange("p:0", 1, v1).value() == c.to_json()


def _features_bytes(c: SegmentChange) -> bytes:
    one = StoredChange.of("p:0", 1, c).packed
    none = StoredChange.of("p:0", 1, dataclasses.replace(c, features={})).packed
    return one[: len(one) - len(none)]


def test_a_message_given_as_json_is_packed_when_that_is_exact() -> None:
    c = change()
    s = StoredChange.from_json("assign", -1, c.to_json().decode())
    assert s == StoredChange.of("assign", -1, c)
    assert s.value() == c.to_json()


@pytest.mark.parametrize(
    "value",
    [
        b'{"previous_segment":null,"segment":3}',
        change().to_json().replace(b'"schema_version":1', b'"schema_version":0'),
        change().to_json().replace(b'"model_version":31', b'"model_version": 31'),
    ],
)
def test_other_json_is_kept_as_it_is(value: bytes) -> None:
    s = StoredChange.from_json("shop.clicks:0", 1, value)
    assert s.packed[0] == 0
    assert s.value() == value
    msg = orjson.loads(value)
    assert s.segments() == (msg["previous_segment"], msg["segment"])


def test_fields_the_packing_does_not_know_fall_back_to_json() -> None:
    for c in (change(features={"not_a_feature": 1.0}), change(change_id="XYZ")):
        s = StoredChange.of("shop.clicks:0", 1, c)
        assert s.packed[0] == 0
        assert s.value() == c.to_json()


def test_a_change_of_an_incomplete_state_says_so_and_is_kept_exactly() -> None:
    c = change(state_incomplete=True)
    assert orjson.loads(c.to_json())["state_incomplete"] is True
    assert "state_incomplete" not in orjson.loads(change().to_json())  # left out otherwise
    s = StoredChange.of("shop.clicks:3", 17, c)
    assert s.value() == c.to_json()
    assert StoredChange.from_json("shop.clicks:3", 17, c.to_json()).value() == c.to_json()
