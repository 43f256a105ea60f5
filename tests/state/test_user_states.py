"""user_hash: the fields of seg:user:{id}, computed without a server."""

from __future__ import annotations

import orjson

from loadtest.personas import ShopperSimulator
from state.user_states import (
    INLINE_STATE_MAX,
    fenced_write_args,
    loaded_state,
    membership_moves,
    stored_state,
    user_hash,
)
from stream.batch import UserUpdate
from stream.events import Event, decode
from stream.features import (
    DAY_MS,
    HOUR_MS,
    UserState,
    apply_events,
    compute_features,
    full_features,
)
from stream.rfm import RFMScores
from stream.state_codec import decode_state, encode_state
from stream.stored_change import StoredChange

T = 1_700_000_000_000  # 2023-11-14T22:13:20.000Z


def make_update(segment: int | None, name: str | None, since: int | None) -> UserUpdate:
    evs = [
        Event("e1", "u42", "view", T - 3 * DAY_MS, "shop.clicks", 0, 7, category="books"),
        Event("e2", "u42", "add_to_cart", T - HOUR_MS, "shop.clicks", 0, 8),
        Event("e3", "u42", "purchase", T, "shop.purchases", 2, 19, amount=42.5),
    ]
    state = apply_events(None, evs).state
    state.segment, state.segment_name, state.segment_since_ms = segment, name, since
    return UserUpdate("u42", state, compute_features(state), None, None, None)


def test_fields_of_a_segmented_user() -> None:
    u = make_update(2, "high_value", T - HOUR_MS)
    h = user_hash(u, model_version=4)
    assert set(h) == {
        "last_event_time",
        "features_as_of",
        "model_version",
        "segment",
        "segment_name",
        "segment_since",
        "features",
    }
    assert h["segment"] == "2"
    assert h["segment_name"] == "high_value"
    assert h["segment_since"] == "2023-11-14T21:13:20.000Z"
    assert h["last_event_time"] == "2023-11-14T22:13:20.000Z"
    # No watermark given: the features are as of the user's own last event.
    assert h["features_as_of"] == h["last_event_time"]
    assert h["model_version"] == "4"
    assert all(isinstance(v, str) for v in h.values())


def test_features_in_human_units() -> None:
    u = make_update(2, "high_value", T)
    stored = orjson.loads(user_hash(u, 1)["features"])
    # Counts by type in window order (1h ... 365d), zeros of other kinds left out; the
    # flat features come back with full_features.
    assert stored["counts"]["views"] == [0, 0, 1, 1, 1, 1]
    assert "views_7d" not in stored and "searches" not in stored["counts"]
    assert "cart_abandonment_30d" not in stored
    features = full_features(stored)
    assert features == u.features
    assert features["purchases_30d"] == 1.0
    assert features["spend_30d"] == 42.5
    assert features["avg_order_value"] == 42.5
    assert features["days_since_last_purchase"] == 0.0
    assert features["views_7d"] == 1.0
    assert features["cart_abandonment_30d"] == 0.0
    assert features["category_diversity_30d"] == 1.0
    assert features["tenure_days"] == 3.0


def test_never_bought_is_null_in_the_features() -> None:
    state = apply_events(None, [Event("v", "u1", "view", T, "shop.clicks", 0, 1)]).state
    u = UserUpdate("u1", state, compute_features(state), None, None, None)
    text = user_hash(u, 1)["features"]
    assert isinstance(text, str)
    assert '"days_since_last_purchase":null' in text
    assert orjson.loads(text)["days_since_last_purchase"] is None


def test_missing_segment_name_is_written_empty() -> None:
    h = user_hash(make_update(0, None, T - HOUR_MS), 1)
    assert h["segment"] == "0"
    assert h["segment_name"] == ""


def test_missing_segment_since_falls_back_to_the_last_event() -> None:
    h = user_hash(make_update(1, "regular", None), 1)
    assert h["segment_since"] == h["last_event_time"] == "2023-11-14T22:13:20.000Z"


def test_no_segment_fields_without_a_segment() -> None:
    h = user_hash(make_update(None, None, None), 0)
    assert set(h) == {
        "last_event_time",
        "features_as_of",
        "model_version",
        "features",
    }
    assert h["model_version"] == "0"


def test_features_are_as_of_the_watermark_when_it_is_later() -> None:
    u = make_update(2, "high_value", T)
    later = user_hash(u, 1, watermark_ms=T + 2 * DAY_MS)
    assert later["features_as_of"] == "2023-11-16T22:13:20.000Z"
    assert later["last_event_time"] == "2023-11-14T22:13:20.000Z"
    # A watermark behind the user's own last event does not take their features back.
    earlier = user_hash(u, 1, watermark_ms=T - DAY_MS)
    assert earlier["features_as_of"] == earlier["last_event_time"]


def test_rfm_code_only_when_scores_exist() -> None:
    u = make_update(2, "high_value", T)
    assert "rfm" not in user_hash(u, 1)
    scored = UserUpdate("u42", u.state, u.features, None, None, None, rfm=RFMScores(5, 3, 4))
    h = user_hash(scored, 1)
    assert h["rfm"] == "534"
    assert set(h) - set(user_hash(u, 1)) == {"rfm"}


def test_fenced_write_args_carry_the_watermark() -> None:
    u = make_update(2, "high_value", T)
    args = fenced_write_args(u, b"\x02state", 4, watermark_ms=T + DAY_MS)
    rest = dict(zip(args[6::2], args[7::2], strict=True))
    assert rest["features_as_of"] == "2023-11-15T22:13:20.000Z"


