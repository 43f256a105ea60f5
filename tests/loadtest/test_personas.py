"""The shopper simulator: deterministic, valid events, personas that behave as named."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import orjson
import pytest

from loadtest.personas import MALFORMED_KINDS, ShopperSimulator, malformed_event
from stream.events import DeadLetter, Event, decode

DAY = 86_400_000
END = 1_800_000_000_000
START = END - 30 * DAY


def simulate(n_users: int = 2000, n_events: int = 60_000, seed: int = 3):
    sim = ShopperSimulator(n_users, seed, START, END)
    return sim, list(sim.events(n_events))


def test_same_seed_same_events_other_seed_other_events() -> None:
    assert simulate(200, 2000)[1] == simulate(200, 2000)[1]
    assert simulate(200, 2000)[1] != simulate(200, 2000, seed=4)[1]


def test_events_are_valid_ordered_and_inside_the_span() -> None:
    _, events = simulate()
    ids = set()
    for i, e in enumerate(events):
        ev = decode(orjson.dumps(e), e["user_id"].encode(), "t", 0, i, now_ms=END)
        assert isinstance(ev, Event), ev
        assert START <= e["ts"] <= END
        ids.add(e["event_id"])
    assert len(ids) == len(events)
    assert all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(events))


def test_personas_behave_as_named() -> None:
    sim, events = simulate()
    truth = sim.ground_truth()
    shares = Counter(truth.values())
    assert all(n == 400 for n in shares.values())
    per_user: dict[str, Counter[str]] = {}
    first_ts: dict[str, int] = {}
    last_ts: dict[str, int] = {}
    for e in events:
        per_user.setdefault(e["user_id"], Counter())[e["type"]] += 1
        first_ts.setdefault(e["user_id"], e["ts"])
        last_ts[e["user_id"]] = e["ts"]

    def rate(persona: str, etype: str) -> float:
        users = [u for u, p in truth.items() if p == persona and u in per_user]
        return sum(per_user[u][etype] for u in users) / len(users)

    assert rate("window_shopper", "purchase") < 0.1 * rate("loyal_high_spender", "purchase")
    assert rate("window_shopper", "view") > 2 * rate("loyal_high_spender", "view")
    new = [u for u, p in truth.items() if p == "new_user" and u in first_ts]
    assert new and all(first_ts[u] >= END - 2 * DAY for u in new)
    lapsing = [u for u, p in truth.items() if p == "lapsing_customer" and u in per_user]
    late = sum(
        1 for e in events if truth[e["user_id"]] == "lapsing_customer" and e["ts"] > END - 10 * DAY
    )
    early = sum(
        1
        for e in events
        if truth[e["user_id"]] == "lapsing_customer" and e["ts"] < START + 10 * DAY
    )
    assert lapsing and late < 0.1 * early
    spend = Counter()
    for e in events:
        if e["type"] == "purchase":
            spend[truth[e["user_id"]]] += e["amount"]
    assert spend["loyal_high_spender"] > 5 * spend["bargain_hunter"]


def test_every_malformed_kind_is_dead_lettered() -> None:
    rng = random.Random(1)
    seen: dict[str, str] = {}
    for _ in range(500):
        kind, payload = malformed_event(rng)
        result = decode(payload, b"u000001", "t", 0, 0, now_ms=END)
        assert isinstance(result, DeadLetter), kind
        seen[kind] = result.reason
    assert set(seen) == set(MALFORMED_KINDS)
    assert seen["oversized"] == "oversized"
    assert seen["not_utf8"] == "not_utf8"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_users": 0}, "n_users"),
        ({"end_ms": START}, "end_ms"),
        ({"shares": {"astronaut": 1.0}}, "shares"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, object], name: str) -> None:
    args = {"n_users": 10, "seed": 1, "start_ms": START, "end_ms": END, **kwargs}
    with pytest.raises(ValueError, match=name):
        ShopperSimulator(**args)  # type: ignore[arg-type]
