"""The examples' logic without I/O: the recommendation view's ordering rules, and the
campaign engine's segment lookup and feature bounds."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from examples.campaign_engine import Member, _bound, resolve_segment, within
from examples.recommendation_service import SegmentView, epoch_ms


def change(cid: str, user: str, segment: int, at: str, **extra: Any) -> dict[str, Any]:
    return {
        "change_id": cid,
        "user_id": user,
        "segment": segment,
        "segment_name": f"s{segment}",
        "model_version": 1,
        "emitted_at": f"2026-01-01T00:00:{at}.000Z",
        **extra,
    }


def test_changes_older_than_the_bootstrap_are_skipped_until_a_newer_one() -> None:
    view = SegmentView()
    view.load("u1", change("c2", "u1", 2, "02"))
    assert not view.apply(change("c1", "u1", 1, "01"))  # from the overlap: older
    assert not view.apply(change("c2", "u1", 2, "02"))  # the snapshot's own change
    assert view.apply(change("c3", "u1", 3, "03"))
    assert view.get("u1") is not None and view.get("u1").segment == 3  # type: ignore[union-attr]
    assert view.stats == {"older": 1, "duplicate": 1, "applied": 1}


def test_after_the_first_newer_change_arrival_order_rules_not_clocks() -> None:
    """Another process (after a rebalance) may have a clock a little behind: its later
    decision still applies, since one user's changes arrive in decision order."""
    view = SegmentView()
    assert view.apply(change("c1", "u1", 1, "05"))
    assert view.apply(change("c2", "u1", 2, "04"))
    assert view.get("u1").segment == 2  # type: ignore[union-attr]


def test_a_change_seen_before_is_a_duplicate_even_after_a_newer_one() -> None:
    view = SegmentView()
    for c in (change("c1", "u1", 1, "01"), change("c2", "u1", 2, "02")):
        assert view.apply(c)
    assert not view.apply(change("c1", "u1", 1, "01"))
    assert view.get("u1").segment == 2  # type: ignore[union-attr]


def test_the_duplicate_memory_is_bounded_but_the_held_change_is_always_known() -> None:
    view = SegmentView(remember=2)
    for i in range(5):
        assert view.apply(change(f"c{i}", f"u{i}", i, "01"))
    assert len(view._recent) == 2
    assert not view.apply(change("c0", "u0", 0, "01"))  # forgotten id, but held by u0


def test_tombstones_erase_and_older_changes_cannot_bring_the_user_back() -> None:
    view = SegmentView()
    view.load("u1", change("c1", "u1", 1, "01"))
    view.load("u1", None, timestamp_ms=epoch_ms("2026-01-01T00:00:02.000Z"))
    assert view.get("u1") is None
    assert not view.apply(change("c0", "u1", 1, "00"))  # decided before the forget
    assert view.apply(change("c3", "u1", 2, "03"))  # shopping again afterwards
    assert view.get("u1").segment == 2  # type: ignore[union-attr]
    assert "u1" not in view.forgotten


def test_a_tombstone_older_than_the_held_change_keeps_the_user() -> None:
    view = SegmentView()
    view.apply(change("c5", "u1", 1, "05"))
    assert not view.forget("u1", epoch_ms("2026-01-01T00:00:04.000Z"))
    assert view.get("u1") is not None
    assert view.forget("u1", epoch_ms("2026-01-01T00:00:06.000Z"))
    assert view.get("u1") is None and view.sizes() == {}


def test_segment_by_name_or_id_and_a_readable_miss() -> None:
    cat = {0: {"name": "new"}, 3: {"name": "high_value"}}
    assert resolve_segment(cat, "new") == 0 and resolve_segment(cat, "3") == 3
    with pytest.raises(LookupError, match=r"no segment 'vip'; segments: 0 \(new\), 3 \(high"):
        resolve_segment(cat, "vip")
    with pytest.raises(LookupError, match="none yet"):
        resolve_segment({}, "new")


def test_bounds_on_features() -> None:
    members = [
        Member("a", 1, "x", "", {"spend_30d": 10.0, "purchases_30d": 1}),
        Member("b", 1, "x", "", {"spend_30d": 50.0, "purchases_30d": 0}),
    ]
    assert [m.user_id for m in within(members, {"spend_30d": 10})] == ["a", "b"]
    assert [m.user_id for m in within(members, {"spend_30d": 20}, {"spend_30d": 50})] == ["b"]
    assert [m.user_id for m in within(members, None, {"purchases_30d": 0})] == ["b"]
    with pytest.raises(LookupError, match="no feature 'spend'"):
        list(within(members, {"spend": 1}))
    assert _bound("spend_30d=12.5") == ("spend_30d", 12.5)
    with pytest.raises(argparse.ArgumentTypeError):
        _bound("spend_30d>12")
