"""Segment-change messages: the JSON contract, change ids and timestamps."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest

from stream.messages import SCHEMA_VERSION, SegmentChange, change_id, iso_ms

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (1_700_000_000_000, "2023-11-14T22:13:20.000Z"),
        (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
        (1_700_000_000_999, "2023-11-14T22:13:20.999Z"),
        (946_684_799_999, "1999-12-31T23:59:59.999Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
    ],
)
def test_iso_ms(ms: int, text: str) -> None:
    assert iso_ms(ms) == text


def test_iso_ms_is_exact_to_the_millisecond() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        ms = rng.randrange(946_684_800_000, 4_102_444_800_000)  # 2000 .. 2100
        text = iso_ms(ms)
        assert ISO_MS.match(text), text
        parsed = datetime.fromisoformat(text)
        assert parsed.tzinfo is not None
        assert parsed == datetime.fromtimestamp(ms // 1000, UTC).replace(
            microsecond=ms % 1000 * 1000
        )


def test_change_id_is_stable_hex() -> None:
    a = change_id("u1", "e9", None, 2)
    assert a == change_id("u1", "e9", None, 2)
    assert re.fullmatch(r"[0-9a-f]{32}", a)
    assert a == hashlib.sha256(b'["u1","e9",null,2]').hexdigest()[:32]


@pytest.mark.parametrize(
    "other",
    [
        ("u2", "e9", None, 2),
        ("u1", "e8", None, 2),
        ("u1", "e9", 0, 2),
        ("u1", "e9", 1, 2),
        ("u1", "e9", None, 3),
        ("u1", "e9", 2, 2),
        ("u1e9", "", None, 2),
    ],
)
def test_change_id_differs_when_any_input_differs(
    other: tuple[str, str, int | None, int],
) -> None:
    assert change_id(*other) != change_id("u1", "e9", None, 2)


def test_change_id_previous_and_segment_are_not_interchangeable() -> None:
    assert change_id("u1", "e9", 1, 2) != change_id("u1", "e9", 2, 1)


def test_change_id_is_unambiguous_for_ids_with_the_separator() -> None:
    assert change_id("a\x1fb", "c", None, 1) != change_id("a", "b\x1fc", None, 1)


def change(**kw: object) -> SegmentChange:
    base = SegmentChange(
        change_id=change_id("u000042", "e77", 3, 1),
        user_id="u000042",
        previous_segment=3,
        previous_segment_name="window_shopper",
        segment=1,
        segment_name="high_value",
        model_version=4,
        event_time_ms=1_795_425_243_120,
        emitted_at_ms=1_795_425_243_410,
        distance_margin=0.8123,
        runner_up_segment=3,
        top_features=("spend_30d", "purchases_30d", "conversion_rate_30d"),
        features={
            "events_30d": 41.0,
            "purchases_30d": 6.0,
            "spend_30d": 912.4,
            "days_since_last_purchase": 0.0,
            "avg_order_value": 152.07,
            "conversion_rate_30d": 0.4,
        },
        watermark_ms=1_795_425_000_000,
        reason="no purchase for 45 days",
        rfm=(5, 4, 5),
    )
    return replace(base, **kw)


def test_to_json_has_the_whole_contract() -> None:
    c = change()
    doc = orjson.loads(c.to_json())
    assert doc == {
        "schema_version": 1,
        "change_id": change_id("u000042", "e77", 3, 1),
        "user_id": "u000042",
        "previous_segment": 3,
        "previous_segment_name": "window_shopper",
        "segment": 1,
        "segment_name": "high_value",
        "model_version": 4,
        "event_time": "2026-11-23T09:14:03.120Z",
        "watermark": "2026-11-23T09:10:00.000Z",
        "emitted_at": "2026-11-23T09:14:03.410Z",
        "explanation": {
            "distance_margin": 0.8123,
            "runner_up_segment": 3,
            "top_features": ["spend_30d", "purchases_30d", "conversion_rate_30d"],
            "reason": "no purchase for 45 days",
        },
        "rfm": {"recency": 5, "frequency": 4, "monetary": 5, "code": "545"},
        "features": {
            "events_30d": 41.0,
            "purchases_30d": 6.0,
            "spend_30d": 912.4,
            "days_since_last_purchase": 0.0,
            "avg_order_value": 152.07,
            "conversion_rate_30d": 0.4,
        },
    }
    assert SCHEMA_VERSION == 1
    # The field order is the contract's order.
    assert list(doc) == [
        "schema_version",
        "change_id",
        "user_id",
        "previous_segment",
        "previous_segment_name",
        "segment",
        "segment_name",
        "model_version",
        "event_time",
        "watermark",
        "emitted_at",
        "explanation",
        "rfm",
        "features",
    ]


def test_to_json_for_a_new_user_and_a_never_buyer() -> None:
    c = change(
        previous_segment=None,
        previous_segment_name=None,
        top_features=(),
        features={"events_30d": 3.0, "days_since_last_purchase": None},
    )
    doc = orjson.loads(c.to_json())
    assert doc["previous_segment"] is None
    assert doc["previous_segment_name"] is None
    assert doc["explanation"]["top_features"] == []
    assert doc["features"] == {"events_30d": 3.0, "days_since_last_purchase": None}
    assert b'"previous_segment":null' in c.to_json()


def test_to_json_is_deterministic_bytes() -> None:
    assert change().to_json() == change().to_json()
    assert isinstance(change().to_json(), bytes)
