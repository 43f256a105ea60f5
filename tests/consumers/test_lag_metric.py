"""segmenter_consumer_lag from librdkafka's statistics, which starts nothing: with offsets
committed in the producer's transaction librdkafka never learns the committed offset again,
so the lag is counted from the position the loop reached."""

from __future__ import annotations

from typing import Any

import orjson

from consumers.app import Segmenter
from stream.settings import Settings

UNSET = -1001  # librdkafka's "no offset"


def _partition(**fields: Any) -> dict[str, Any]:
    base = {"desired": True, "app_offset": UNSET, "committed_offset": UNSET, "lo_offset": 0}
    return {**base, **fields}


def _lags(partitions: dict[str, dict[str, Any]]) -> dict[str, float]:
    seg = Segmenter(Settings())  # connects to nothing until started
    seg._on_stats(orjson.dumps({"topics": {"shop.clicks": {"partitions": partitions}}}).decode())
    return {
        s.labels["partition"]: s.value
        for m in seg.registry.collect()
        if m.name == "segmenter_consumer_lag"
        for s in m.samples
    }


def test_lag_counts_from_the_position_when_the_committed_offset_is_unknown() -> None:
    lags = _lags(
        {
            # consumed up to 48 of 60; librdkafka's consumer_lag says -1 (unknown)
            "0": _partition(app_offset=48, ls_offset=60, consumer_lag=-1),
            # nothing consumed yet, offsets committed before this assignment
            "1": _partition(committed_offset=10, ls_offset=25),
            # nothing consumed, nothing committed: auto.offset.reset=earliest reads from lo
            "2": _partition(lo_offset=5, ls_offset=9),
            # an empty partition
            "3": _partition(lo_offset=0, ls_offset=0),
        }
    )
    assert lags == {"0": 12.0, "1": 15.0, "2": 4.0, "3": 0.0}


def test_partitions_not_assigned_here_have_no_lag() -> None:
    lags = _lags(
        {
            "0": _partition(desired=False, app_offset=3, ls_offset=9),
            "-1": _partition(ls_offset=UNSET),  # librdkafka's internal UA partition
            "1": _partition(ls_offset=UNSET),  # end offset not known yet
        }
    )
    assert lags == {}
