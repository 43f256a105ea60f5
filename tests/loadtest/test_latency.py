"""The latency benchmark's pure parts: percentiles, a step's figures, the observer's test.

The observer runs against a fake Redis client: no servers.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pytest

from loadtest.latency import LatencyStep, Observer, parse_rates, percentile
from stream.messages import iso_ms

T0 = 1_800_000_000_000


def step(rate: float, latencies: list[float], unobserved: int = 0, lag_end: int = 0) -> LatencyStep:
    return LatencyStep(
        rate=rate,
        achieved=rate,
        produced=int(rate),
        duration_s=1.0,
        samples=len(latencies) + unobserved,
        latencies_ms=latencies,
        unobserved=unobserved,
        applied_without_segment=0,
        lag_start=0,
        lag_end=lag_end,
        drain_s=0.1,
        segmenter_cores=0.2,
    )


class TestPercentile:
    @pytest.mark.parametrize("q", [0, 1, 25, 50, 73.5, 95, 99, 100])
    def test_matches_numpy_linear(self, q: float) -> None:
        values = [float(x) for x in np.random.default_rng(3).exponential(50.0, 101)]
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))

    def test_order_does_not_matter(self) -> None:
        assert percentile([5.0, 1.0, 3.0], 50) == percentile([1.0, 3.0, 5.0], 50) == 3.0

    def test_one_value(self) -> None:
        assert percentile([7.0], 0) == percentile([7.0], 99) == 7.0

    def test_lost_samples_are_infinitely_late(self) -> None:
        values = [1.0, 2.0, 3.0, math.inf]
        assert percentile(values, 50) == 2.5
        assert percentile(values, 99) == math.inf
        assert percentile([math.inf, math.inf], 50) == math.inf

    @pytest.mark.parametrize("bad", [-1.0, 100.5])
    def test_q_out_of_range(self, bad: float) -> None:
        with pytest.raises(ValueError, match="q must be"):
            percentile([1.0], bad)

    def test_no_values(self) -> None:
        with pytest.raises(ValueError, match="no values"):
            percentile([], 50)


class TestLatencyStep:
    def test_percentiles_count_unobserved_samples(self) -> None:
        s = step(1000.0, [float(x) for x in range(1, 100)], unobserved=1)
        assert s.samples == 100
        assert s.p50_ms == pytest.approx(50.5)
        assert s.p99_ms == math.inf
        assert s.max_ms == math.inf
        assert s.unobserved_share == pytest.approx(0.01)

    def test_no_samples(self) -> None:
        s = step(1000.0, [])
        assert (s.p50_ms, s.p99_ms, s.max_ms, s.unobserved_share) == (None, None, None, 0.0)

    def test_kept_up_means_under_one_second_of_input_behind(self) -> None:
        assert step(1000.0, [1.0], lag_end=999).kept_up
        assert not step(1000.0, [1.0], lag_end=1000).kept_up

    def test_line(self) -> None:
        line = step(1000.0, [10.0, 20.0], unobserved=1).line()
        assert "p50 20 ms" in line and "p99 never seen" in line and "33.3% unobserved" in line


def test_parse_rates() -> None:
    assert parse_rates("2000,5000") == [2000.0, 5000.0]
    with pytest.raises(Exception, match="positive"):
        parse_rates("0")


class FakePipeline:
    def __init__(self, hashes: dict[str, dict[str, bytes]]) -> None:
        self._hashes = hashes
        self._calls: list[tuple[str, tuple[str, ...]]] = []

    def hmget(self, key: str, *fields: str) -> None:
        self._calls.append((key, fields))

    def execute(self) -> list[list[bytes | None]]:
        return [[self._hashes.get(k, {}).get(f) for f in fs] for k, fs in self._calls]


class FakeRedis:
    """Hashes in a dict; ``pipeline().hmget`` is all the observer uses."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[str, bytes]] = {}

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        return FakePipeline(self.hashes)

    def write(self, key: str, last_ms: int, segment: int | None) -> None:
        h = {"last_event_time": iso_ms(last_ms).encode()}
        if segment is not None:
            h["segment"] = str(segment).encode()
        self.hashes[key] = h


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


class TestObserver:
    def test_seen_when_the_event_or_a_later_one_is_applied_with_a_segment(self) -> None:
        r = FakeRedis()
        obs = Observer(r, poll_s=0.001, timeout_s=5.0)  # type: ignore[arg-type]
        now = time.monotonic()
        obs.add("u:a", T0 + 10, now)
        obs.add("u:b", T0 + 10, now)
        obs.add("u:c", T0 + 10, now)
        r.write("u:a", T0 + 9, 1)  # an earlier event: not this one yet
        r.write("u:b", T0 + 11, 2)  # a later event of the user: this one is in
        r.write("u:c", T0 + 10, None)  # applied, but no segment yet
        wait_for(lambda: len(obs.latencies_ms) == 1)
        r.write("u:a", T0 + 10, 1)
        r.write("u:c", T0 + 10, 3)
        wait_for(lambda: len(obs.latencies_ms) == 3)
        obs.finish()
        assert obs.unobserved == 0
        assert all(0.0 <= ms < 5000.0 for ms in obs.latencies_ms)

    def test_more_samples_than_one_poll_takes_are_all_seen(self) -> None:
        r = FakeRedis()
        obs = Observer(r, poll_s=0.001, timeout_s=5.0)  # type: ignore[arg-type]
        for i in range(300):
            obs.add(f"u:{i}", T0, time.monotonic())
        for i in range(300):
            r.write(f"u:{i}", T0, 1)
        obs.finish()
        assert (len(obs.latencies_ms), obs.unobserved) == (300, 0)

    def test_a_sample_never_seen_is_given_up_after_the_timeout(self) -> None:
        r = FakeRedis()
        obs = Observer(r, poll_s=0.001, timeout_s=0.05)  # type: ignore[arg-type]
        obs.add("u:a", T0, time.monotonic())
        obs.add("u:b", T0, time.monotonic())
        r.write("u:b", T0, None)  # applied, never segmented
        obs.finish()
        assert (obs.latencies_ms, obs.unobserved, obs.applied_without_segment) == ([], 2, 1)
