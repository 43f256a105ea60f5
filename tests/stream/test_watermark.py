"""The group's event-time watermark: per-partition clocks, lateness, idleness, sharing."""

from __future__ import annotations

import random

import pytest

from stream.watermark import PartitionClock, Watermark


def test_no_partition_no_watermark() -> None:
    w = Watermark(allowed_lateness_ms=1_000)
    assert w.value == 0 and w.advance(wall_ms=5_000) == 0
    assert w.take_moved() == {}


def test_the_lowest_partition_less_the_allowed_lateness() -> None:
    w = Watermark(allowed_lateness_ms=1_000, idle_timeout_ms=10_000)
    w.observe("clicks:0", 50_000, wall_ms=0)
    w.observe("clicks:1", 20_000, wall_ms=0)
    w.observe("purchases:0", 35_000, wall_ms=0)
    assert w.advance(wall_ms=1_000) == 19_000
    assert w.value == 19_000
    w.observe("clicks:1", 60_000, wall_ms=2_000)
    assert w.advance(wall_ms=2_000) == 34_000  # purchases:0 is now the slowest


def test_without_lateness_the_watermark_is_the_slowest_partition() -> None:
    w = Watermark()
    w.observe("a:0", 7_000, wall_ms=0)
    w.observe("a:1", 9_000, wall_ms=0)
    assert w.advance(wall_ms=0) == 7_000


def test_an_older_event_does_not_move_a_partition_back() -> None:
    w = Watermark()
    w.observe("a:0", 9_000, wall_ms=0)
    w.observe("a:0", 4_000, wall_ms=1)
    assert w.clocks["a:0"] == PartitionClock(9_000, 0)
    assert w.advance(wall_ms=1) == 9_000


def test_an_idle_partition_stops_holding_the_watermark_back() -> None:
    w = Watermark(allowed_lateness_ms=1_000, idle_timeout_ms=10_000)
    w.observe("clicks:0", 50_000, wall_ms=0)
    w.observe("clicks:1", 20_000, wall_ms=0)
    w.observe("clicks:1", 90_000, wall_ms=5_000)
    # clicks:0 last moved at wall time 0: it holds the clock back until 10 s have passed.
    assert w.advance(wall_ms=9_999) == 49_000
    w.observe("clicks:1", 95_000, wall_ms=10_000)
    assert w.advance(wall_ms=10_000) == 94_000
    # It moves again: it holds the clock again, but the watermark never goes back.
    w.observe("clicks:0", 60_000, wall_ms=11_000)
    assert w.advance(wall_ms=11_000) == 94_000
    w.observe("clicks:0", 120_000, wall_ms=12_000)
    assert w.advance(wall_ms=12_000) == 94_000  # clicks:1 (95 s) is the slowest again
    w.observe("clicks:1", 130_000, wall_ms=13_000)
    assert w.advance(wall_ms=13_000) == 119_000


def test_an_older_event_does_not_count_as_a_partition_moving() -> None:
    w = Watermark(idle_timeout_ms=10_000)
    w.observe("a:0", 50_000, wall_ms=0)
    w.observe("a:1", 20_000, wall_ms=0)
    w.observe("a:1", 90_000, wall_ms=9_000)
    w.observe("a:0", 40_000, wall_ms=9_000)  # out of order: a:0's clock did not move
    assert w.advance(wall_ms=10_000) == 90_000


def test_every_partition_idle_leaves_the_clock_at_the_newest() -> None:
    w = Watermark(allowed_lateness_ms=500, idle_timeout_ms=1_000)
    w.observe("a:0", 10_000, wall_ms=0)
    w.observe("a:1", 30_000, wall_ms=0)
    assert w.advance(wall_ms=0) == 9_500
    assert w.advance(wall_ms=5_000) == 29_500


@pytest.mark.parametrize("seed", range(5))
def test_the_watermark_never_goes_back(seed: int) -> None:
    rng = random.Random(seed)
    w = Watermark(allowed_lateness_ms=rng.randrange(0, 5_000), idle_timeout_ms=2_000)
    last = 0
    for wall in range(0, 60_000, 250):
        for _ in range(rng.randrange(3)):
            w.observe(f"t:{rng.randrange(4)}", rng.randrange(0, 100_000), wall_ms=wall)
        if rng.random() < 0.1:
            w.merge({f"t:{rng.randrange(6)}": PartitionClock(rng.randrange(0, 100_000), wall)})
        value = w.advance(wall_ms=wall)
        assert value >= last and value == w.value
        # Never ahead of the newest event seen, less the lateness.
        newest = max(c.max_event_ms for c in w.clocks.values()) if w.clocks else 0
        assert value <= max(0, newest - w.allowed_lateness_ms)
        last = value
    assert last > 0


