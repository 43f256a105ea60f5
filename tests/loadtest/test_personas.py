"""The shopper simulator: deterministic, valid events, personas that behave as named."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

import orjson
import pytest

from loadtest.personas import (
    CATEGORIES,
    DEFAULT_SHARES,
    MALFORMED_KINDS,
    MAX_EVENT_BYTES,
    PERSONAS,
    PersonaShift,
    ShopperSimulator,
    malformed_event,
)
from stream.events import EVENT_TYPES, DeadLetter, Event, decode

DAY = 86_400_000
END = 1_800_000_000_000
START = END - 30 * DAY
REQUIRED = {"event_id": str, "user_id": str, "type": str, "ts": int}
OPTIONAL = {
    "session_id": str,
    "product_id": str,
    "category": str,
    "price": float,
    "quantity": int,
    "amount": float,
    "currency": str,
}

Events = list[dict[str, object]]


def simulate(
    n_users: int = 2000, n_events: int = 60_000, seed: int = 3
) -> tuple[ShopperSimulator, Events]:
    sim = ShopperSimulator(n_users, seed, START, END)
    return sim, list(sim.events(n_events))


@pytest.fixture(scope="module")
def run() -> tuple[dict[str, str], Events]:
    sim, events = simulate()
    return sim.ground_truth(), events


def per_persona(truth: dict[str, str], events: Events) -> dict[str, Counter[str]]:
    """Persona -> event type -> count per user of that persona."""
    totals: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        totals[truth[str(e["user_id"])]][str(e["type"])] += 1
    sizes = Counter(truth.values())
    return {p: Counter({t: n / sizes[p] for t, n in c.items()}) for p, c in totals.items()}


def test_same_seed_same_users_and_events_other_seed_other_ones() -> None:
    a, events_a = simulate(300, 5000, seed=11)
    b, events_b = simulate(300, 5000, seed=11)
    c, events_c = simulate(300, 5000, seed=12)
    assert events_a == events_b
    assert a.ground_truth() == b.ground_truth()
    assert events_a != events_c
    assert a.ground_truth() != c.ground_truth()


def test_events_match_the_schema(run: tuple[dict[str, str], Events]) -> None:
    truth, events = run
    assert len(events) == 60_000
    for e in events:
        for key, kind in REQUIRED.items():
            assert type(e[key]) is kind, (key, e)
        for key in e.keys() - REQUIRED.keys():
            assert type(e[key]) is OPTIONAL[key], (key, e)
        assert e["type"] in EVENT_TYPES
        assert e["user_id"] in truth
        assert re.fullmatch(r"u\d{6}", str(e["user_id"]))
        if "category" in e:
            assert e["category"] in CATEGORIES
        if "price" in e:
            price = e["price"]
            assert isinstance(price, float) and price > 0 and round(price, 2) == price
        if "quantity" in e:
            assert isinstance(e["quantity"], int) and e["quantity"] >= 1
        if e["type"] == "purchase":
            amount = e["amount"]
            assert isinstance(amount, float) and amount >= 0 and round(amount, 2) == amount
            assert e["currency"] == "EUR"
        else:
            assert "amount" not in e and "currency" not in e
        if e["type"] in ("view", "click", "add_to_cart", "remove_from_cart"):
            assert {"product_id", "category", "price"} <= e.keys()
    assert len({e["event_id"] for e in events}) == len(events)


def test_event_times_cover_the_span_in_order(run: tuple[dict[str, str], Events]) -> None:
    _, events = run
    ts = [int(e["ts"]) for e in events]  # type: ignore[call-overload]
    assert all(START <= t <= END for t in ts)
    assert all(a <= b for a, b in itertools.pairwise(ts))
    assert ts[0] < START + DAY and ts[-1] > END - DAY
    # A daily cycle: evenings (UTC) are busier than the small hours.
    by_hour = Counter((t % DAY) // 3_600_000 for t in ts)
    assert by_hour[20] > 2 * by_hour[5]


def test_sessions_are_coherent(run: tuple[dict[str, str], Events]) -> None:
    _, events = run
    sessions: dict[str, Events] = defaultdict(list)
    for e in events:
        sessions[str(e["session_id"])].append(e)
    checked_checkouts = 0
    for evs in sessions.values():
        assert len({e["user_id"] for e in evs}) == 1
        viewed: set[object] = set()
        cart: dict[object, float] = {}
        for e in evs:
            if e["type"] == "view":
                viewed.add(e["product_id"])
            elif e["type"] in ("click", "add_to_cart"):
                assert e["product_id"] in viewed, e
                if e["type"] == "add_to_cart":
                    cart[e["product_id"]] = e["price"] * e["quantity"]  # type: ignore[operator]
            elif e["type"] == "remove_from_cart":
                assert cart.pop(e["product_id"], None) is not None, e
            elif e["type"] == "purchase":
                assert e is evs[-1]
                if cart:
                    assert e["amount"] == pytest.approx(sum(cart.values()), abs=0.011)
                    checked_checkouts += 1
    assert checked_checkouts > 100
    # The same product has the same price and category wherever it appears.
    seen: dict[object, tuple[object, object]] = {}
    for e in events:
        if "product_id" in e and "price" in e:
            assert seen.setdefault(e["product_id"], (e["price"], e["category"])) == (
                e["price"],
                e["category"],
            )


def test_shares_are_respected() -> None:
    assert Counter(ShopperSimulator(1000, 1, START, END).ground_truth().values()) == {
        name: 200 for name, share in DEFAULT_SHARES.items() if share > 0
    }
    sim = ShopperSimulator(
        1001, 1, START, END, shares={"window_shopper": 3.0, "loyal_high_spender": 1.0}
    )
    counts = Counter(sim.ground_truth().values())
    assert set(counts) == {"window_shopper", "loyal_high_spender"}
    assert sum(counts.values()) == 1001
    assert abs(counts["window_shopper"] - 751) <= 1


def test_window_shoppers_look_and_loyal_spenders_buy(
    run: tuple[dict[str, str], Events],
) -> None:
    truth, events = run
    rate = per_persona(truth, events)
    window, loyal = rate["window_shopper"], rate["loyal_high_spender"]
    assert window["purchase"] < 0.1 * loyal["purchase"]
    assert window["add_to_cart"] < 0.5 * loyal["add_to_cart"]
    assert window["view"] + window["click"] + window["search"] > 4 * (
        loyal["view"] + loyal["click"] + loyal["search"]
    )


def test_bargain_hunters_buy_often_and_cheap(run: tuple[dict[str, str], Events]) -> None:
    truth, events = run
    rate = per_persona(truth, events)
    bargain, loyal = rate["bargain_hunter"], rate["loyal_high_spender"]
    assert bargain["remove_from_cart"] > 5 * loyal["remove_from_cart"]
    assert bargain["search"] > 3 * loyal["search"]
    assert bargain["purchase"] > loyal["purchase"]
    amounts: dict[str, list[float]] = defaultdict(list)
    categories: dict[str, set[object]] = defaultdict(set)
    for e in events:
        persona = truth[str(e["user_id"])]
        if e["type"] == "purchase":
            amounts[persona].append(float(e["amount"]))  # type: ignore[arg-type]
        if persona in ("bargain_hunter", "loyal_high_spender"):
            categories[str(e["user_id"])].add(e.get("category"))

    def mean(xs: Sequence[float]) -> float:
        return sum(xs) / len(xs)

    assert mean(amounts["bargain_hunter"]) < 0.25 * mean(amounts["loyal_high_spender"])
    assert sum(amounts["loyal_high_spender"]) > 3 * sum(amounts["bargain_hunter"])
    n_cats = {
        p: [len(c) for u, c in categories.items() if truth[u] == p]
        for p in ("bargain_hunter", "loyal_high_spender")
    }
    assert mean(n_cats["bargain_hunter"]) > 3 * mean(n_cats["loyal_high_spender"])


def test_lapsing_customers_shop_early_then_go_quiet(
    run: tuple[dict[str, str], Events],
) -> None:
    truth, events = run
    lapsing = [e for e in events if truth[str(e["user_id"])] == "lapsing_customer"]
    early = [e for e in lapsing if int(e["ts"]) < START + 10 * DAY]  # type: ignore[call-overload]
    late = [e for e in lapsing if int(e["ts"]) > END - 10 * DAY]  # type: ignore[call-overload]
    assert len(early) > 1000
    assert len(late) < 0.1 * len(early)
    assert sum(e["type"] == "purchase" for e in early) > 100


def test_new_users_appear_only_in_the_last_days(run: tuple[dict[str, str], Events]) -> None:
    truth, events = run
    new = [e for e in events if truth[str(e["user_id"])] == "new_user"]
    assert len({e["user_id"] for e in new}) > 100
    assert all(int(e["ts"]) >= END - 2 * DAY for e in new)  # type: ignore[call-overload]
    purchases = Counter(e["user_id"] for e in new if e["type"] == "purchase")
    assert purchases and max(purchases.values()) == 1
    per_user = Counter(e["user_id"] for e in new)
    older = Counter(
        e["user_id"] for e in events if truth[str(e["user_id"])] == "loyal_high_spender"
    )
    assert sum(per_user.values()) / len(per_user) < sum(older.values()) / len(older)


def test_event_ids_stay_unique_across_calls() -> None:
    sim = ShopperSimulator(50, 5, START, END)
    first, second = list(sim.events(500)), list(sim.events(500))
    assert not {e["event_id"] for e in first} & {e["event_id"] for e in second}
    assert [e["event_id"] for e in first[:2]] == ["5-1", "5-2"]


def test_generated_events_pass_the_consumer_decoder(
    run: tuple[dict[str, str], Events],
) -> None:
    _, events = run
    for i, e in enumerate(events[:5000]):
        result = decode(orjson.dumps(e), str(e["user_id"]).encode(), "t", 0, i, now_ms=END)
        assert isinstance(result, Event), result


def _check_malformed(kind: str, payload: bytes) -> None:
    """Assert that ``payload`` has exactly the defect its kind names."""
    if kind == "not_utf8":
        with pytest.raises(UnicodeDecodeError):
            payload.decode("utf-8")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(payload)
        return
    payload.decode("utf-8")  # every other kind is valid text
    if kind == "not_json":
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(payload)
        return
    doc = orjson.loads(payload)
    if kind == "json_array":
        assert isinstance(doc, list)
        return
    assert isinstance(doc, dict)
    if kind == "oversized":
        assert len(payload) > MAX_EVENT_BYTES
        assert doc["type"] in EVENT_TYPES and isinstance(doc["user_id"], str)
        return
    assert len(payload) < 1024
    if kind == "missing_user_id":
        assert "user_id" not in doc and {"event_id", "type", "ts"} <= doc.keys()
    elif kind == "negative_amount":
        assert doc["type"] == "purchase" and doc["amount"] < 0
    elif kind == "purchase_without_amount":
        assert doc["type"] == "purchase" and "amount" not in doc
    elif kind == "unknown_type":
        assert doc["type"] not in EVENT_TYPES
    elif kind == "nonsense_ts":
        assert isinstance(doc["ts"], str)
        with pytest.raises(ValueError):
            datetime.fromisoformat(doc["ts"])
    elif kind == "far_future_ts":
        assert isinstance(doc["ts"], int)
        assert datetime.fromtimestamp(doc["ts"] / 1000, UTC).year >= 2300
    else:
        raise AssertionError(f"unexpected kind {kind}")
    if kind != "missing_user_id":
        assert doc["user_id"] == "u000042"


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_each_malformed_kind_is_malformed_its_own_way(kind: str) -> None:
    rng = random.Random(kind)
    for _ in range(20):
        got, payload = malformed_event(rng, "u000042", kind=kind)
        assert got == kind
        _check_malformed(kind, payload)


def test_malformed_kinds_are_distinct_and_all_drawn() -> None:
    assert len(set(MALFORMED_KINDS)) == len(MALFORMED_KINDS) == 10
    rng = random.Random(1)
    drawn = Counter(malformed_event(rng)[0] for _ in range(1000))
    assert set(drawn) == set(MALFORMED_KINDS)
    assert malformed_event(random.Random(9)) == malformed_event(random.Random(9))
    with pytest.raises(ValueError, match="kind"):
        malformed_event(rng, kind="slightly_off")


def test_every_malformed_kind_is_dead_lettered_by_the_consumer() -> None:
    rng = random.Random(2)
    for kind in MALFORMED_KINDS:
        _, payload = malformed_event(rng, "u000001", kind=kind, ts_ms=END - DAY)
        result = decode(payload, b"u000001", "t", 0, 0, now_ms=END)
        assert isinstance(result, DeadLetter), kind


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_users": 2.5}, "n_users"),
        ({"seed": "seven"}, "seed"),
        ({"start_ms": -1}, "start_ms"),
        ({"end_ms": START}, "end_ms"),
        ({"shares": {"astronaut": 1.0}}, "shares"),
        ({"shares": {"new_user": -1.0}}, "shares"),
        ({"shares": {"new_user": 0.0}}, "shares"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {
        "n_users": 10,
        "seed": 1,
        "start_ms": START,
        "end_ms": END,
        **kwargs,
    }
    with pytest.raises(ValueError, match=name):
        ShopperSimulator(**args)  # type: ignore[arg-type]


def test_bad_event_count_and_persona_parameters_name_themselves() -> None:
    sim = ShopperSimulator(10, 1, START, END)
    with pytest.raises(ValueError, match="n_events"):
        sim.events(-1)
    assert list(sim.events(0)) == []
    with pytest.raises(ValueError, match="p_click"):
        dataclasses.replace(PERSONAS["window_shopper"], p_click=1.5)
    with pytest.raises(ValueError, match="n_categories"):
        dataclasses.replace(PERSONAS["window_shopper"], n_categories=0)


def test_small_populations_and_short_spans_work() -> None:
    sim = ShopperSimulator(1, 4, START, START + 1000)
    events = list(sim.events(300))
    assert len(events) == 300
    assert {e["user_id"] for e in events} == {"u000001"}
    assert all(START <= int(e["ts"]) <= START + 1000 for e in events)  # type: ignore[call-overload]


# -- personas outside the default mix ------------------------------------------------------

QUARTER_START = END - 90 * DAY
LIFECYCLE = {
    "loyal_high_spender": 1.0,
    "dormant_customer": 1.0,
    "reactivated_customer": 1.0,
}


@pytest.fixture(scope="module")
def lifecycle() -> tuple[dict[str, str], Events]:
    sim = ShopperSimulator(600, 5, QUARTER_START, END, shares=LIFECYCLE)
    return sim.ground_truth(), list(sim.events(80_000))


def _span_share(ts: int) -> float:
    return (ts - QUARTER_START) / (END - QUARTER_START)


def test_the_default_mix_leaves_the_lifecycle_personas_out() -> None:
    assert DEFAULT_SHARES["dormant_customer"] == DEFAULT_SHARES["reactivated_customer"] == 0.0
    assert sum(share > 0 for share in DEFAULT_SHARES.values()) == 5
    truth = ShopperSimulator(997, 2, START, END).ground_truth()
    assert not {"dormant_customer", "reactivated_customer"} & set(truth.values())
    # A zero share gets no leftover user either, whatever the rounding.
    for n in (1, 2, 3, 7, 11):
        sim = ShopperSimulator(n, 1, START, END, shares={**DEFAULT_SHARES, "new_user": 0.3})
        assert "dormant_customer" not in sim.ground_truth().values()


def test_dormant_customers_buy_a_few_times_early_then_go_silent(
    lifecycle: tuple[dict[str, str], Events],
) -> None:
    truth, events = lifecycle
    dormant = [e for e in events if truth[str(e["user_id"])] == "dormant_customer"]
    purchases = Counter(e["user_id"] for e in dormant if e["type"] == "purchase")
    assert len(purchases) > 100
    assert max(purchases.values()) <= PERSONAS["dormant_customer"].max_purchases  # type: ignore[operator]
    late = [e for e in dormant if _span_share(int(e["ts"])) > 0.25]  # type: ignore[call-overload]
    # After the lapse: no purchase at all, and hardly a visit.
    assert not [e for e in late if e["type"] == "purchase"]
    assert len(late) < 0.03 * len(dormant)


def test_reactivated_customers_vanish_in_the_middle_and_come_back(
    lifecycle: tuple[dict[str, str], Events],
) -> None:
    truth, events = lifecycle
    users = {u for u, p in truth.items() if p == "reactivated_customer"}
    by_third: dict[str, Counter[str]] = defaultdict(Counter)
    for e in events:
        if e["user_id"] in users:
            share = _span_share(int(e["ts"]))  # type: ignore[call-overload]
            part = "early" if share < 0.15 else "late" if share > 0.9 else "middle"
            by_third[part][str(e["user_id"])] += 1
    # The middle runs from 0.3 (the latest lapse) to 0.8 (the earliest return).
    middle = [
        e
        for e in events
        if e["user_id"] in users and 0.3 < _span_share(int(e["ts"])) < 0.8  # type: ignore[call-overload]
    ]
    assert middle == []
    both = set(by_third["early"]) & set(by_third["late"])
    assert len(both) > 0.8 * len(users)
    late_buys = {
        e["user_id"]
        for e in events
        if e["user_id"] in users and e["type"] == "purchase" and _span_share(int(e["ts"])) > 0.8  # type: ignore[call-overload]
    }
    assert len(late_buys) > 0.3 * len(users)


def test_loyal_customers_in_the_lifecycle_mix_shop_throughout(
    lifecycle: tuple[dict[str, str], Events],
) -> None:
    truth, events = lifecycle
    loyal = [e for e in events if truth[str(e["user_id"])] == "loyal_high_spender"]
    middle = [e for e in loyal if 0.4 < _span_share(int(e["ts"])) < 0.7]  # type: ignore[call-overload]
    assert len(middle) > 0.2 * len(loyal)


def test_a_shift_into_the_reactivated_persona_follows_its_lapse_and_return() -> None:
    shift = PersonaShift(
        at=0.5, share=1.0, from_persona="window_shopper", to_persona="reactivated_customer"
    )
    sim = ShopperSimulator(
        200,
        3,
        QUARTER_START,
        END,
        shares={"window_shopper": 1.0, "loyal_high_spender": 1.0},
        shift=shift,
    )
    events = list(sim.events(20_000))
    shifted = set(sim.shifted_users())
    assert shifted and all(sim.ground_truth()[u] == "reactivated_customer" for u in shifted)
    # Their lapse (0.15 to 0.3) is before the shift, so they are silent from it until they
    # come back (0.8 to 0.9).
    gap = [
        e
        for e in events
        if e["user_id"] in shifted and 0.52 < _span_share(int(e["ts"])) < 0.8  # type: ignore[call-overload]
    ]
    assert gap == []
    assert any(
        e["user_id"] in shifted and _span_share(int(e["ts"])) > 0.9  # type: ignore[call-overload]
        for e in events
    )


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"comeback": (0.1, 0.5)}, "comeback"),
        ({"comeback": (0.9, 0.8)}, "comeback"),
        ({"comeback": (0.9, 1.2)}, "comeback"),
    ],
)
def test_bad_comebacks_name_themselves(change: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        dataclasses.replace(PERSONAS["lapsing_customer"], **change)  # type: ignore[arg-type]
