"""Time to re-segment, computed from hand-made segment-change records: no broker."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from loadtest.personas import DEFAULT_SHIFT
from loadtest.resegmentation import (
    Resegmentation,
    event_time_ms,
    resegmentation,
    resegmentation_rows,
)

H = 3_600_000
T = 1_800_000_000_000  # the shift

SHIFTED = ("s1", "s2", "s3", "s4", "s5", "s6", "s7")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def ground_truth() -> dict[str, Any]:
    personas = {u: "loyal_high_spender" for u in (*SHIFTED, "l1", "l2", "l3")}
    personas |= {u: "window_shopper" for u in ("w1", "w2", "w3", "w4")}
    personas["b1"] = "bargain_hunter"
    return {
        "seed": 1,
        "n_users": len(personas),
        "personas": personas,
        "shift": {
            "at": 0.6,
            "share": 0.5,
            "from_persona": "window_shopper",
            "to_persona": "loyal_high_spender",
            "at_ms": T,
        },
        "shifted": {
            u: {"before": "window_shopper", "after": "loyal_high_spender", "at_ms": T}
            for u in SHIFTED
        },
    }


def change(user: str, segment: int, ms: int, cid: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"user_id": user, "segment": segment, "event_time": iso(ms)}
    if cid is not None:
        c["change_id"] = cid
    return c


def changes() -> list[dict[str, Any]]:
    return [
        # Unshifted loyal users end in segment 1 (two of three): the target segment.
        change("l1", 1, T - 10 * H),
        change("l2", 2, T - 5 * H),
        change("l2", 1, T + 1 * H),
        change("l3", 2, T - 1 * H),
        # s1 gets there 2 h after the shift.
        change("s1", 0, T - 20 * H),
        change("s1", 1, T + 2 * H),
        # s2 goes elsewhere first, then to the target 10 h after.
        change("s2", 0, T - 20 * H),
        change("s2", 2, T + 1 * H),
        change("s2", 1, T + 10 * H),
        # s3 never does; its change is delivered twice.
        change("s3", 0, T - 20 * H, cid="a" * 32),
        change("s3", 0, T - 20 * H, cid="a" * 32),
        # s4 was in the target segment before the shift: left out.
        change("s4", 1, T - 3 * H),
        # s5 was in the target, left it before the shift, and comes back 4 h after.
        change("s5", 1, T - 30 * H),
        change("s5", 0, T - 1 * H),
        change("s5", 1, T + 4 * H),
        # s6 moves at the very instant of the shift; s7 has no change at all.
        change("s6", 0, T - 1 * H),
        {"user_id": "s6", "segment": 1, "event_time": T},
        # Control: w1 moves into the target (a false move), w2 stays, w3 was there
        # already, w4 left it before the shift and does not come back.
        change("w1", 0, T - 20 * H),
        change("w1", 1, T + 5 * H),
        change("w2", 0, T - 20 * H),
        change("w3", 1, T - 2 * H),
        change("w4", 1, T - 50 * H),
        change("w4", 0, T - 1 * H),
        # Other users, and users not in the ground truth, do not matter.
        change("b1", 1, T + 1 * H),
        change("stranger", 1, T + 1 * H),
    ]


EVENTS_AFTER_SHIFT = {
    "s1": [T, T + H, T + 2 * H, T + 3 * H],
    "s2": [T + 5 * H, T + 10 * H, T + 11 * H],
    "s3": [T + 1 * H],
    "s5": [T + 4 * H],
    "s6": [T],
}


def test_delays_shares_and_events_from_hand_made_changes() -> None:
    r = resegmentation(changes(), ground_truth(), EVENTS_AFTER_SHIFT)
    assert r == Resegmentation(
        from_persona="window_shopper",
        to_persona="loyal_high_spender",
        target_segment=1,
        target_holders=2,
        target_persona_users=3,
        shifted_end_segment=1,
        shifted_end_holders=5,
        shifted=7,
        shifted_already=1,
        resegmented=4,
        delays_h=(0.0, 2.0, 4.0, 10.0),
        events_to_resegment=(1, 1, 2, 3),
        control=4,
        control_already=1,
        control_moved=1,
        # Most shifted users end in the target segment too: the same figures.
        own_already=1,
        own_moved=4,
        own_delays_h=(0.0, 2.0, 4.0, 10.0),
        control_own_moved=1,
    )
    assert r.share_resegmented == pytest.approx(4 / 6)
    assert r.median_delay_h == pytest.approx(3.0)
    assert r.p90_delay_h == pytest.approx(8.2)  # linear between 4 h and 10 h
    assert r.median_events == pytest.approx(1.5)
    assert r.false_move_share == pytest.approx(1 / 3)


def test_each_users_own_order_counts_not_how_users_interleave() -> None:
    by_user: dict[str, list[dict[str, Any]]] = {}
    for c in changes():
        by_user.setdefault(c["user_id"], []).append(c)
    interleaved = [c for u in sorted(by_user, reverse=True) for c in by_user[u]]
    expected = resegmentation(changes(), ground_truth())
    assert resegmentation(interleaved, ground_truth()) == expected
    # Reversed, every user's last change is their first one: another result.
    assert resegmentation(list(reversed(changes())), ground_truth()) != expected


def test_a_user_already_in_the_target_stays_left_out_after_leaving_it() -> None:
    records = [*changes(), change("s4", 0, T + H), change("s4", 1, T + 2 * H)]
    r = resegmentation(records, ground_truth())
    assert r.shifted_already == 1 and r.resegmented == 4


def test_without_event_times_there_is_no_event_count() -> None:
    r = resegmentation(changes(), ground_truth())
    assert r.events_to_resegment is None and r.median_events is None
    assert r.delays_h == (0.0, 2.0, 4.0, 10.0)


def test_target_segment_ties_go_to_the_lowest_id_and_no_holders_means_none() -> None:
    tied = [change("l1", 3, T), change("l2", 2, T)]
    assert resegmentation(tied, ground_truth()).target_segment == 2
    r = resegmentation([change("s1", 1, T + H), change("w1", 1, T + H)], ground_truth())
    assert r.target_segment is None and r.target_persona_users == 3
    assert (r.shifted_end_segment, r.shifted_end_holders) == (1, 1)
    assert r.resegmented == 0 and r.share_resegmented == 0.0
    assert r.median_delay_h is None and r.p90_delay_h is None
    assert r.control_moved == 0 and r.false_move_share == 0.0


def test_nobody_to_count_gives_no_share() -> None:
    gt = ground_truth()
    gt["shifted"] = {}
    gt["personas"] = {"l1": "loyal_high_spender"}
    r = resegmentation([change("l1", 1, T)], gt)
    assert r.shifted == 0 and r.control == 0
    assert r.share_resegmented is None and r.false_move_share is None


def test_a_ground_truth_without_a_shift_is_refused() -> None:
    gt = ground_truth()
    gt["shift"] = None
    with pytest.raises(ValueError, match="shift"):
        resegmentation(changes(), gt)


def test_event_times_in_text_and_milliseconds() -> None:
    assert event_time_ms("2027-01-15T08:00:00.123Z") == T + 123
    assert event_time_ms("2027-01-15T08:00:00.123") == T + 123
    assert event_time_ms("2027-01-15T09:00:00.123+01:00") == T + 123
    assert event_time_ms(iso(T + 7)) == T + 7
    assert event_time_ms(T) == T
    with pytest.raises(ValueError, match="event_time"):
        event_time_ms(None)


def test_report_rows_say_what_they_measure() -> None:
    r = resegmentation(changes(), ground_truth(), EVENTS_AFTER_SHIFT)
    rows = dict(resegmentation_rows(r, DEFAULT_SHIFT, {1: {"name": "high_value"}}))
    assert rows["behaviour shift (ground truth)"] == (
        "7 of 11 window_shopper users shop as loyal_high_spender from day 18.0 of 30"
    )
    assert rows["target segment: where most unshifted loyal_high_spender users end"] == (
        "1 high_value (2 of 3 users)"
    )
    assert rows["where most shifted users end"] == "1 high_value (5 of 7 users)"
    assert rows["shifted users re-segmented into the target segment"] == "4 / 6 (66.7 %)"
    assert rows["time to re-segment, median (hours of event time after the shift)"] == "3.0"
    assert rows["time to re-segment, 90th percentile (hours of event time)"] == "8.2"
    assert rows["events from the shift to re-segmentation, median per user"] == "1.5"
    key = (
        "false moves: unshifted window_shopper users moved into the target segment after the shift"
    )
    assert rows[key] == "1 / 3 (33.3 %)"
    assert rows["already in the target segment at the shift, left out (shifted / unshifted)"] == (
        "1 / 1"
    )
    bare = dict(resegmentation_rows(resegmentation([], ground_truth()), DEFAULT_SHIFT, {}))
    assert bare["target segment: where most unshifted loyal_high_spender users end"] == "none"
    assert bare["where most shifted users end"] == "none"
    assert bare["time to re-segment, median (hours of event time after the shift)"] == "-"
    assert "events from the shift to re-segmentation, median per user" not in bare