def test_state_round_trips() -> None:
    u = make_update(3, "at_risk", T - DAY_MS)
    u.state.last_change = StoredChange.from_json("shop.purchases:2", 19, '{"segment":3}')
    back = decode_state(encode_state(u.state))
    assert back == u.state
    assert back.offsets == {"shop.clicks:0": 8, "shop.purchases:2": 19}
    assert back.segment == 3 and back.segment_name == "at_risk"
    assert compute_features(back) == u.features


def test_user_hash_does_not_change_the_update() -> None:
    u = make_update(1, "regular", T)
    before = orjson.dumps(u.state.to_dict())
    features = dict(u.features)
    user_hash(u, 1)
    assert orjson.dumps(u.state.to_dict()) == before
    assert u.features == features


def test_fenced_write_args_follow_the_scripts_layout() -> None:
    u = make_update(2, "high_value", T)
    args = fenced_write_args(u, b"\x02state", 4)
    # ARGV[1] the offset pair count, ARGV[2] the state as stored, then the offset pairs ...
    assert args[:2] == ["2", b"AnN0YXRl"]
    assert loaded_state(args[1]) == b"\x02state"
    assert args[2:6] == ["_o:shop.clicks:0", "8", "_o:shop.purchases:2", "19"]
    # ... then the hash's fields, and last how many partitions the state has input from.
    rest = dict(zip(args[6::2], args[7::2], strict=True))
    assert {k: v for k, v in rest.items() if k != "_on"} == user_hash(u, 4)
    assert args[-2:] == ["_on", "2"]


def test_an_incomplete_state_is_marked_in_the_hash() -> None:
    u = make_update(2, "high_value", T - HOUR_MS)
    assert "state_incomplete" not in user_hash(u, 1)
    u.state.incomplete = True
    assert user_hash(u, 1)["state_incomplete"] == "true"


def _moved(user: str, previous: int | None, seg: int | None) -> UserUpdate:
    return UserUpdate(user, UserState(segment=seg), {}, previous, None, None)


def test_membership_moves_group_users_by_segment() -> None:
    updates = [
        _moved("a", 1, 2),
        _moved("b", None, 2),  # a first segment: added only
        _moved("c", 2, 1),
        _moved("d", 3, 3),  # stayed: no move
        _moved("e", 1, None),  # no segment yet: no move
    ]
    assert membership_moves(updates) == (3, {2: ["a", "b"], 1: ["c"]}, {1: ["a"], 2: ["c"]})
    # Fenced-off writes move no one.
    assert membership_moves(updates, {"a", "c"}) == (1, {2: ["b"]}, {})


def test_a_user_with_two_updates_ends_in_the_last_segment_only() -> None:
    # A change in doubt published again (1 -> 2), then a new decision (2 -> 3): whatever
    # order Redis applies the grouped commands in, the user is in 3 alone.
    again = UserUpdate("u", UserState(segment=1), {}, 1, None, None, b"{}", 2, write=False)
    moves, added, removed = membership_moves([again, _moved("u", 2, 3)])
    assert (moves, added, removed) == (2, {3: ["u"]}, {1: ["u"], 2: ["u"]})
    # Back where they started (1 -> 2 -> 1): removed from 2, added to 1, never removed from 1.
    again = UserUpdate("u", UserState(segment=1), {}, 1, None, None, b"{}", 2, write=False)
    assert membership_moves([again, _moved("u", 2, 1)]) == (2, {1: ["u"]}, {2: ["u"]})


def test_every_simulated_users_features_come_back_from_the_hash_exactly() -> None:
    """The hash leaves out zeros and event types with no count; reading it back gives
    every feature, for shoppers of every persona at several ages."""
    end = 1_790_000_000_000
    by_user: dict[str, list[dict[str, object]]] = {}
    for e in ShopperSimulator(150, 7, end - 400 * DAY_MS, end).events(15_000):
        by_user.setdefault(str(e["user_id"]), []).append(e)
    checked = 0
    for uid, raw in by_user.items():
        events = [
            ev
            for i, e in enumerate(raw)
            if isinstance(ev := decode(orjson.dumps(e), uid.encode(), "c", 0, i, end), Event)
        ]
        state = apply_events(None, sorted(events, key=lambda ev: ev.ts_ms)).state
        for age in (0, 3 * DAY_MS, 40 * DAY_MS, 200 * DAY_MS, 500 * DAY_MS):
            features = compute_features(state, state.last_event_ms + age)
            h = user_hash(UserUpdate(uid, state, features, None, None, None), 1)
            assert full_features(orjson.loads(h["features"])) == features
            checked += 1
    assert checked >= 500


def test_short_states_are_stored_as_base64_text_and_long_ones_as_they_are() -> None:
    light = make_update(1, "new", T).state
    busy = apply_events(
        None,
        [
            Event(f"e{i}", "u42", "purchase", T - i * DAY_MS, "shop.purchases", 0, i, amount=i)
            for i in range(300)
        ],
    ).state
    for state in (light, busy):
        blob = encode_state(state)
        stored = stored_state(blob)
        assert decode_state(loaded_state(stored)) == state
        if len(blob) <= INLINE_STATE_MAX:
            assert stored.isascii() and stored[0] >= 32  # readable as text in the hash
        else:
            assert stored == blob and stored[0] < 32  # bytes, for the state key
    assert len(encode_state(light)) <= INLINE_STATE_MAX < len(encode_state(busy))
