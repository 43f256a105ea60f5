"""StoredChange: a published change kept packed, published again byte for byte."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from stream.messages import SegmentChange, change_id
from stream.stored_change import StoredChange

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
    assert s.packed[0] == 1  # kept as fields
    assert s.value() == c.to_json()
    assert s.segments() == (c.previous_segment, c.segment)
    assert len(s.packed) < len(c.to_json()) // 2


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
