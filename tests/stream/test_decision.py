"""Segment decisions with hysteresis, and their explanations."""

from __future__ import annotations

import numpy as np
import pytest

from stream.decision import Decision, decide, decide_many

C1 = np.array([[0.0], [1.0]])
NAMES1 = ("x",)


def one_d(current: int | None, z: float, margin: float = 0.2) -> Decision:
    zv = np.array([z])
    return decide(current, zv, C1, np.abs(C1[:, 0] - z), margin, NAMES1)


def test_new_user_gets_the_nearest_centre() -> None:
    d = one_d(None, 0.45)
    assert (d.segment, d.previous, d.runner_up, d.changed) == (0, None, 1, True)
    assert d.margin == pytest.approx(0.1)
    d = one_d(None, 0.55)
    assert (d.segment, d.runner_up, d.changed) == (1, 0, True)
    assert d.margin == pytest.approx(0.1)


def test_stay_when_the_better_centre_is_not_better_by_the_margin() -> None:
    d = one_d(0, 0.55)  # 0.45 is not < 0.8 * 0.55 = 0.44
    assert (d.segment, d.previous, d.changed) == (0, 0, False)
    assert d.runner_up == 1
    # Distance to the runner-up minus distance to the chosen one: negative when staying.
    assert d.margin == pytest.approx(-0.1)


def test_switch_when_the_better_centre_wins_by_the_margin() -> None:
    d = one_d(0, 0.8)  # 0.2 < 0.8 * 0.8
    assert (d.segment, d.previous, d.changed, d.runner_up) == (1, 0, True, 0)
    assert d.margin == pytest.approx(0.6)


def test_margin_boundary_is_strict() -> None:
    z = np.zeros(1)
    centres = np.zeros((2, 1))
    stay = decide(0, z, centres, np.array([1.0, 0.5]), 0.5, NAMES1)
    assert stay.segment == 0 and not stay.changed
    switch = decide(0, z, centres, np.array([1.0, 0.4999]), 0.5, NAMES1)
    assert switch.segment == 1 and switch.changed


def test_zero_margin_switches_to_any_strictly_closer_centre() -> None:
    z = np.zeros(1)
    centres = np.zeros((3, 1))
    assert decide(2, z, centres, np.array([0.9, 0.5, 1.0]), 0.0, NAMES1).segment == 1
    # A tie is not closer.
    assert decide(2, z, centres, np.array([0.7, 0.7, 0.7]), 0.0, NAMES1).segment == 2


def test_current_nearest_stays_with_the_second_as_runner_up() -> None:
    d = decide(2, np.zeros(1), np.zeros((4, 1)), np.array([3.0, 2.0, 1.0, 5.0]), 0.15, NAMES1)
    assert (d.segment, d.runner_up, d.changed) == (2, 1, False)
    assert d.margin == 1.0


def test_current_out_of_range_is_replaced_by_the_nearest() -> None:
    dists = np.array([3.0, 2.0, 1.0])
    d = decide(7, np.zeros(1), np.zeros((3, 1)), dists, 0.9, NAMES1)
    assert (d.segment, d.previous, d.runner_up, d.changed) == (2, 7, 1, True)
    d = decide(-1, np.zeros(1), np.zeros((3, 1)), dists, 0.9, NAMES1)
    assert (d.segment, d.previous, d.changed) == (2, -1, True)


def test_runner_up_and_margin_among_many() -> None:
    dists = np.array([4.0, 2.5, 7.0, 2.0, 3.0])
    d = decide(None, np.zeros(1), np.zeros((5, 1)), dists, 0.15, NAMES1)
    assert (d.segment, d.runner_up, d.margin) == (3, 1, 0.5)
    # From 4 (at 3.0) the user moves: 2.0 < 0.85 * 3.0 = 2.55.
    assert decide(4, np.zeros(1), np.zeros((5, 1)), dists, 0.15, NAMES1).segment == 3
    # With a bigger margin, 4 stays and the best centre becomes the runner-up.
    d = decide(4, np.zeros(1), np.zeros((5, 1)), dists, 0.4, NAMES1)
    assert (d.segment, d.runner_up, d.margin) == (4, 3, -1.0)


