"""decode(): every dead-letter reason, and good events in every accepted timestamp form."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from stream.events import (
    EVENT_TYPES,
    TYPE_INDEX,
    DeadLetter,
    Event,
    Limits,
    decode,
    parse_timestamp,
)

NOW = 1_700_000_000_000  # 2023-11-14T22:13:20Z
MIN_TS = 0  # 1970-01-01T00:00:00Z: no floor by default
SKEW = 3_600_000
TOPIC, PARTITION, OFFSET = "shop.clicks", 3, 41
MISSING = object()

BASE: dict[str, Any] = {"event_id": "e1", "user_id": "u1", "type": "view", "ts": NOW}
PURCHASE: dict[str, Any] = {**BASE, "type": "purchase", "amount": 12.5}


def doc(base: dict[str, Any] = BASE, **changes: Any) -> bytes:
    d = dict(base)
    for k, v in changes.items():
        if v is MISSING:
            d.pop(k, None)
        else:
            d[k] = v
    return orjson.dumps(d)


def run(value: bytes | None, key: bytes | None = b"u1", limits: Limits | None = None):
    return decode(value, key, TOPIC, PARTITION, OFFSET, now_ms=NOW, limits=limits or Limits())


# (id, value, key, reason, a fragment of the detail)
BAD: list[tuple[str, bytes | None, bytes | None, str, str]] = [
    ("no value", None, b"u1", "empty", "no value"),
    ("over 64 KiB", b'{"pad":"' + b"y" * 65_530 + b'"}', b"u1", "oversized", "65540 bytes"),
    ("garbage", b"{oops", b"u1", "not_json", ""),
    ("truncated", doc()[:-3], b"u1", "not_json", ""),
    ("zero-length", b"", b"u1", "empty", "no value"),
    (
        "NaN amount",
        doc(PURCHASE, amount=0).replace(b'"amount":0', b'"amount":NaN'),
        b"u1",
        "not_json",
        "",
    ),
    (
        "Infinity price",
        doc(price=0).replace(b'"price":0', b'"price":Infinity'),
        b"u1",
        "not_json",
        "",
    ),
    (
        "1e400 amount",
        doc(PURCHASE, amount=0).replace(b'"amount":0', b'"amount":1e400'),
        b"u1",
        "not_json",
        "infinity",
    ),
    ("-1e400 ts", doc(ts=0).replace(b'"ts":0', b'"ts":-1e400'), b"u1", "not_json", "infinity"),
    (
        "bad utf-8",
        b'{"event_id":"e\xff1","user_id":"u1","type":"view","ts":1}',
        b"u1",
        "not_utf8",
        "UTF-8",
    ),
    ("lone byte", b"\xfe", b"u1", "not_utf8", "UTF-8"),
    ("array", b"[1,2]", b"u1", "not_object", "list"),
    ("string", b'"view"', b"u1", "not_object", "str"),
    ("number", b"42", b"u1", "not_object", "int"),
    ("null", b"null", b"u1", "not_object", "NoneType"),
    ("no event_id", doc(event_id=MISSING), b"u1", "missing_field", "event_id"),
    ("null event_id", doc(event_id=None), b"u1", "missing_field", "event_id"),
    ("no user_id", doc(user_id=MISSING), b"u1", "missing_field", "user_id"),
    ("no type", doc(type=MISSING), b"u1", "missing_field", "type"),
    ("no ts", doc(ts=MISSING), b"u1", "missing_field", "ts"),
    ("purchase no amount", doc(PURCHASE, amount=MISSING), b"u1", "missing_field", "amount"),
    ("purchase null amount", doc(PURCHASE, amount=None), b"u1", "missing_field", "amount"),
    ("int event_id", doc(event_id=5), b"u1", "bad_type", "event_id"),
    ("list user_id", doc(user_id=["u1"]), b"u1", "bad_type", "user_id"),
    ("int type", doc(type=1), b"u1", "bad_type", "type"),
    ("string amount", doc(PURCHASE, amount="12.5"), b"u1", "bad_type", "amount"),
    ("string price", doc(price="1"), b"u1", "bad_type", "price"),
    ("float quantity", doc(quantity=1.5), b"u1", "bad_type", "quantity"),
    ("integral float quantity", doc(quantity=2.0), b"u1", "bad_type", "quantity"),
    ("string quantity", doc(quantity="2"), b"u1", "bad_type", "quantity"),
    ("int category", doc(category=5), b"u1", "bad_type", "category"),
    ("object session_id", doc(session_id={}), b"u1", "bad_type", "session_id"),
    ("bool amount", doc(PURCHASE, amount=True), b"u1", "bad_type", "amount"),
    ("bool price", doc(price=False), b"u1", "bad_type", "price"),
    ("bool quantity", doc(quantity=True), b"u1", "bad_type", "quantity"),
    ("empty event_id", doc(event_id=""), b"u1", "bad_value", "event_id is empty"),
    ("empty user_id", doc(user_id=""), None, "bad_value", "user_id is empty"),
    ("empty type", doc(type=""), b"u1", "bad_value", "type is empty"),
    ("long event_id", doc(event_id="x" * 257), b"u1", "bad_value", "event_id longer than 256"),
    ("long category", doc(category="c" * 257), b"u1", "bad_value", "category longer than 256"),
    ("long currency", doc(currency="EURO-LONG"), b"u1", "bad_value", "currency longer than 8"),
    ("unknown type", doc(type="teleport"), b"u1", "unknown_type", "teleport"),
    ("upper-case type", doc(type="VIEW"), b"u1", "unknown_type", "VIEW"),
    ("ts not a date", doc(ts="yesterday"), b"u1", "bad_timestamp", "ISO-8601"),
    ("ts numeric string", doc(ts=str(NOW)), b"u1", "bad_timestamp", "ISO-8601"),
    ("ts boolean", doc(ts=True), b"u1", "bad_timestamp", "boolean"),
    ("ts null", doc(ts=None), b"u1", "bad_timestamp", "NoneType"),
    ("ts list", doc(ts=[NOW]), b"u1", "bad_timestamp", "list"),
    ("ts before 1970", doc(ts=MIN_TS - 1), b"u1", "timestamp_out_of_range", "from 1970"),
    ("ts ISO 1969", doc(ts="1969-12-31T23:59:59.999Z"), b"u1", "timestamp_out_of_range", ""),
    ("ts just past skew", doc(ts=NOW + SKEW + 1), b"u1", "timestamp_out_of_range", ""),
    ("ts far future", doc(ts="2100-01-01T00:00:00Z"), b"u1", "timestamp_out_of_range", ""),
    ("ts epoch micros", doc(ts=NOW * 1000), b"u1", "timestamp_out_of_range", ""),
    ("key of another user", doc(), b"u2", "key_mismatch", "key"),
    ("empty key", doc(), b"", "key_mismatch", "key"),
    ("negative amount", doc(PURCHASE, amount=-0.01), b"u1", "negative_value", "amount"),
    ("negative amount on view", doc(amount=-1), b"u1", "negative_value", "amount"),
    ("negative price", doc(price=-0.5), b"u1", "negative_value", "price"),
    ("negative quantity", doc(quantity=-1), b"u1", "negative_value", "quantity"),
]


@pytest.mark.parametrize(
    ("value", "key", "reason", "detail"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_dead_letter_reasons(
    value: bytes | None, key: bytes | None, reason: str, detail: str
) -> None:
    result = run(value, key)
    assert isinstance(result, DeadLetter)
    assert result.reason == reason
    assert detail in result.detail
    # The original bytes and the Kafka position travel with the dead letter.
    assert result.value == value
    assert result.key == key
    assert (result.topic, result.partition, result.offset) == (TOPIC, PARTITION, OFFSET)


def test_bad_table_covers_every_reason_of_the_readme() -> None:
    assert {b[3] for b in BAD} == {
        "empty",
        "oversized",
        "not_json",
        "not_utf8",
        "not_object",
        "missing_field",
        "bad_type",
        "bad_value",
        "unknown_type",
        "bad_timestamp",
        "timestamp_out_of_range",
        "key_mismatch",
        "negative_value",
    }


def test_oversized_at_the_exact_limit() -> None:
    raw = doc()
    limit = len(raw) + 10
    at_limit = raw + b" " * 10  # trailing whitespace is valid JSON
    over = raw + b" " * 11
    limits = Limits(max_event_bytes=limit)
    assert isinstance(run(at_limit, limits=limits), Event)
    result = run(over, limits=limits)
    assert isinstance(result, DeadLetter)
    assert result.reason == "oversized"
    assert result.detail == f"{limit + 1} bytes > {limit}"
    assert result.value == over


def test_oversized_is_checked_before_parsing() -> None:
    result = run(b"\xff" * 65537)
    assert isinstance(result, DeadLetter)
    assert result.reason == "oversized"


def test_checks_run_in_a_fixed_order() -> None:
    # Several faults at once: the first check in decode order names the reason.
    both = doc(event_id=MISSING, type="teleport")
    assert run(both).reason == "missing_field"
    bad_ts_and_key = doc(ts="nope")
    assert run(bad_ts_and_key, key=b"other").reason == "bad_timestamp"


def test_timestamp_bounds_are_inclusive() -> None:
    early = run(doc(ts=MIN_TS))
    late = run(doc(ts=NOW + SKEW))
    assert isinstance(early, Event) and early.ts_ms == MIN_TS
    assert isinstance(late, Event) and late.ts_ms == NOW + SKEW


def test_history_from_the_nineties_is_accepted_by_default() -> None:
    old = run(doc(ts="1997-01-01T00:00:00Z"))
    assert isinstance(old, Event) and old.ts_ms == 852_076_800_000


def test_a_raised_floor_is_named_in_the_dead_letter() -> None:
    limits = Limits(min_ts_ms=946_684_800_000)  # SEGMENTER_MIN_EVENT_YEAR=2000
    dl = run(doc(ts="1999-12-31T23:59:59.999Z"), limits=limits)
    assert isinstance(dl, DeadLetter) and dl.reason == "timestamp_out_of_range"
    assert "from 2000-01-01T00:00:00Z to 2023-11-14T23:13:20Z" in dl.detail


def test_limits_are_configurable() -> None:
    limits = Limits(max_future_skew_ms=0, min_ts_ms=NOW - 1000)
    assert run(doc(ts=NOW + 1), limits=limits).reason == "timestamp_out_of_range"
    assert run(doc(ts=NOW - 1001), limits=limits).reason == "timestamp_out_of_range"
    assert isinstance(run(doc(ts=NOW), limits=limits), Event)


@pytest.fixture
def local_zone_not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with a local time zone five hours west of UTC (a POSIX rule: no tz files)."""
    monkeypatch.setenv("TZ", "XST+05:00")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_naive_iso_is_utc_whatever_the_local_zone(local_zone_not_utc: None) -> None:
    assert time.timezone == 5 * 3600
    result = run(doc(ts="2023-11-14T22:13:20"))
    assert isinstance(result, Event)
    assert result.ts_ms == NOW


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (NOW, NOW),
        (NOW - 1, NOW - 1),
        (1_700_000_000_000.9, NOW),  # float epoch ms is truncated
        ("2023-11-14T22:13:20Z", NOW),
        ("2023-11-14T22:13:20.123Z", NOW + 123),
        ("2023-11-14T22:13:20.000+00:00", NOW),
        ("2023-11-14T23:13:20+01:00", NOW),
        ("2023-11-14T16:43:20-05:30", NOW),
        ("2023-11-14T22:13:20", NOW),  # naive = UTC
        ("2023-11-14 22:13:20.5", NOW + 500),
        ("2023-11-14T00:00:00Z", NOW - (22 * 3600 + 13 * 60 + 20) * 1000),
    ],
)
def test_good_timestamps(ts: object, expected: int) -> None:
    result = run(doc(ts=ts))
    assert isinstance(result, Event), result
    assert result.ts_ms == expected


