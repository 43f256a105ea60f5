"""The binary user-state encoding: exact round trips and compactness."""

from __future__ import annotations

import hashlib
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import stream
from stream.events import EVENT_TYPES, Event
from stream.features import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    UserState,
    apply_events,
    compute_features,
)
from stream.messages import SegmentChange, change_id
from stream.state_codec import (
    DEFLATED,
    DEFLATED_WITH_DICTIONARY,
    DICTIONARY_SIZE,
    FORMAT,
    decode_state,
    encode_state,
    plain_blob,
)
from stream.stored_change import StoredChange

NOW = 1_700_000_000_000


def _events(rng: random.Random, n: int, user: str = "u") -> list[Event]:
    out = []
    for i in range(n):
        etype = rng.choice(EVENT_TYPES)
        out.append(
            Event(
                f"{user}-e{i}",
                user,
                etype,
                NOW - rng.randrange(0, 29 * DAY_MS),
                rng.choice(("shop.clicks", "shop.purchases")),
                rng.randrange(4),
                i,
                category=rng.choice((None, "books", "toys", "garden & patio", "épicerie")),
                amount=round(rng.uniform(1, 300), 2) if etype == "purchase" else None,
                price=round(rng.uniform(0, 500), 2) if etype in ("view", "click") else None,
            )
        )
    out.sort(key=lambda e: e.ts_ms)
    return out


def _rich() -> UserState:
    s = apply_events(None, _events(random.Random(3), 120)).state
    s.segment, s.segment_name, s.segment_since_ms = 4, "loyal high spenders", NOW - HOUR_MS
    s.last_change = StoredChange.from_json("shop.clicks:2", 77, '{"segment":4,"x":"é"}')
    return s


def _light() -> UserState:
    # One visit of two events and a first segment: most users of a large shop.
    s = apply_events(None, _events(random.Random(5), 2)).state
    s.segment, s.segment_name, s.segment_since_ms = 1, "window shoppers", NOW
    s.last_change = StoredChange.from_json("shop.clicks:2", 7, '{"segment":1}')
    return s


def test_round_trip_is_exact_and_keeps_the_features() -> None:
    s = _rich()
    back = decode_state(encode_state(s))
    assert back == s
    assert compute_features(back) == compute_features(s)
    assert encode_state(back) == encode_state(s)


@pytest.mark.parametrize("seed", range(20))
def test_random_states_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    s = None
    for batch in range(rng.randrange(1, 5)):
        s = apply_events(s, _events(rng, rng.randrange(1, 60), user=f"u{batch}")).state
    assert s is not None
    assert decode_state(encode_state(s)) == s


def test_empty_state_round_trips() -> None:
    assert decode_state(encode_state(UserState())) == UserState()


