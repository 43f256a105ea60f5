"""The memory run's figures, from samples (no servers)."""

from __future__ import annotations

from loadtest.memory import MemoryResult, MemorySample


def test_the_settled_sample_is_reported_after_the_drained_points() -> None:
    first = MemorySample(1.0, 10_000, 100 * 2**20, 10_000 * 1000)
    drained = MemorySample(9.0, 20_000, 101 * 2**20, 20_000 * 1100)
    settled = MemorySample(30.0, 20_000, 101 * 2**20, 20_000 * 990)
    result = MemoryResult(20_000, 30_000, 90, 2**27, [first, drained], [first, drained], 9.0)
    assert not any("settled" in line for line in result.lines())
    lines = MemoryResult(
        20_000, 30_000, 90, 2**27, [first, drained], [first, drained], 9.0, settled=settled
    ).lines()
    assert lines[1].endswith("Redis 1100 bytes per user")
    assert lines[-1] == (
        "once the sweep settled, after 30.0s: RSS 101.0 MiB; Redis 990 bytes per user"
    )
