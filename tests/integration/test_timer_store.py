"""The timer store on a real Redis: bucketed timers, the index, due users, bringing forward."""

from __future__ import annotations

import pytest
import redis

from state.keys import TIMER_BUCKETS, timer_bucket_index
from state.redis_store import RedisStore

pytestmark = pytest.mark.integration
T = 1_700_000_000_000


def test_timers_are_set_read_moved_and_removed(store: RedisStore) -> None:
    users = {f"u{i}": (i % 3, T + i * 1000) for i in range(300)}
    store.set_timers(users)
    assert store.timer_due({u: p for u, (p, _) in users.items()}) == {
        u: due for u, (_, due) in users.items()
    }
    # Later, earlier, and gone.
    store.set_timers({"u1": (1, T + 10**9), "u2": (2, T - 5), "u3": (0, None)})
    got = store.timer_due({"u1": 1, "u2": 2, "u3": 0, "u4": 1})
    assert got == {"u1": T + 10**9, "u2": T - 5, "u4": T + 4000}


def test_due_users_are_exactly_those_due_earliest_first_and_bounded(store: RedisStore) -> None:
    users = {f"u{i}": (i % 2, T + i * 1000) for i in range(400)}
    store.set_timers(users)
    until = T + 199 * 1000
    due = store.due_users({0, 1}, until, limit=1000)
    assert due == {u: d for u, (_, d) in users.items() if d <= until}
    assert list(due.values()) == sorted(due.values())
    assert store.timers_due_count({0, 1}, until) == 200
    # At most ``limit`` per partition, and only of the partitions asked for.
    assert len(store.due_users({0, 1}, until, limit=30)) == 60
    only_0 = store.due_users({0}, until, limit=1000)
    assert set(only_0) == {u for u, (p, d) in users.items() if p == 0 and d <= until}


def test_a_timer_moved_later_stops_being_due_and_the_index_catches_up(
    store: RedisStore, rds: redis.Redis
) -> None:
    store.set_timers({"a": (0, T), "b": (0, T + 50)})
    assert store.due_users({0}, T + 100, 10) == {"a": T, "b": T + 50}
    # The sweep moved both on: nothing is due any more, however stale the index entries.
    store.set_timers({"a": (0, T + 10**6), "b": (0, None)})
    assert store.due_users({0}, T + 100, 10) == {}
    # The look that found nothing set each entry to its bucket's earliest timer or dropped it.
    index = {int(b): int(s) for b, s in rds.zrange(store.keys.timers(0), 0, -1, withscores=True)}
    assert index.get(timer_bucket_index("a")) == T + 10**6
    if timer_bucket_index("b") != timer_bucket_index("a"):
        assert timer_bucket_index("b") not in index
    assert store.due_users({0}, T + 10**6, 10) == {"a": T + 10**6}


def test_each_timer_takes_the_compact_encoding(store: RedisStore, rds: redis.Redis) -> None:
    store.set_timers({f"user-{i}": (0, T + i) for i in range(5000)})
    keys = list(rds.scan_iter(match=store.keys.timer_bucket_of(0, "*")))
    assert 1000 < len(keys) <= TIMER_BUCKETS
    assert {rds.object("encoding", k) for k in keys[:200]} == {"listpack"}


def test_make_due_brings_every_later_timer_forward(store: RedisStore) -> None:
    users = {f"u{i}": (i % 2, T + i * 10**6) for i in range(50)}
    store.set_timers(users)
    moved = store.make_due({0, 1}, T + 5 * 10**6)
    assert moved == 44  # u6 .. u49
    due = store.due_users({0, 1}, T + 5 * 10**6, 1000)
    assert set(due) == set(users)
    assert due["u49"] == T + 5 * 10**6 and due["u2"] == T + 2 * 10**6


def test_make_due_records_the_epoch_of_each_partition_it_brought_forward(
    store: RedisStore,
) -> None:
    store.set_timers({"a": (0, T + 10**9), "b": (1, T + 10**9), "c": (2, T + 10**9)})
    assert store.swept_epochs({0, 1, 2}) == {0: None, 1: None, 2: None}
    assert store.make_due({0, 1}, T, epoch=3) == 2
    assert store.swept_epochs({0, 1, 2}) == {0: 3, 1: 3, 2: None}
    assert store.due_users({0, 1, 2}, T, 10) == {"a": T, "b": T}
    # Without an epoch nothing is recorded; a later epoch replaces the earlier one.
    store.make_due({2}, T)
    store.make_due({1}, T, epoch=4)
    assert store.swept_epochs({0, 1, 2}) == {0: 3, 1: 4, 2: None}


def test_erasing_a_user_removes_their_timer(store: RedisStore) -> None:
    store.set_timers({"gone": (3, T), "kept": (3, T)})
    store.forget("gone")
    assert store.timer_due({"gone": 3, "kept": 3}) == {"kept": T}