def test_parse_timestamp_rejects_non_finite_floats() -> None:
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(Exception) as info:
            parse_timestamp(bad)
        assert info.value.reason == "bad_timestamp"  # type: ignore[attr-defined]


def test_iso_milliseconds_are_exact_after_2038() -> None:
    # 2039-07-06T01:24:33.693Z is 2_193_528_273_693 ms after the epoch.
    assert parse_timestamp("2039-07-06T01:24:33.693Z") == 2_193_528_273_693


def test_minimal_event() -> None:
    result = run(doc())
    assert result == Event(
        event_id="e1",
        user_id="u1",
        type="view",
        ts_ms=NOW,
        topic=TOPIC,
        partition=PARTITION,
        offset=OFFSET,
    )


def test_optional_fields_are_carried() -> None:
    raw = doc(
        PURCHASE,
        session_id="s9",
        product_id="p7",
        category="books",
        price=5,
        quantity=3,
        amount=15.25,
        currency="EUR",
        ignored_extra="kept out",
    )
    result = decode(raw, b"u1", "shop.purchases", 11, 123_456_789, now_ms=NOW)
    assert result == Event(
        event_id="e1",
        user_id="u1",
        type="purchase",
        ts_ms=NOW,
        topic="shop.purchases",
        partition=11,
        offset=123_456_789,
        session_id="s9",
        product_id="p7",
        category="books",
        price=5.0,
        quantity=3,
        amount=15.25,
        currency="EUR",
    )
    assert isinstance(result.price, float)
    assert isinstance(result.quantity, int)


