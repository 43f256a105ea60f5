"""Unit tests of the I/O ceiling's arithmetic and payloads (no broker, no Redis)."""

from __future__ import annotations

import time

import orjson
import pytest

from loadtest.ceiling import (
    Rate,
    WritePayload,
    events_per_update,
    format_rate,
    realistic_payload,
    simulate_backlog,
)
from loadtest.generator import DAY_MS
from loadtest.personas import ShopperSimulator
from state.user_states import FENCED_WRITE, OFFSET_FIELD_PREFIX, loaded_state
from stream.state_codec import decode_state


class TestRate:
    def test_per_s_and_cores(self) -> None:
        r = Rate.of("x", 5000, 2.0, 3.0)
        assert (r.per_s, r.cores, r.users, r.users_per_s) == (2500.0, 1.5, 0, 0.0)

    def test_users_per_s(self) -> None:
        r = Rate.of("w", 16_000, 0.5, 0.1, users=1000)
        assert (r.users_per_s, r.per_s) == (2000.0, 32_000.0)

    def test_frozen(self) -> None:
        r = Rate.of("x", 1, 1.0, 0.0)
        with pytest.raises(AttributeError):
            r.events = 2  # type: ignore[misc]

    @pytest.mark.parametrize("elapsed", [0.0, -1.0])
    def test_needs_time(self, elapsed: float) -> None:
        with pytest.raises(ValueError, match="elapsed_s"):
            Rate.of("x", 1, elapsed, 0.0)

    def test_no_negative_counts(self) -> None:
        with pytest.raises(ValueError):
            Rate.of("x", -1, 1.0, 0.0)


class TestEventsPerUpdate:
    def test_one_user_per_batch(self) -> None:
        assert events_per_update(["a"] * 10, batch=5) == (5.0, 1.0)

    def test_every_event_a_new_user(self) -> None:
        assert events_per_update([str(i) for i in range(10)], batch=5) == (1.0, 5.0)

    def test_mean_over_slices(self) -> None:
        # Slices: {a, b} and {c, d, e, f} -> 3 users on average -> 6 / 3 events per update.
        ids = ["a", "b", "a", "b", "a", "b", "c", "d", "e", "f", "c", "c"]
        assert events_per_update(ids, batch=6) == (2.0, 3.0)

    def test_users_counted_per_slice_not_overall(self) -> None:
        # The same two users in both slices: two writes per slice.
        assert events_per_update(["a", "b"] * 4, batch=4) == (2.0, 2.0)

    def test_partial_last_slice_left_out(self) -> None:
        ids = ["a"] * 4 + ["b", "c", "d"]
        assert events_per_update(ids, batch=4) == (4.0, 1.0)

    def test_shorter_than_a_batch(self) -> None:
        assert events_per_update(["a", "a", "b"], batch=10) == (1.5, 2.0)

    @pytest.mark.parametrize("ids,batch", [([], 5), (["a"], 0)])
    def test_rejects(self, ids: list[str], batch: int) -> None:
        with pytest.raises(ValueError):
            events_per_update(ids, batch)


class TestWritePayload:
    def test_argument_layout_matches_the_script(self) -> None:
        p = WritePayload(
            (("_o:c:0", "17"), ("_o:p:0", "3")),
            (("a", "1"), ("b", b"\x00")),
            segment=1,
            state=b"\x02st",
        )
        pairs = ["_o:c:0", "17", "_o:p:0", "3", "a", "1", "b", b"\x00"]
        # A state of raw bytes goes to the state key; the hash's state field is left empty.
        assert p.in_key
        assert p.hset_args() == ["_s", b"", *pairs]
        assert p.fenced_args() == ["2", b"\x02st", *pairs]
        names = ["_s", "_o:c:0", "17", "_o:p:0", "3", "a", "1", "b"]
        assert p.nbytes == sum(len(x) for x in names) + 1 + 3
        # Base64 text goes to the hash.
        inline = WritePayload(p.offsets, p.fields, 1, state=b"AnN0")
        assert not inline.in_key and inline.hset_args() == ["_s", b"AnN0", *pairs]
        assert inline.nbytes == p.nbytes - 3 + 4
        # The script reads the pair count from ARGV[1], the state from ARGV[2], and HSETs
        # from ARGV[3] on.
        assert "tonumber(ARGV[1])" in FENCED_WRITE
        assert "local state = ARGV[2]" in FENCED_WRITE
        assert "redis.call('SET', KEYS[2], state)" in FENCED_WRITE
        assert "unpack(ARGV, 3)" in FENCED_WRITE


def _user_events(n: int = 20) -> list[dict[str, object]]:
    end = int(time.time() * 1000)
    sim = ShopperSimulator(5, 3, end - 30 * DAY_MS, end)
    by_user: dict[str, list[dict[str, object]]] = {}
    for e in sim.events(400):
        by_user.setdefault(str(e["user_id"]), []).append(e)
    events = max(by_user.values(), key=len)
    assert len(events) >= n
    return events[:n]


class TestRealisticPayload:
    def test_fields_as_the_store_writes_them(self) -> None:
        events = _user_events()
        p = realistic_payload(events, "clicks", "purchases", partition=2, first_offset=500)
        fields = {k if isinstance(k, str) else k.decode(): v for k, v in p.fields}
        for name in ("features", "segment", "segment_name", "model_version"):
            assert name in fields
        assert fields["segment"] == "2"
        state = decode_state(loaded_state(p.state))
        assert state.last_change is not None
        assert orjson.loads(state.last_change.value())["segment"] == 2
        # One fence pair per input partition the events came from, holding its last offset.
        offsets = dict(p.offsets)
        has_purchase = any(e["type"] == "purchase" for e in events)
        assert set(offsets) >= {OFFSET_FIELD_PREFIX + "clicks:2"}
        assert len(offsets) == 1 + has_purchase
        assert max(int(v) for v in offsets.values()) == 500 + len(events) - 1
        assert p.nbytes > len(p.state) > 0

    def test_grows_with_history(self) -> None:
        events = _user_events()
        assert realistic_payload(events).nbytes > realistic_payload(events[:2]).nbytes

    def test_rejects_no_events_and_bad_ones(self) -> None:
        with pytest.raises(ValueError, match="empty"):
            realistic_payload([])
        with pytest.raises(ValueError, match="does not decode"):
            realistic_payload([{"user_id": "u1", "type": "view"}])


def test_simulate_backlog_is_the_generators_traffic() -> None:
    sample = simulate_backlog(n_users=50, n_events=2000, sample_users=10)
    assert len(sample.user_ids) == 2000
    assert sample.typical_events
    assert {str(e["user_id"]) for e in sample.typical_events} <= {f"u{i:06d}" for i in range(1, 11)}


class TestFormat:
    def test_consume_line(self) -> None:
        line = format_rate(Rate.of("consume only", 1000, 0.25, 0.5))
        assert line == (
            "consume only: 1000 events in 0.25s = 4000 events/s (process CPU 0.50s, 2.00 cores)"
        )

    def test_redis_line_states_users_and_events(self) -> None:
        line = format_rate(Rate.of("Redis", 10_000, 1.0, 0.5, users=500), 20.0)
        assert "500 users/s = 10000 events/s at 20.00 events per update" in line
