"""The peers' pure parts: the per-event step, the Redis writes, the bounded run, the CLI."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from loadtest.peers import (
    OnlineSegmentation,
    Outcome,
    PeerResult,
    change_message,
    load_state,
    micro_batch,
    read_state,
    user_fields,
    write_user,
)
from loadtest.peers import run as peers_run
from loadtest.peers.micro_batch import consumer_config as micro_batch_config
from loadtest.peers.micro_batch import write_batch
from loadtest.peers.per_event import consumer_config
from loadtest.peers.quix import BoundedRun
from state.keys import Keys
from stream.events import Event
from stream.features import UserState, compute_features
from stream.messages import change_id
from stream.state_codec import encode_state

NOW = 1_800_000_000_000


def event(n: int, user: str = "u1", etype: str = "view", amount: float | None = None) -> Event:
    topic = "shop.purchases" if etype == "purchase" else "shop.clicks"
    return Event(f"e{n}", user, etype, NOW - 1000 * (100 - n), topic, 0, n, amount=amount)


class FakeRedis:
    """Records every command, one entry per round trip, over an in-memory keyspace."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.hashes: dict[str, dict[str, str]] = {}
        self.strings: dict[str, bytes] = {}
        self.sets: dict[str, set[str]] = {}

    def get(self, name: str) -> Any:
        self.calls.append(("get", name))
        return self.strings.get(name)

    def set(self, name: str, value: bytes) -> Any:
        self.calls.append(("set", name))
        self.strings[name] = value
        return True

    def hset(self, name: str, *, mapping: Mapping[str, str]) -> Any:
        self.calls.append(("hset", name))
        self.hashes.setdefault(name, {}).update(mapping)
        return len(mapping)

    def srem(self, name: str, *values: str) -> Any:
        self.calls.append(("srem", name))
        self.sets.setdefault(name, set()).difference_update(values)
        return 1

    def sadd(self, name: str, *values: str) -> Any:
        self.calls.append(("sadd", name))
        self.sets.setdefault(name, set()).update(values)
        return 1


def test_first_event_gives_a_first_segment_and_a_change() -> None:
    job = OnlineSegmentation()
    out = job.step(None, event(1), NOW)
    assert out is not None
    assert out.previous is None
    assert out.state.segment == out.segment
    assert out.state.segment_since_ms == event(1).ts_ms
    assert out.change is not None
    assert out.change["segment"] == out.segment
    assert out.change["previous_segment"] is None
    assert out.change["change_id"] == change_id("u1", "e1", None, out.segment)
    assert out.features == compute_features(out.state)
    assert job.scaler.count == 1


def test_replayed_event_changes_nothing() -> None:
    job = OnlineSegmentation()
    out = job.step(None, event(1), NOW)
    assert out is not None
    assert job.step(out.state, event(1), NOW) is None
    assert job.scaler.count == 1


def test_no_change_message_while_the_segment_stays() -> None:
    job = OnlineSegmentation()
    state: UserState | None = None
    outcomes = []
    for n in range(1, 40):
        out = job.step(state, event(n, user="u1"), NOW)
        assert out is not None
        outcomes.append(out)
        state = out.state
    for before, after in itertools.pairwise(outcomes):
        assert after.previous == before.segment
        assert (after.change is not None) == (after.segment != before.segment)


def test_the_model_learns_once_per_applied_event() -> None:
    job = OnlineSegmentation(n_clusters=3, seed=1)
    state = None
    for n in range(1, 6):
        out = job.step(state, event(n), NOW)
        assert out is not None
        state = out.state
    assert job.scaler.count == 5
    assert len(job.model.centers) == 3


def test_same_seed_same_segments() -> None:
    events = [event(n, user=f"u{n % 7}", etype="purchase" if n % 5 == 0 else "view",
                    amount=10.0 * n if n % 5 == 0 else None) for n in range(1, 60)]  # fmt: skip

    def segments() -> list[int]:
        job = OnlineSegmentation()
        states: dict[str, UserState] = {}
        got = []
        for e in events:
            out = job.step(states.get(e.user_id), e, NOW)
            assert out is not None
            states[e.user_id] = out.state
            got.append(out.segment)
        return got

    assert segments() == segments()


def test_user_fields_keep_the_state_layout() -> None:
    out = OnlineSegmentation().step(None, event(3, etype="purchase", amount=12.5), NOW)
    assert out is not None
    fields = user_fields(out)
    assert set(fields) == {"segment", "features"}
    assert fields["segment"] == str(out.segment)
    assert orjson.loads(fields["features"]) == out.features
    assert load_state(encode_state(out.state)) == out.state
    assert load_state(None) is None


def test_change_message_fields() -> None:
    e = event(2)
    msg = change_message(e, 1, 3, {"events_30d": 2.0}, NOW)
    assert msg == {
        "schema_version": 1,
        "change_id": change_id("u1", "e2", 1, 3),
        "user_id": "u1",
        "previous_segment": 1,
        "segment": 3,
        "event_time": "2027-01-15T07:58:22.000Z",
        "emitted_at": "2027-01-15T08:00:00.000Z",
        "features": {"events_30d": 2.0},
    }