def test_zero_amounts_and_quantities_are_valid() -> None:
    result = run(doc(PURCHASE, amount=0, price=0.0, quantity=0))
    assert isinstance(result, Event)
    assert (result.amount, result.price, result.quantity) == (0.0, 0.0, 0)


def test_optional_text_may_be_empty_and_null() -> None:
    result = run(doc(category="", session_id=None))
    assert isinstance(result, Event)
    assert result.category == ""
    assert result.session_id is None


def test_missing_key_is_accepted() -> None:
    result = run(doc(), key=None)
    assert isinstance(result, Event)
    assert result.user_id == "u1"


def test_ids_at_the_length_limit_are_accepted() -> None:
    result = run(doc(event_id="x" * 256, user_id="u" * 256), key=b"u" * 256)
    assert isinstance(result, Event)
    assert len(result.event_id) == 256


def test_non_ascii_user_id_matches_its_utf8_key() -> None:
    result = run(doc(user_id="ü-1"), key="ü-1".encode())
    assert isinstance(result, Event)
    assert result.user_id == "ü-1"


@pytest.mark.parametrize("etype", EVENT_TYPES)
def test_every_event_type_is_accepted(etype: str) -> None:
    raw = doc(type=etype, amount=1.0)
    result = run(raw)
    assert isinstance(result, Event)
    assert result.type == etype


def test_event_types_and_their_index() -> None:
    assert EVENT_TYPES == ("view", "click", "add_to_cart", "remove_from_cart", "purchase", "search")
    assert {t: i for i, t in enumerate(EVENT_TYPES)} == TYPE_INDEX
    assert Limits() == Limits(65536, 3_600_000, MIN_TS)