def test_merge_keeps_the_higher_clock_of_each_partition() -> None:
    w = Watermark()
    w.observe("a:0", 50_000, wall_ms=100)
    w.observe("a:1", 10_000, wall_ms=100)
    w.merge(
        {
            "a:0": PartitionClock(40_000, 900),  # stale report: ignored
            "a:1": PartitionClock(70_000, 800),  # another process read further
            "a:2": PartitionClock(60_000, 700),  # a partition this process does not read
        }
    )
    assert w.clocks == {
        "a:0": PartitionClock(50_000, 100),
        "a:1": PartitionClock(70_000, 800),
        "a:2": PartitionClock(60_000, 700),
    }
    assert w.advance(wall_ms=1_000) == 50_000
    # What others reported is not reported back.
    assert set(w.take_moved()) == {"a:0", "a:1"}


def test_two_processes_sharing_their_clocks_agree() -> None:
    a, b = Watermark(1_000, 10_000), Watermark(1_000, 10_000)
    a.observe("c:0", 30_000, wall_ms=0)
    b.observe("c:1", 80_000, wall_ms=0)
    assert a.advance(0) == 29_000 and b.advance(0) == 79_000  # each alone: its own partition
    a.merge(b.take_moved())
    b.merge(a.take_moved())
    assert a.clocks == b.clocks
    assert a.advance(1) == 29_000
    assert b.advance(1) == 79_000  # never back: b had moved on before it heard of c:0
    c = Watermark(1_000, 10_000)
    c.merge(a.clocks)
    assert c.advance(1) == 29_000


def test_take_moved_reports_each_move_once() -> None:
    w = Watermark()
    w.observe("a:0", 5_000, wall_ms=1)
    w.observe("a:1", 6_000, wall_ms=2)
    w.observe("a:0", 7_000, wall_ms=3)
    assert w.take_moved() == {"a:0": PartitionClock(7_000, 3), "a:1": PartitionClock(6_000, 2)}
    assert w.take_moved() == {}
    w.observe("a:1", 1_000, wall_ms=4)  # older: no move
    assert w.take_moved() == {}
    w.observe("a:1", 8_000, wall_ms=5)
    assert w.take_moved() == {"a:1": PartitionClock(8_000, 5)}


def test_partition_clock_encoding() -> None:
    c = PartitionClock(1_700_000_000_123, 1_700_000_005_000)
    assert c.encode() == "1700000000123:1700000005000"
    assert PartitionClock.parse(c.encode()) == c
    assert PartitionClock.parse(c.encode().encode()) == c
    assert PartitionClock.parse(b"0:0") == PartitionClock(0, 0)


@pytest.mark.parametrize("raw", [b"", b"123", b"abc:1", b"1:x", b"1:", b":2", "no clock"])
def test_partition_clock_parse_rejects_other_text(raw: bytes | str) -> None:
    assert PartitionClock.parse(raw) is None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"allowed_lateness_ms": -1}, "allowed_lateness_ms"),
        ({"idle_timeout_ms": 0}, "idle_timeout_ms"),
        ({"idle_timeout_ms": -5}, "idle_timeout_ms"),
    ],
)
def test_invalid_parameters(kwargs: dict[str, int], name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name} "):
        Watermark(**kwargs)


def test_zero_lateness_is_allowed() -> None:
    assert Watermark(allowed_lateness_ms=0).allowed_lateness_ms == 0


def test_a_partition_with_a_backlog_holds_the_watermark_before_its_first_record() -> None:
    # The consumer read purchases:0 to its end first; clicks:0 has a backlog not read yet.
    w = Watermark(0, 10_000)
    w.behind("clicks:0", wall_ms=0)
    w.observe("purchases:0", 900_000, wall_ms=0)
    assert w.advance(wall_ms=0) == 0
    # Long past the idle timeout, still held: it has records to read.
    w.behind("clicks:0", wall_ms=60_000)
    assert w.advance(wall_ms=60_000) == 0
    w.observe("clicks:0", 100_000, wall_ms=61_000)
    w.behind("clicks:0", wall_ms=61_000)
    assert w.advance(wall_ms=61_000) == 100_000
    # Its backlog read, it goes idle like any partition and the clock moves to the newest.
    assert w.advance(wall_ms=72_000) == 900_000


def test_a_partition_no_longer_behind_is_idle_after_the_timeout() -> None:
    w = Watermark(0, 10_000)
    w.observe("a:0", 50_000, wall_ms=0)
    w.observe("a:1", 20_000, wall_ms=0)
    w.behind("a:1", wall_ms=5_000)
    assert w.advance(wall_ms=14_000) == 20_000  # held at 5 s: not idle until 15 s
    assert w.advance(wall_ms=15_000) == 50_000


def test_behind_is_reported_and_merged_as_a_more_recent_clock() -> None:
    a, b = Watermark(0, 10_000), Watermark(0, 10_000)
    a.observe("c:0", 30_000, wall_ms=0)
    b.merge(a.take_moved())
    a.behind("c:0", wall_ms=8_000)
    assert a.take_moved() == {"c:0": PartitionClock(30_000, 8_000)}
    b.merge({"c:0": PartitionClock(30_000, 8_000)})
    b.merge({"c:0": PartitionClock(30_000, 2_000)})  # an older report changes nothing
    assert b.clocks["c:0"] == PartitionClock(30_000, 8_000)
    b.observe("c:1", 90_000, wall_ms=0)
    assert b.advance(wall_ms=12_000) == 30_000  # c:0 held by a's report, c:1 idle