def test_busy_rows_and_spend_are_written_wide() -> None:
    # 300 views in one minute do not fit a byte; a purchase row carries its spend.
    views = [Event(f"v{i}", "u", "view", NOW, "c", 0, i) for i in range(300)]
    buy = Event("b", "u", "purchase", NOW, "p", 0, 1, amount=19.99)
    old_buy = Event("b0", "u", "purchase", NOW - 2 * DAY_MS, "p", 0, 2, amount=5.5)
    s = apply_events(None, [*views, buy, old_buy], dedupe_window=32).state
    back = decode_state(encode_state(s))
    assert back == s
    assert back.minutes[NOW // MINUTE_MS][0] == 300
    assert back.days[NOW // DAY_MS][6] == 19.99
    assert back.days[NOW // DAY_MS - 2][4:] == [1, 0, 5.5]


@pytest.mark.parametrize(("make", "first"), [(_rich, FORMAT), (_light, DEFLATED_WITH_DICTIONARY)])
def test_much_smaller_than_json(make: Callable[[], UserState], first: int) -> None:
    s = make()
    blob, as_json = encode_state(s), orjson.dumps(s.to_dict())
    # A busy user's large blob stays plain; a light user's is deflated.
    assert blob[0] == first
    assert len(blob) * 2 < len(as_json), (len(blob), len(as_json))


def test_a_deflated_blob_inflates_to_the_plain_layout() -> None:
    s = _light()
    blob = encode_state(s)
    plain = plain_blob(blob)
    assert plain[0] == FORMAT and len(blob) * 3 < len(plain) * 2
    # Both layouts decode to the same state: a plain blob is still read.
    assert decode_state(plain) == decode_state(blob) == s


def test_the_dictionary_saves_a_quarter_over_deflate_alone() -> None:
    s = _light()
    blob, plain = encode_state(s), plain_blob(encode_state(s))
    alone = zlib.compress(plain, 9, wbits=-15)
    assert len(blob) * 4 < len(alone) * 3, (len(blob), len(alone))


def test_blobs_deflated_without_the_dictionary_are_still_read() -> None:
    s = _light()
    plain = plain_blob(encode_state(s))
    old = bytes([DEFLATED]) + zlib.compress(plain, 1, wbits=-15)
    assert plain_blob(old) == plain
    assert decode_state(old) == s


def test_the_dictionary_is_the_one_blobs_were_written_with() -> None:
    # Blobs in Redis inflate only with the dictionary they were deflated with: a new
    # dictionary needs a new format byte (stream/state_codec.py), and this digest with it.
    zdict = (Path(stream.__file__).parent / "state_dictionary.bin").read_bytes()
    assert len(zdict) == DICTIONARY_SIZE
    assert hashlib.sha256(zdict).hexdigest() == (
        "d28dc32500a20ca08d533e1e36b48e2515dd1f1010ee96a4ada6e33a129684a6"
    )


def test_damaged_deflated_blobs_are_refused() -> None:
    blob = encode_state(_light())
    with pytest.raises(ValueError, match="cut short"):
        decode_state(blob[:-3])
    with pytest.raises(ValueError, match="unread bytes"):
        decode_state(blob + b"\x00")
    with pytest.raises(ValueError, match="does not inflate"):
        decode_state(bytes([DEFLATED, 0xFF, 0xFF, 0xFF]))
    with pytest.raises(ValueError, match="does not inflate"):
        decode_state(bytes([DEFLATED_WITH_DICTIONARY, 0xFF, 0xFF, 0xFF]))


def test_unknown_format_and_trailing_bytes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown user-state format"):
        decode_state(b"\x09abc")
    plain = encode_state(_rich())
    with pytest.raises(ValueError, match="unread bytes"):
        decode_state(plain + b"\x00")


def test_unpruned_rows_are_refused() -> None:
    s = UserState(last_event_ms=NOW, minutes={NOW // MINUTE_MS - 500: [1, 0, 0, 0, 0, 0, 0.0]})
    with pytest.raises(ValueError, match="not pruned"):
        encode_state(s)


def _change(previous: int | None, days_since: float | None) -> SegmentChange:
    return SegmentChange(
        change_id=change_id("user-ü7", "e-9", previous, 3),
        user_id="user-ü7",
        previous_segment=previous,
        previous_segment_name=None if previous is None else "window shoppers",
        segment=3,
        segment_name="loyal high spenders",
        model_version=12,
        event_time_ms=NOW - 5_123,
        emitted_at_ms=NOW + 77,
        distance_margin=0.123456789,
        runner_up_segment=1,
        top_features=("spend_30d", "purchases_30d", "tenure_days"),
        features={
            "events_30d": 14.0,
            "purchases_30d": 2.0,
            "spend_30d": 123.45,
            "days_since_last_purchase": days_since,
            "avg_order_value": 61.73,
            "conversion_rate_30d": 0.25,
        },
    )


@pytest.mark.parametrize(("previous", "days_since"), [(None, None), (0, 2.5)])
def test_a_stored_change_round_trips_packed(previous: int | None, days_since: float | None) -> None:
    s = _rich()
    change = _change(previous, days_since)
    s.last_change = StoredChange.of("shop.purchases:1", 9, change)
    blob = encode_state(s)
    back = decode_state(blob)
    assert back.last_change == s.last_change
    assert back.last_change is not None and back.last_change.value() == change.to_json()
    s.last_change = None
    # Packed as fields, the change takes well under half its JSON.
    assert len(blob) - len(encode_state(s)) < len(change.to_json()) // 2


def test_prices_round_trip_exactly_and_only_when_seen() -> None:
    s = _rich()
    assert s.price_weight > 0  # its views carried prices
    back = decode_state(encode_state(s))
    assert (back.price_sum, back.price_weight) == (s.price_sum, s.price_weight)
    assert UserState.from_dict(orjson.loads(orjson.dumps(s.to_dict()))) == s
    # A state with no price stores none: the 16 bytes are written only when there is one.
    plain = UserState(NOW - DAY_MS, NOW)
    priced = UserState(NOW - DAY_MS, NOW, price_sum=3.5, price_weight=0.75)

    def plain_length(state: UserState) -> int:
        return len(plain_blob(encode_state(state)))

    assert plain_length(priced) - plain_length(plain) == 16
    assert decode_state(encode_state(priced)) == priced
    assert "pr" not in plain.to_dict()


def test_an_incomplete_state_stays_marked() -> None:
    s = _rich()
    s.incomplete = True
    back = decode_state(encode_state(s))
    assert back.incomplete and back == s
    assert UserState.from_dict(s.to_dict()).incomplete
    assert not decode_state(encode_state(_rich())).incomplete
