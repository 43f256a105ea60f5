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