def _outcome(segment: int, previous: int | None, changed: bool) -> Outcome:
    state = UserState(first_seen_ms=NOW, last_event_ms=NOW, segment=segment)
    change = {"segment": segment} if changed else None
    return Outcome("u9", state, {"events_30d": 1.0}, segment, previous, change)


def test_write_user_without_change_is_one_set_and_one_hset() -> None:
    r, keys = FakeRedis(), Keys("p:")
    write_user(r, keys, _outcome(2, 2, changed=False))
    assert r.calls == [("set", "p:user:{u9}:state"), ("hset", "p:user:{u9}")]


def test_write_user_on_change_moves_membership() -> None:
    r, keys = FakeRedis(), Keys("p:")
    r.sets[keys.members(1)] = {"u9", "u8"}
    write_user(r, keys, _outcome(2, 1, changed=True))
    assert r.calls == [
        ("set", "p:user:{u9}:state"),
        ("hset", "p:user:{u9}"),
        ("srem", "p:segment:{1}:members"),
        ("sadd", "p:segment:{2}:members"),
    ]
    assert r.sets[keys.members(1)] == {"u8"}
    assert r.sets[keys.members(2)] == {"u9"}


def test_write_user_first_segment_adds_only() -> None:
    r = FakeRedis()
    write_user(r, Keys(), _outcome(0, None, changed=True))
    assert [c[0] for c in r.calls] == ["set", "hset", "sadd"]


def test_read_state_round_trips_through_redis() -> None:
    r, keys = FakeRedis(), Keys()
    assert read_state(r, keys, "u1") is None
    out = OnlineSegmentation().step(None, event(1), NOW)
    assert out is not None
    write_user(r, keys, out)
    assert read_state(r, keys, "u1") == out.state
    assert r.calls[0] == ("get", "seg:user:{u1}:state")


def test_peer_result_rate() -> None:
    r = PeerResult.measured("x", 300, 1.5, 1.0, changes=4, invalid=1)
    assert (r.events_per_s, r.changes, r.invalid) == (200.0, 4, 1)
    assert PeerResult.measured("x", 1, 0.0, 0.0).events_per_s == float("inf")


def test_bounded_run_stops_once_at_the_limit() -> None:
    stops: list[int] = []
    b = BoundedRun(3, lambda: stops.append(b.count))
    assert b.started is None
    for _ in range(5):
        b.processed("t", 0, 1)
    assert stops == [3]
    assert b.started is not None


def test_consumer_keeps_the_client_defaults() -> None:
    conf = consumer_config("h:1", "g")
    assert conf == {"bootstrap.servers": "h:1", "group.id": "g", "auto.offset.reset": "earliest"}


def test_cli_defaults_and_peer_choice() -> None:
    a = peers_run.parse_args([])
    assert (a.users, a.events, a.peer_events, a.partitions) == (20_000, 200_000, 50_000, 4)
    assert peers_run.parse_args(["--peers", "quix"]).peers == ["quix"]
    with pytest.raises(SystemExit):
        peers_run.parse_args(["--peers", "flink"])


def test_report_line_without_users() -> None:
    line = peers_run.report_line(PeerResult.measured("quix", 10, 1.0, 0.5), 0, 0)
    assert line.endswith("0 users in Redis, n/a bytes per user")


# -- the micro-batch peer -----------------------------------------------------------------


def test_step_many_folds_every_event_and_updates_the_model_once() -> None:
    job, one_by_one = OnlineSegmentation(), OnlineSegmentation()
    evs = [event(1), event(2, etype="add_to_cart"), event(3, etype="purchase", amount=20.0)]
    out = job.step_many(None, evs, NOW)
    assert out is not None
    assert out.state.offsets == {"shop.clicks:0": 2, "shop.purchases:0": 3}
    assert out.features["purchases_24h"] == 1.0 and out.features["events_24h"] == 3.0
    assert job.scaler.count == 1  # one vector for the user, not three
    state = None
    for e in evs:
        o = one_by_one.step(state, e, NOW)
        assert o is not None
        state = o.state
    assert one_by_one.scaler.count == 3
    assert out.features == compute_features(state)
    # The change is keyed by the last event applied.
    assert out.change is not None
    assert out.change["change_id"] == change_id("u1", "e3", None, out.segment)
    assert job.step_many(out.state, evs, NOW) is None  # all replayed: nothing changes


def test_write_batch_queues_each_users_writes_and_moves() -> None:
    job = OnlineSegmentation()
    a = job.step_many(None, [event(1, "a")], NOW)
    b = job.step_many(None, [event(2, "b")], NOW)
    assert a is not None and b is not None
    quiet = Outcome(b.user_id, b.state, b.features, b.segment, b.segment, None)
    pipe = FakeRedis()
    write_batch(pipe, Keys(), [a, quiet])
    k = Keys()
    assert pipe.calls == [
        ("set", k.state("a")),
        ("hset", k.user("a")),
        ("sadd", k.members(a.segment)),
        ("set", k.state("b")),
        ("hset", k.user("b")),
    ]
    assert pipe.hashes[k.user("a")]["segment"] == str(a.segment)


def test_micro_batch_commits_by_hand() -> None:
    assert micro_batch_config("b:1", "g")["enable.auto.commit"] is False
    assert micro_batch.NAME in peers_run.PEERS
