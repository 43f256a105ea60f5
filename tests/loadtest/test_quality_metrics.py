"""The quality run's pure parts: scores, name matching, moves, time to lapse, the report."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest

from loadtest import quality
from loadtest.personas import PERSONAS
from loadtest.quality_metrics import (
    ACCEPTED_NAMES,
    HOUR_MS,
    RULE_NAMES,
    Crossing,
    InForce,
    ari,
    base_name,
    days_after_crossing,
    hours_to_lapse,
    merged_personas,
    moves_and_reversals,
    name_fits,
    names_correct,
    overall_targets,
    render_report,
    scenario_targets,
    segment_summaries,
    zscore,
)
from stream.feature_registry import DAY_MS
from stream.features import compute_features
from stream.naming import DEFAULT_RULES
from stream.scaling import to_vector
from tests.stream.test_quiet_drift import E, buyer, decided, two_segment_model

H = HOUR_MS
T0 = 1_800_000_000_000


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def change(user: str, seg: int, ms: int, name: str = "loyal", cid: str | None = None) -> dict:
    c: dict[str, Any] = {
        "user_id": user,
        "segment": seg,
        "segment_name": name,
        "event_time": iso(ms),
    }
    if cid is not None:
        c["change_id"] = cid
    return c


# -- ARI and scaling ---------------------------------------------------------------------


def test_ari_is_label_free_and_penalises_merges() -> None:
    truth = ["a"] * 5 + ["b"] * 5 + ["c"] * 5
    assert ari(truth, [9] * 5 + [4] * 5 + [1] * 5) == pytest.approx(1.0)
    merged = ari(truth, [0] * 10 + [1] * 5)
    assert 0.0 < merged < 1.0
    with pytest.raises(ValueError, match="3 truths for 2 labels"):
        ari(["a", "b", "c"], [1, 2])


def test_zscore_standardises_every_column_and_keeps_constants_at_zero() -> None:
    x = np.array([[1.0, 10.0, 3.0], [2.0, 20.0, 3.0], [3.0, 60.0, 3.0]])
    z = zscore(x)
    assert np.allclose(z.mean(axis=0), 0.0)
    assert np.allclose(z.std(axis=0)[:2], 1.0)
    assert np.all(z[:, 2] == 0.0)


# -- names -------------------------------------------------------------------------------


def test_rule_names_are_the_naming_rules() -> None:
    assert set(RULE_NAMES) == {r.name for r in DEFAULT_RULES}


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("window_shopper", "window_shopper"),
        ("window_shopper_more_activity", "window_shopper"),
        ("at_risk_less_lapsed", "at_risk"),
        ("high_value_more_basket", "high_value"),
        ("low_value", "low_value"),
        ("new_more_tenure", "new"),
        ("loyal", "loyal"),
        ("newcomer", "newcomer"),  # not a rule followed by qualifiers
        ("?", "?"),
    ],
)
def test_base_name_strips_qualifier_words(name: str, base: str) -> None:
    assert base_name(name) == base


def test_every_persona_has_accepted_names_from_the_rules() -> None:
    assert set(ACCEPTED_NAMES) == set(PERSONAS)
    for names in ACCEPTED_NAMES.values():
        assert names <= set(RULE_NAMES)


@pytest.mark.parametrize(
    ("persona", "name", "fits"),
    [
        ("loyal_high_spender", "high_value", True),
        ("loyal_high_spender", "loyal_more_spend", True),
        ("loyal_high_spender", "potential", False),
        ("bargain_hunter", "bargain_hunter_less_basket", True),
        ("window_shopper", "window_shopper_more_activity", True),
        ("window_shopper", "low_value", False),
        ("new_user", "new", True),
        ("new_user", "potential", True),
        ("lapsing_customer", "at_risk", True),
        ("lapsing_customer", "dormant", True),
        ("dormant_customer", "dormant_more_quiet", True),
        ("dormant_customer", "at_risk", False),
        ("reactivated_customer", "bargain_hunter", True),
        ("reactivated_customer", "new", False),
        ("astronaut", "loyal", False),
    ],
)
def test_name_fits(persona: str, name: str, fits: bool) -> None:
    assert name_fits(persona, name) is fits


def test_segment_summaries_majority_and_names_correct() -> None:
    labels = {"a": 1, "b": 1, "c": 1, "d": 2, "e": 2, "f": 3, "x": 3}
    personas = {
        "a": "window_shopper",
        "b": "window_shopper",
        "c": "loyal_high_spender",
        "d": "lapsing_customer",
        "e": "lapsing_customer",
        "f": "new_user",
    }  # x has no persona: left out
    names = {1: "window_shopper_more_activity", 2: "loyal", 3: "new"}
    s = segment_summaries(labels, personas, names)
    assert [(x.segment, x.size, x.majority, x.fits) for x in s] == [
        (1, 3, "window_shopper", True),
        (2, 2, "lapsing_customer", False),
        (3, 1, "new_user", True),
    ]
    assert s[0].majority_share == pytest.approx(2 / 3)
    assert names_correct(s) == pytest.approx(2 / 3)
    assert names_correct([]) == 0.0
    assert merged_personas(s) == ["1: window_shopper 2 + loyal_high_spender 1"]


def test_a_tie_for_majority_goes_to_the_first_persona_by_name() -> None:
    s = segment_summaries({"a": 1, "b": 1}, {"a": "window_shopper", "b": "bargain_hunter"}, {})
    assert s[0].majority == "bargain_hunter"
    assert s[0].name == "?" and not s[0].fits


# -- moves and reversals -----------------------------------------------------------------


def test_moves_and_reversals() -> None:
    changes = [
        change("u", 1, T0, cid="1"),
        change("u", 2, T0 + 1 * H, cid="2"),
        change("u", 1, T0 + 5 * H, cid="3"),  # back within 24 h: a reversal
        change("u", 1, T0 + 5 * H, cid="3"),  # delivered twice: once
        change("v", 1, T0, cid="4"),
        change("v", 2, T0 + 1 * H, cid="5"),
        change("v", 1, T0 + 30 * H, cid="6"),  # back after 24 h: a move, not a reversal
        change("w", 3, T0, cid="7"),
    ]
    m = moves_and_reversals(changes)
    assert (m.users, m.changes, m.moves, m.reversals) == (3, 7, 4, 1)
    assert m.moves_per_user == pytest.approx(4 / 3)
    assert m.reversal_rate == pytest.approx(0.25)


def test_moves_keep_each_users_order_not_time() -> None:
    # A sweep may decide a user with an event time below one of their earlier changes;
    # the order of their partition is the order they were decided in.
    changes = [change("u", 1, T0 + 10 * H), change("u", 2, T0 + 2 * H), change("u", 1, T0)]
    m = moves_and_reversals(changes)
    assert (m.moves, m.reversals) == (2, 1)


def test_no_changes() -> None:
    m = moves_and_reversals([])
    assert (m.users, m.moves_per_user, m.reversal_rate) == (0, 0.0, 0.0)


# -- hours to lapse ----------------------------------------------------------------------


def test_hours_to_lapse() -> None:
    personas = {
        "a": "lapsing_customer",  # at_risk 40 h after the last purchase
        "b": "dormant_customer",  # dormant 100 h after
        "c": "lapsing_customer",  # never named at risk
        "d": "dormant_customer",  # no purchase in the span
        "e": "lapsing_customer",  # in an at_risk segment at the last purchase, stays
        "f": "lapsing_customer",  # at_risk before the last purchase, then moves on
        "w": "window_shopper",  # not lapsing: ignored
    }
    last = {"a": T0, "b": T0, "c": T0, "e": T0, "f": T0, "w": T0}
    changes = [
        change("a", 1, T0 - 5 * H, "loyal"),
        change("a", 2, T0 + 10 * H, "potential"),
        change("a", 3, T0 + 40 * H, "at_risk_more_lapsed"),
        change("a", 4, T0 + 80 * H, "dormant"),  # only the first counts
        change("b", 5, T0 + 100 * H, "dormant"),
        change("c", 1, T0, "loyal"),
        change("e", 3, T0 - 2 * H, "at_risk"),
        change("f", 3, T0 - 2 * H, "at_risk"),
        change("f", 1, T0, "loyal"),
        change("w", 3, T0 + H, "at_risk"),
    ]
    lapse = hours_to_lapse(changes, personas, last)
    assert (lapse.customers, lapse.with_purchase, lapse.reached, lapse.already) == (6, 5, 2, 1)
    assert lapse.hours == (40.0, 100.0)
    assert lapse.median_h == pytest.approx(70.0)
    assert lapse.p90_h == pytest.approx(94.0)


def test_hours_to_lapse_counts_a_change_at_the_purchase_instant() -> None:
    lapse = hours_to_lapse([change("a", 1, T0, "dormant")], {"a": "dormant_customer"}, {"a": T0})
    assert lapse.hours == (0.0,)


def test_hours_to_lapse_records_who_moved_when_and_from_where() -> None:
    changes = [change("a", 1, T0 - 5 * H, "loyal"), change("a", 3, T0 + 40 * H, "at_risk")]
    changes[1].update(previous_segment=1, model_version=4)
    lapse = hours_to_lapse(changes, {"a": "lapsing_customer"}, {"a": T0})
    assert lapse.entries == (("a", T0 + 40 * H, 1, 3, 4),)


def test_a_segment_renamed_at_risk_is_reached_when_the_renaming_version_begins() -> None:
    model = two_segment_model()
    v1 = InForce(T0 - DAY_MS, 1, model, {1: "loyal", 2: "dormant", 3: "at_risk"})
    v2 = InForce(T0 + 50 * H, 2, model, {1: "at_risk", 2: "dormant", 3: "at_risk"})
    personas = {"a": "lapsing_customer", "b": "lapsing_customer", "c": "lapsing_customer"}
    changes = [
        change("a", 1, T0 - 5 * H, "loyal"),  # held until version 2 renames it
        change("b", 1, T0 - 5 * H, "loyal"),
        change("b", 2, T0 + 20 * H, "dormant"),  # moved before the rename
        change("c", 2, T0 - 5 * H, "dormant"),  # there already at the last purchase
        change("c", 3, T0 + 70 * H, "at_risk"),  # and moved between two such segments
    ]
    for c, v in zip(changes, (1, 1, 1, 1, 2), strict=True):
        c["model_version"] = v
    changes[2]["previous_segment"] = 1
    lp = {"a": T0, "b": T0, "c": T0}
    lapse = hours_to_lapse(changes, personas, lp, in_force=[v1, v2])
    assert sorted(lapse.entries) == [("a", T0 + 50 * H, 1, 1, 2), ("b", T0 + 20 * H, 1, 2, 1)]
    assert (lapse.hours, lapse.renamed, lapse.already) == ((20.0, 50.0), 1, 1)
    # Without the versions, only the change messages' names count.
    plain = hours_to_lapse(changes, personas, lp)
    assert sorted(e[0] for e in plain.entries) == ["b"] and plain.already == 1


def test_days_after_crossing_by_the_versions_in_force() -> None:
    model = two_segment_model()
    st = decided(buyer(0.5, 5), model, 0.15)
    active = st.segment
    assert active is not None
    quiet = next(i for i in model.ids if i != active)
    names = {active: "loyal", quiet: "at_risk"}
    # The crossing, an hour at a time, by brute force.
    t = st.last_event_ms
    while True:
        t += H
        z = model.scale(to_vector(compute_features(st, t)))
        if model.decide(active, z, model.distances(z), 0.15).segment == quiet:
            break
    crossed = t
    assert E < crossed < E + 90 * DAY_MS
    one = [InForce(0, 7, model, names)]
    entries = [
        ("prompt", crossed + 12 * H, active, quiet, 7),
        ("late", crossed + 5 * DAY_MS, active, quiet, 7),
        ("early", crossed - 10 * DAY_MS, active, quiet, 7),  # the centres say not yet
        ("gone", crossed, active, quiet, 7),  # no state
        ("unkept", crossed, active, quiet, 6),  # a version not given
    ]
    states = {u: st for u in ("prompt", "late", "early", "unkept")}
    got = days_after_crossing(entries, states, one, 0.15)
    assert got.days == pytest.approx((0.5, 5.0))
    assert (got.not_crossed, got.no_version) == (1, 1)
    assert got.within_a_day == 0.5
    assert got.median_days == pytest.approx(2.75)
    # Without hysteresis the nearest centre changes no later: the same move looks no sooner.
    loose = days_after_crossing(entries[:1], states, one, 0.0)
    assert loose.days[0] >= 0.5
    assert Crossing((), 0).within_a_day is None
    # Version 7 called no segment at_risk; version 8, in force from two days after the
    # crossing, does: the clock starts when version 8 began deciding.
    renamed = {active: "loyal", quiet: "potential"}
    two = [InForce(0, 7, model, renamed), InForce(crossed + 2 * DAY_MS, 8, model, names)]
    moved = [("prompt", crossed + 3 * DAY_MS, active, quiet, 8)]
    got = days_after_crossing(moved, states, two, 0.15)
    assert got.days == pytest.approx((1.0,))
    # A move made with version 7 is judged by version 7 until it, whatever began since.
    lagging = [("prompt", crossed + 3 * DAY_MS, active, quiet, 7)]
    assert days_after_crossing(lagging, states, two, 0.15).not_crossed == 1
    # Out of such a segment for a while (version 8 renames it back) and into it again: the
    # clock starts at the last crossing.
    back = [*two, InForce(crossed + 4 * DAY_MS, 9, model, renamed)]
    back.append(InForce(crossed + 6 * DAY_MS, 10, model, names))
    again = [("prompt", crossed + 6 * DAY_MS + 5 * H, active, quiet, 10)]
    got = days_after_crossing(again, states, back, 0.15)
    assert got.days[0] == pytest.approx(5 / 24, abs=1 / 24)
    # A customer with an event after the move was not quiet: not judged.
    assert days_after_crossing(entries[:1], {"prompt": st}, one, 0.15).active_after == 0
    early = days_after_crossing(
        [("prompt", st.last_event_ms, active, quiet, 7)], {"prompt": st}, one, 0.15
    )
    assert (early.days, early.active_after) == ((), 1)


def test_hours_to_lapse_without_any() -> None:
    lapse = hours_to_lapse([], {"a": "window_shopper"}, {})
    assert (lapse.customers, lapse.reached, lapse.median_h, lapse.p90_h) == (0, 0, None, None)


# -- targets and the report --------------------------------------------------------------


def row(name: str, mode: str, **over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "name": name,
        "mode": mode,
        "k_true": 3,
        "k_chosen": 3,
        "ari_personas": 0.95,
        "ari_batch": 0.97,
        "names_correct": 1.0,
        "moves_per_user": 0.2,
        "users": 100,
        "users_with_events": 100,
        "events": 1000,
        "moves": 20,
        "reversals": 1,
        "lapse_customers": 10,
        "lapse_reached": 8,
        "hours_to_lapse_median": 700.0,
        "hours_to_lapse_p90": 900.0,
        "k_choice": "k=3 because",
        "segments": [
            {
                "segment": 1,
                "name": "loyal",
                "size": 50,
                "fits": True,
                "mix": [["loyal_high_spender", 50]],
            }
        ],
        "seconds": 30.0,
    }
    return {**r, **over}


def test_scenario_targets_treats_missing_values_as_not_met() -> None:
    assert scenario_targets(row("a", "live")) == dict.fromkeys(
        ("ari_personas", "ari_batch", "names_correct", "k_chosen"), True
    )
    failed = row("a", "live", ari_personas=None, ari_batch=float("nan"), k_chosen=None)
    got = scenario_targets(failed)
    assert not got["ari_personas"] and not got["ari_batch"] and not got["k_chosen"]


def test_k_target_allows_one_miss_only() -> None:
    one = [row("a", "live"), row("b", "live", k_chosen=4)]
    two = [*one, row("c", "backlog", k_chosen=2)]
    k_one = next(t for t in overall_targets(one, None) if t.threshold == "misses <= 1")
    k_two = next(t for t in overall_targets(two, None) if t.threshold == "misses <= 1")
    assert k_one.met and not k_two.met
    assert "b live (k=4 of 3)" in k_one.result


def test_real_target_not_run_is_not_met() -> None:
    last = overall_targets([row("a", "live")], None)[-1]
    assert (last.result, last.met) == ("not run", False)
    last = overall_targets([row("a", "live")], {"ari_batch_rfm": 0.81})[-1]
    assert (last.result, last.met) == ("0.810", True)


def test_every_run_target_names_the_lowest_run() -> None:
    rows = [row("a", "live"), row("b", "backlog", ari_personas=0.6)]
    t = overall_targets(rows, None)[0]
    assert not t.met
    assert t.result == "1 of 2 runs; lowest 0.600 (b backlog)"


def test_render_report_shows_every_run_misses_and_the_mapping() -> None:
    rows = [row("three", "live"), row("three", "backlog", ari_personas=0.5, k_chosen=5)]
    real = {
        "dataset": "CDNOW",
        "customers": 3,
        "events": 9,
        "segmented": 3,
        "ari_batch_rfm": 0.4,
        "ari_batch_rfm_same_k": 0.6,
        "k_chosen": 3,
        "batch_k": 2,
        "segmenter_profiles": [
            {
                "segment": "1 loyal",
                "size": 2,
                "share": 0.5,
                "recency_days": 3.0,
                "orders": 4.0,
                "spend": 100.0,
            }
        ],
        "batch_profiles": [],
    }
    md = render_report(
        rows,
        real,
        {
            "date": "2026-01-01",
            "elapsed_s": 99,
            "config": {"seed": "7"},
            "machine": {"machine": "2 cores"},
            "notes": ["a note"],
        },
    )
    assert md.startswith("# Segment quality, 2026-01-01")
    assert "| three | live |" in md and "| three | backlog |" in md
    assert "0.500 **not met**" in md
    assert "5 **not met**" in md
    assert "| lapsing_customer | at_risk, dormant |" in md
    assert "| 1 loyal | 2 | 50.0% | 3.0 | 4.00 | 100.00 |" in md
    assert "0.400 **not met**" in md
    assert "| seed | 7 |" in md and "| machine | 2 cores |" in md
    assert "- a note" in md
    assert render_report([], None, {}).count("Not run") == 1


def test_report_json_shape_is_serialisable() -> None:
    doc = {"scenarios": [row("three", "live")], "real_data": None}
    back = orjson.loads(orjson.dumps(doc))
    assert set(back) == {"scenarios", "real_data"}
    for key in (
        "name",
        "mode",
        "k_true",
        "k_chosen",
        "ari_personas",
        "ari_batch",
        "names_correct",
        "moves_per_user",
    ):
        assert key in back["scenarios"][0]


# -- the command line --------------------------------------------------------------------


def test_parse_args_defaults_and_options() -> None:
    a = quality.parse_args([])
    assert (a.scenario, a.mode, a.skip_real, a.out, a.seed) == (None, None, False, None, 7)
    a = quality.parse_args(
        [
            "--scenario",
            "three",
            "--scenario",
            "six",
            "--mode",
            "backlog",
            "--skip-real",
            "--out",
            "x",
            "--seed",
            "3",
        ]
    )
    assert (a.scenario, a.mode, a.skip_real, a.out, a.seed) == (
        ["three", "six"],
        "backlog",
        True,
        "x",
        3,
    )
    with pytest.raises(SystemExit):
        quality.parse_args(["--scenario", "seven"])
    with pytest.raises(SystemExit):
        quality.parse_args(["--rate", "0"])
