"""Re-deciding everyone under new segments waits for the backlog, and happens once per
partition and model epoch, whichever process owns the partition."""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson
import pytest

from consumers.app import Segmenter
from stream.settings import Settings
from tests.integration.conftest import produce
from tests.integration.shoppers import make_events
from tests.integration.test_event_time import event_time_settings

pytestmark = pytest.mark.integration


def _run_recording(s: Settings, until: Any) -> tuple[Segmenter, list[tuple[set[int], int, bool]]]:
    """Run a segmenter until ``until(segmenter)``, recording every ``make_due`` call: its
    partitions, epoch, and whether a backlog was still being read then."""
    seg = Segmenter(s)
    seg.start()
    calls: list[tuple[set[int], int, bool]] = []
    real = seg.store.make_due

    def recording(parts: Any, due_ms: int, epoch: int | None = None, **kw: Any) -> int:
        calls.append((set(parts), -1 if epoch is None else epoch, bool(seg._backlog_ends)))
        return real(parts, due_ms, epoch, **kw)

    seg.store.make_due = recording  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=seg.run, args=(stop,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 90
        while not until(seg, calls):
            assert thread.is_alive(), "the segmenter's loop ended early"
            assert time.monotonic() < deadline, f"not reached in 90 s: {seg.stats}, {calls}"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(60)
        seg.close()
    return seg, calls


def test_everyone_is_brought_forward_once_the_backlog_is_read_and_never_twice(
    settings: Settings,
) -> None:
    s = event_time_settings(settings).replace(batch_max_events=150)
    messages, _ = make_events(s, n_users=200, seed=7, days=30)
    messages.sort(key=lambda m: orjson.loads(m[2])["ts"])
    produce(s, messages)

    def read_and_swept(seg: Segmenter, calls: list[Any]) -> bool:
        return seg.stats.messages >= len(messages) and bool(calls)

    seg, calls = _run_recording(s, read_and_swept)
    assert seg.stats.batches > 3  # a backlog of several batches
    # Not one partition brought forward while the backlog was read; then all four, at
    # the epoch of the model, recorded.
    assert not any(reading for _, _, reading in calls), calls
    parts, epoch, _ = calls[0]
    assert parts == {0, 1, 2, 3} and epoch == seg.model.epoch >= 1
    assert seg.store.swept_epochs(range(4)) == dict.fromkeys(range(4), epoch)

    # The next owner of the partitions (no backlog, same epoch) has nothing to bring
    # forward; a new epoch is brought forward at once.
    def settled(seg: Segmenter, calls: list[Any]) -> bool:
        return seg.model.ready and not seg._check_swept

    again, calls = _run_recording(s, settled)
    assert again.model.epoch == epoch and calls == []

    def after_new_epoch(seg: Segmenter, calls: list[Any]) -> bool:
        if seg.model.ready and not seg._check_swept and not seg.sync.resweep and not calls:
            seg.model.epoch += 1  # as adopting a refit does, before it asks for a resweep
            seg.sync.resweep, seg.sync.resweep_cause = True, "segments changed"
        return bool(calls)

    third, calls = _run_recording(s, after_new_epoch)
    assert calls[0][:2] == ({0, 1, 2, 3}, epoch + 1)
    assert third.store.swept_epochs(range(4)) == dict.fromkeys(range(4), epoch + 1)
