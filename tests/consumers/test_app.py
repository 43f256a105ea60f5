"""The loop's order at a stop, which starts nothing: a stop that arrives while a batch is
consumed ends the loop before its housekeeping, whose sync could refit and retire segments
whose members a stopping process could no longer move."""

from __future__ import annotations

import threading
from typing import Any

from consumers.app import Segmenter
from stream.settings import Settings


class _SignalDuringConsume:
    """Stands in for the consumer: the stop (a SIGTERM) comes while a batch is read."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.stop.set()
        return []


def test_a_stop_during_a_batch_skips_housekeeping_and_syncs_once_as_final() -> None:
    seg = Segmenter(Settings())  # connects to nothing until started
    stop = threading.Event()
    seg._consumer = _SignalDuringConsume(stop)  # type: ignore[assignment]
    calls: list[Any] = []
    seg._housekeeping = lambda: calls.append("housekeeping")  # type: ignore[method-assign]
    seg.sync.sync = lambda **kw: calls.append(("sync", kw))  # type: ignore[method-assign]
    seg.sync.refresh_catalogue = lambda: calls.append("catalogue")  # type: ignore[method-assign]
    seg.sync.queue_retired = lambda: None  # type: ignore[method-assign]
    seg.run(stop)
    assert calls == [("sync", {"final": True}), "catalogue", "catalogue"]


def test_tune_collector_freezes_start_up_objects_and_sets_the_thresholds() -> None:
    import gc

    from consumers.app import GC_THRESHOLDS, tune_collector

    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    start_up = [[i] for i in range(100)]  # containers alive at start-up, as modules are
    try:
        tune_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() >= frozen + len(start_up)
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


class _Queue:
    """Stands in for the consumer's local queue: ``ready`` now, ``later`` within a wait,
    which calls ``on_wait`` first (as a rebalance callback runs within ``consume``)."""

    def __init__(self, ready: int, later: int, on_wait: Any = None) -> None:
        self.ready, self.later = list(range(ready)), list(range(ready, ready + later))
        self.calls: list[tuple[int, float]] = []
        self.on_wait = on_wait

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls.append((num_messages, timeout))
        if timeout > 0:
            if self.on_wait is not None:
                self.on_wait()
            self.ready += self.later
            self.later = []
        out, self.ready = self.ready[:num_messages], self.ready[num_messages:]
        return out


def _next_batch(
    ready: int, later: int, revoke: bool = False, **settings: Any
) -> tuple[list[Any], list[Any]]:
    seg = Segmenter(Settings(**settings))  # connects to nothing until started
    queue = _Queue(ready, later)
    if revoke:
        queue.on_wait = lambda: seg._on_revoke(queue, [])  # type: ignore[arg-type]
    seg._consumer = queue  # type: ignore[assignment]
    return seg._next_batch(), queue.calls


def test_a_batch_starts_at_once_when_enough_events_are_ready() -> None:
    msgs, calls = _next_batch(600, 300, batch_min_events=500, batch_max_events=5000)
    assert len(msgs) == 600
    assert calls == [(5000, 0)]  # no wait: the 300 arriving are the next batch's


def test_a_batch_of_few_ready_events_waits_for_more_up_to_the_maximum() -> None:
    msgs, calls = _next_batch(
        100, 300, batch_min_events=500, batch_max_events=350, batch_timeout_s=0.05
    )
    assert msgs == list(range(350))
    assert calls == [(350, 0), (250, 0.05)]


def test_a_full_batch_never_waits_even_below_the_minimum() -> None:
    msgs, calls = _next_batch(400, 300, batch_min_events=1000, batch_max_events=400)
    assert len(msgs) == 400
    assert calls == [(400, 0)]


def test_what_was_read_before_a_revocation_within_the_wait_is_dropped() -> None:
    # The partitions' next owner reads those messages again from the committed offsets.
    msgs, calls = _next_batch(100, 300, revoke=True, batch_min_events=500)
    assert msgs == list(range(100, 400))
    assert calls == [(5000, 0), (4900, 0.02)]