def test_margin_is_rounded_to_four_places() -> None:
    d = decide(None, np.zeros(1), np.zeros((2, 1)), np.array([1.0, 1.123456]), 0.1, NAMES1)
    assert d.margin == 0.1235


NAMES5 = ("a", "b", "c", "d", "e")


def test_top_features_pull_toward_the_chosen_centre() -> None:
    chosen = np.zeros(5)
    runner = np.array([1.0, 2.0, 0.5, 0.0, -1.0])
    z = np.array([0.0, 0.0, 0.0, 0.0, -0.8])
    centres = np.stack([chosen, runner])
    dists = np.linalg.norm(centres - z, axis=1)
    d = decide(None, z, centres, dists, 0.15, NAMES5)
    assert (d.segment, d.runner_up) == (0, 1)
    assert d.margin == pytest.approx(2.3 - 0.8)
    # pulls: a 1.0, b 4.0, c 0.25, d 0 (neutral), e -0.6 (toward the runner-up)
    assert d.top_features == ("b", "a", "c")


def test_top_features_are_at_most_three_and_only_positive_pulls() -> None:
    chosen = np.zeros(5)
    runner = np.array([0.0, 0.0, 0.0, 3.0, 0.0])
    z = np.array([0.2, -0.1, 0.0, 0.0, 0.3])
    centres = np.stack([runner, chosen])
    dists = np.linalg.norm(centres - z, axis=1)
    d = decide(None, z, centres, dists, 0.15, NAMES5)
    assert (d.segment, d.runner_up) == (1, 0)
    assert d.top_features == ("d",)
    many = decide(
        None,
        np.zeros(5),
        np.stack([np.zeros(5), np.arange(1.0, 6.0)]),
        np.array([0.0, 7.4]),
        0.15,
        NAMES5,
    )
    assert many.top_features == ("e", "d", "c")


def test_top_features_explain_a_kept_segment_against_the_closer_centre() -> None:
    centres = np.array([[0.0, 0.0], [1.0, 1.0]])
    z = np.array([0.9, 0.2])  # nearer 1 overall, but nearer 0 along the second axis
    dists = np.linalg.norm(centres - z, axis=1)
    d = decide(0, z, centres, dists, 0.5, ("p", "q"))
    assert (d.segment, d.runner_up, d.changed) == (0, 1, False)
    assert d.top_features == ("q",)


def test_decision_changed() -> None:
    assert Decision(1, None, 0, 0.1, ()).changed
    assert Decision(1, 0, 0, 0.1, ()).changed
    assert not Decision(1, 1, 0, 0.1, ()).changed


@pytest.mark.parametrize("margin", [0.0, 0.15, 0.5])
def test_decide_many_decides_every_row_as_decide_does(margin: float) -> None:
    rng = np.random.default_rng(3)
    k, f, n = 6, 5, 400
    centres = rng.normal(size=(k, f))
    z = rng.normal(size=(n, f))
    # Some users sit exactly between two centres' coordinates, so some pulls are zero.
    z[:20, 2] = centres[0, 2]
    d = np.sqrt(((z[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2))
    current = rng.integers(-1, k + 1, size=n)  # -1: none; k: out of range (retired)
    chosen, runner_up, gap, top = decide_many(current, z, centres, d, margin)
    names = tuple(f"x{i}" for i in range(f))
    for i in range(n):
        cur = int(current[i])
        one = decide(None if cur < 0 else cur, z[i], centres, d[i], margin, names)
        assert (one.segment, one.runner_up) == (chosen[i], runner_up[i])
        assert one.margin == round(float(gap[i]), 4)
        assert one.top_features == tuple(names[j] for j in top[i] if j >= 0)
    assert (chosen != np.where(current < 0, -2, current)).any()  # some moved
    assert ((current >= 0) & (current < k) & (chosen == current)).any()  # some kept
