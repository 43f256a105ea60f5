"""A batch that is mostly one kind of bad message is said once, in words a person acts on
(starts nothing: the segmenter connects to nothing until started)."""

from __future__ import annotations

import logging

import pytest

from consumers.app import Segmenter
from stream.events import Limits, decode
from stream.settings import Settings

NOW = 1_700_000_000_000


def test_mostly_out_of_range_times_are_reported_once_with_the_bound_in_force(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seg = Segmenter(Settings(min_event_year=2000))
    limits = Limits(min_ts_ms=946_684_800_000)
    old = b'{"event_id":"e","user_id":"u","type":"view","ts":"1997-05-01T00:00:00Z"}'
    dead = [decode(old, b"u", "shop.clicks", 0, i, NOW, limits) for i in range(8)]
    with caplog.at_level(logging.WARNING, logger="segmenter"):
        seg._say_dead_letters(dead, total=10)  # type: ignore[arg-type]
        seg._say_dead_letters(dead, total=10)  # type: ignore[arg-type]
    (record,) = caplog.records
    text = record.getMessage()
    assert "8 of 10 messages" in text and "timestamp_out_of_range" in text
    assert "from 2000-01-01T00:00:00Z" in text  # the bound actually in force
    assert "SEGMENTER_MIN_EVENT_YEAR" in text


def test_a_few_bad_messages_are_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    seg = Segmenter(Settings())
    dead = [decode(b"not json", b"u", "shop.clicks", 0, i, NOW, Limits()) for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="segmenter"):
        seg._say_dead_letters(dead, total=10)  # type: ignore[arg-type]
    assert caplog.records == []
