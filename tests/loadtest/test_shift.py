"""Persona shifts in the simulator: deterministic, and shifted users change behaviour."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import ClassVar

import orjson
import pytest

from loadtest import generator
from loadtest.generator import write_ground_truth
from loadtest.personas import (
    DEFAULT_SHIFT,
    PERSONAS,
    PersonaShift,
    ShiftedUser,
    ShopperSimulator,
)

DAY = 86_400_000
END = 1_800_000_000_000
START = END - 30 * DAY

Events = list[dict[str, object]]


def simulate(
    shift: PersonaShift | None, n_users: int = 1000, n_events: int = 60_000, seed: int = 5
) -> tuple[ShopperSimulator, Events]:
    sim = ShopperSimulator(n_users, seed, START, END, shift=shift)
    return sim, list(sim.events(n_events))


@pytest.fixture(scope="module")
def shifted_run() -> tuple[ShopperSimulator, Events]:
    return simulate(DEFAULT_SHIFT)


def ts(e: dict[str, object]) -> int:
    value = e["ts"]
    assert isinstance(value, int)
    return value


def per_user(
    sim: ShopperSimulator, events: Events, group: set[str], after: bool
) -> tuple[float, float, float]:
    """(events, purchases, spend) per user of ``group``, before or after the shift."""
    assert sim.shift_ms is not None
    n = purchases = 0
    spend = 0.0
    for e in events:
        if e["user_id"] in group and (ts(e) >= sim.shift_ms) == after:
            n += 1
            if e["type"] == "purchase":
                purchases += 1
                spend += float(e["amount"])  # type: ignore[arg-type]
    return n / len(group), purchases / len(group), spend / len(group)


def groups(sim: ShopperSimulator) -> tuple[set[str], set[str], set[str]]:
    """Shifted users, unshifted users of the source persona, and of the target one."""
    shift = sim.shift
    assert shift is not None
    shifted = set(sim.shifted_users())
    end = sim.ground_truth()
    source = {u for u, p in end.items() if p == shift.from_persona} - shifted
    target = {u for u, p in end.items() if p == shift.to_persona} - shifted
    return shifted, source, target


def test_without_a_shift_the_events_are_byte_for_byte_those_of_before() -> None:
    # Digest of these events as the simulator made them before shifts existed.
    plain, events = simulate(None, 300, 5000, seed=11)
    digest = hashlib.sha256(b"".join(orjson.dumps(e) + b"\n" for e in events)).hexdigest()
    assert digest == "42750f57136eeb5ba28bab301b0fe429b8c38127cc257e7bb1f586e577a784f1"
    assert plain.shifted_users() == {} and plain.shift_ms is None


def test_a_shift_is_reproducible_and_depends_on_the_seed() -> None:
    _, plain_events = simulate(None, 300, 5000, seed=11)
    a, events_a = simulate(DEFAULT_SHIFT, 300, 5000, seed=11)
    b, events_b = simulate(DEFAULT_SHIFT, 300, 5000, seed=11)
    assert events_a == events_b
    assert a.shifted_users() == b.shifted_users() and a.ground_truth() == b.ground_truth()
    assert events_a != plain_events
    c, _ = simulate(DEFAULT_SHIFT, 300, 5000, seed=12)
    assert c.shifted_users().keys() != a.shifted_users().keys()


def test_a_shift_leaves_the_users_and_their_personas_at_the_start_alone() -> None:
    plain = ShopperSimulator(1000, 5, START, END)
    sim = ShopperSimulator(1000, 5, START, END, shift=DEFAULT_SHIFT)
    start = {u: s.before for u, s in sim.shifted_users().items()}
    assert {u: plain.ground_truth()[u] for u in start} == start
    assert {**sim.ground_truth(), **start} == plain.ground_truth()


def test_ground_truth_names_who_shifted_from_what_to_what_and_when() -> None:
    shift = PersonaShift(at=0.6, share=0.5, from_persona="window_shopper", to_persona="new_user")
    sim = ShopperSimulator(1000, 5, START, END, shift=shift)
    shifted = sim.shifted_users()
    assert len(shifted) == 100  # half of the 200 window shoppers
    at_ms = START + round(0.6 * 30 * DAY)
    assert sim.shift_ms == at_ms
    assert set(shifted.values()) == {ShiftedUser("window_shopper", "new_user", at_ms)}
    end = sim.ground_truth()
    assert all(end[u] == "new_user" for u in shifted)
    assert Counter(end.values()) == {
        "window_shopper": 100,
        "new_user": 300,
        "bargain_hunter": 200,
        "loyal_high_spender": 200,
        "lapsing_customer": 200,
    }
    # At least one user shifts, however small the share.
    tiny = ShopperSimulator(20, 5, START, END, shift=dataclasses.replace(shift, share=0.01))
    assert len(tiny.shifted_users()) == 1


def test_shifted_users_follow_the_source_before_and_the_target_after(
    shifted_run: tuple[ShopperSimulator, Events],
) -> None:
    sim, events = shifted_run
    shifted, window, loyal = groups(sim)
    assert len(shifted) == 100 and len(window) == 100 and len(loyal) == 200
    # Before the shift, shifted users are window shoppers: many events, hardly a purchase.
    ev_s, buy_s, spend_s = per_user(sim, events, shifted, after=False)
    ev_w, buy_w, spend_w = per_user(sim, events, window, after=False)
    ev_l, buy_l, spend_l = per_user(sim, events, loyal, after=False)
    assert ev_s == pytest.approx(ev_w, rel=0.25) and ev_s > 3 * ev_l
    assert buy_s < 0.15 * buy_l and spend_s < 0.1 * spend_l
    # After it, they shop like the loyal high spenders, and no longer like their old peers.
    ev_s, buy_s, spend_s = per_user(sim, events, shifted, after=True)
    ev_w, buy_w, spend_w = per_user(sim, events, window, after=True)
    ev_l, buy_l, spend_l = per_user(sim, events, loyal, after=True)
    assert ev_s == pytest.approx(ev_l, rel=0.3) and ev_w > 3 * ev_s
    assert buy_s == pytest.approx(buy_l, rel=0.3) and buy_s > 10 * buy_w
    assert spend_s == pytest.approx(spend_l, rel=0.35) and spend_s > 10 * spend_w


def test_shifted_users_buy_at_the_target_prices_in_fewer_categories(
    shifted_run: tuple[ShopperSimulator, Events],
) -> None:
    sim, events = shifted_run
    assert sim.shift_ms is not None
    shifted, window, _ = groups(sim)
    low, high = PERSONAS["loyal_high_spender"].price
    # Sessions started after the shift (a session open at the shift ends as it began).
    first_ts: dict[object, int] = {}
    for e in events:
        first_ts.setdefault(e["session_id"], ts(e))
    prices = [
        float(e["price"])  # type: ignore[arg-type]
        for e in events
        if e["user_id"] in shifted
        and e["type"] == "view"
        and first_ts[e["session_id"]] >= sim.shift_ms
    ]
    assert len(prices) > 300
    # Loyal high spenders' price range, stretched where a category has too few products.
    assert sum(low <= p <= high for p in prices) > 0.9 * len(prices)
    categories: dict[tuple[object, bool], set[object]] = defaultdict(set)
    for e in events:
        if e["user_id"] in shifted | window and "category" in e:
            categories[e["user_id"], ts(e) >= sim.shift_ms].add(e["category"])

    def mean_categories(users: set[str], after: bool) -> float:
        return sum(len(categories[u, after]) for u in users) / len(users)

    assert mean_categories(shifted, True) < 0.5 * mean_categories(window, True)
    assert mean_categories(shifted, False) > 0.8 * mean_categories(window, False)


def test_shift_to_a_lapsing_persona_goes_quiet() -> None:
    shift = PersonaShift(
        at=0.6, share=1.0, from_persona="loyal_high_spender", to_persona="lapsing_customer"
    )
    sim, events = simulate(shift, 500, 20_000)
    assert sim.shift_ms is not None
    shifted = set(sim.shifted_users())
    assert len(shifted) == 100
    before = sum(e["user_id"] in shifted and ts(e) < sim.shift_ms for e in events)
    after = sum(e["user_id"] in shifted and ts(e) >= sim.shift_ms for e in events)
    # 18 days before, 12 after: lapsed users keep 2 % of their activity.
    assert before > 500 and after < 0.1 * before


def test_ground_truth_file_carries_the_shift(tmp_path: Path) -> None:
    sim = ShopperSimulator(200, 5, START, END, shift=DEFAULT_SHIFT)
    path = tmp_path / "gt.json"
    write_ground_truth(
        path,
        5,
        sim.ground_truth(),
        shift=DEFAULT_SHIFT,
        shift_ms=sim.shift_ms,
        shifted=sim.shifted_users(),
    )
    doc = orjson.loads(path.read_bytes())
    assert doc["personas"] == sim.ground_truth() and doc["n_users"] == 200
    assert doc["shift"] == {
        "at": 0.6,
        "share": 0.5,
        "from_persona": "window_shopper",
        "to_persona": "loyal_high_spender",
        "at_ms": sim.shift_ms,
    }
    assert doc["shifted"] == {
        u: {"before": "window_shopper", "after": "loyal_high_spender", "at_ms": sim.shift_ms}
        for u in sim.shifted_users()
    }
    plain = tmp_path / "plain.json"
    write_ground_truth(plain, 5, {"u000001": "new_user"})
    assert orjson.loads(plain.read_bytes()) == {
        "seed": 5,
        "n_users": 1,
        "personas": {"u000001": "new_user"},
        "shift": None,
        "shifted": {},
    }
    with pytest.raises(ValueError, match="shift_ms"):
        write_ground_truth(plain, 5, {}, shift=DEFAULT_SHIFT)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"at": 0.0}, "at"),
        ({"at": 1.0}, "at"),
        ({"at": float("nan")}, "at"),
        ({"at": "0.5"}, "at"),
        ({"at": True}, "at"),
        ({"share": 0.0}, "share"),
        ({"share": 1.5}, "share"),
        ({"share": -0.1}, "share"),
        ({"from_persona": "astronaut"}, "from_persona"),
        ({"to_persona": "astronaut"}, "to_persona"),
        ({"to_persona": "window_shopper"}, "to_persona"),
        ({"from_persona": "new_user", "to_persona": "window_shopper"}, "from_persona"),
    ],
)
def test_bad_shift_arguments_name_themselves(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"at": 0.5, "share": 0.5, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name} "):
        PersonaShift(**args)  # type: ignore[arg-type]


def test_a_shift_the_population_cannot_have_names_itself() -> None:
    with pytest.raises(ValueError, match="from_persona"):
        ShopperSimulator(10, 1, START, END, shares={"bargain_hunter": 1.0}, shift=DEFAULT_SHIFT)
    with pytest.raises(ValueError, match="shift"):
        ShopperSimulator(10, 1, START, END, shift=0.5)  # type: ignore[arg-type]
    # new_user can shift once all new users have arrived.
    late = PersonaShift(at=0.995, share=1.0, from_persona="new_user", to_persona="window_shopper")
    sim, events = simulate(late, 100, 3000)
    assert len(sim.shifted_users()) == 20 and len(events) == 3000


class FakeProducer:
    """Takes messages and delivers them all, without a broker."""

    sent: ClassVar[list[tuple[str, bytes, bytes]]] = []

    def __init__(self, config: dict[str, object]) -> None:
        FakeProducer.sent = []

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        FakeProducer.sent.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0


def test_produce_events_writes_the_shift_and_times_shifted_users_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generator, "Producer", FakeProducer)
    path = tmp_path / "gt.json"
    report = generator.produce_events(
        "nowhere:9092",
        "clicks",
        "purchases",
        200,
        8000,
        3,
        None,
        30.0,
        str(path),
        bad_ratio=0.05,
        shift=DEFAULT_SHIFT,
    )
    doc = orjson.loads(path.read_bytes())
    at_ms = doc["shift"]["at_ms"]
    assert set(report.shifted_event_times) == set(doc["shifted"]) and len(doc["shifted"]) == 20
    assert report.users_per_persona == dict(sorted(Counter(doc["personas"].values()).items()))
    expected: dict[str, list[int]] = {u: [] for u in doc["shifted"]}
    for _, value, key in FakeProducer.sent:
        try:
            e = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(e, dict) or not str(e.get("event_id", "")).startswith("3-"):
            continue  # malformed payloads carry "bad-" ids and do not count
        if key.decode() in expected and e["ts"] >= at_ms:
            expected[key.decode()].append(e["ts"])
    assert report.shifted_event_times == expected
    assert sum(map(len, expected.values())) > 100
    plain = generator.produce_events(
        "nowhere:9092", "clicks", "purchases", 200, 100, 3, None, 30.0, str(path)
    )
    assert plain.shifted_event_times == {}
    assert orjson.loads(path.read_bytes())["shift"] is None
