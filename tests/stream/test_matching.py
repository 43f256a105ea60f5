"""Matching new centres to old ones: kept, born, retired, merged and split segment ids."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from stream.matching import Lineage, match_centres

OLD = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
OLD_IDS = [3, 8, 5, 11]


def test_unchanged_centres_keep_their_ids() -> None:
    lin = match_centres(OLD, OLD_IDS, OLD.copy(), next_id=12, threshold=1.0)
    assert lin == Lineage(
        ids=(3, 8, 5, 11),
        kept={3: 0.0, 8: 0.0, 5: 0.0, 11: 0.0},
        born=(),
        retired=(),
        merged=(),
        split=(),
        next_id=12,
    )
    assert lin.events() == []


@pytest.mark.parametrize("seed", range(5))
def test_shuffled_new_centres_keep_their_ids(seed: int) -> None:
    rng = np.random.default_rng(seed)
    moved = OLD + rng.uniform(-0.5, 0.5, size=OLD.shape)
    order = rng.permutation(len(OLD))
    lin = match_centres(OLD, OLD_IDS, moved[order], next_id=12, threshold=1.0)
    assert lin.ids == tuple(OLD_IDS[i] for i in order)
    assert set(lin.kept) == set(OLD_IDS)
    for i in order:
        assert lin.kept[OLD_IDS[i]] == pytest.approx(float(np.linalg.norm(moved[i] - OLD[i])))
    assert list(lin.kept) == list(lin.ids)  # in new-centre order
    assert lin.events() == []
    assert lin.next_id == 12


def test_first_seeding_gives_every_centre_a_new_id() -> None:
    new = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    lin = match_centres(np.empty((0, 2)), [], new, next_id=0, threshold=1.0)
    assert lin.ids == (0, 1, 2)
    assert lin.born == (0, 1, 2)
    assert lin.kept == {}
    assert lin.retired == lin.merged == lin.split == ()
    assert lin.next_id == 3
    assert lin.events() == [{"event": "born", "segment": i} for i in (0, 1, 2)]


def test_first_seeding_accepts_an_empty_array_of_any_shape() -> None:
    new = np.array([[1.0, 1.0], [2.0, 2.0]])
    lin = match_centres(np.empty((0,)), (), new, next_id=7, threshold=1.0)
    assert lin.ids == (7, 8)
    assert lin.next_id == 9


def test_a_new_centre_far_from_every_old_one_is_born() -> None:
    new = np.concatenate([OLD, [[50.0, 50.0]]])
    lin = match_centres(OLD, OLD_IDS, new, next_id=12, threshold=1.0)
    assert lin.ids == (3, 8, 5, 11, 12)
    assert lin.born == (12,)
    assert lin.split == ()
    assert lin.retired == lin.merged == ()
    assert lin.next_id == 13
    assert lin.events() == [{"event": "born", "segment": 12}]


def test_an_old_centre_far_from_every_new_one_is_retired() -> None:
    lin = match_centres(OLD, OLD_IDS, OLD[[0, 2, 3]], next_id=12, threshold=1.0)
    assert lin.ids == (3, 5, 11)
    assert lin.retired == (8,)
    assert lin.merged == ()
    assert lin.born == lin.split == ()
    assert lin.next_id == 12
    assert lin.events() == [{"event": "retired", "segment": 8}]


def test_no_new_centres_retires_every_old_id() -> None:
    lin = match_centres(OLD, OLD_IDS, np.empty((0, 2)), next_id=12, threshold=1.0)
    assert lin.ids == ()
    assert lin.retired == (3, 8, 5, 11)
    assert lin.merged == ()
    assert lin.next_id == 12


def test_a_split_centre_keeps_its_id_on_the_nearer_half() -> None:
    # Segment 8 at (10, 0) splits into (10, 0.4) and (10, -0.9).
    new = np.array([[0.0, 0.0], [10.0, -0.9], [0.0, 10.0], [10.0, 10.0], [10.0, 0.4]])
    lin = match_centres(OLD, OLD_IDS, new, next_id=12, threshold=1.0)
    assert lin.ids == (3, 12, 5, 11, 8)
    assert lin.kept[8] == pytest.approx(0.4)
    assert lin.born == (12,)
    assert lin.split == ((12, 8),)
    assert lin.retired == lin.merged == ()
    assert lin.events() == [
        {"event": "born", "segment": 12},
        {"event": "split", "segment": 12, "from": 8},
    ]


def test_a_centre_that_disappears_next_to_another_is_merged_into_it() -> None:
    old = np.array([[0.0, 0.0], [0.8, 0.0], [10.0, 10.0]])
    new = np.array([[10.0, 10.0], [0.3, 0.0]])
    lin = match_centres(old, [0, 1, 2], new, next_id=3, threshold=1.0)
    assert lin.ids == (2, 0)
    assert lin.kept == {2: 0.0, 0: pytest.approx(0.3)}
    assert lin.retired == (1,)
    assert lin.merged == ((1, 0),)
    assert lin.born == lin.split == ()
    assert lin.next_id == 3
    assert lin.events() == [
        {"event": "retired", "segment": 1},
        {"event": "merged", "segment": 1, "into": 0},
    ]


def test_threshold_is_respected() -> None:
    old = np.array([[0.0, 0.0], [100.0, 0.0]])
    # Moved exactly the threshold: kept.
    lin = match_centres(old, [0, 1], np.array([[0.0, 2.0], [100.0, 0.0]]), 2, threshold=2.0)
    assert lin.ids == (0, 1)
    assert lin.kept == {0: 2.0, 1: 0.0}
    # Moved beyond it: born and retired, with neither split nor merge recorded.
    lin = match_centres(old, [0, 1], np.array([[0.0, 2.5], [100.0, 0.0]]), 2, threshold=2.0)
    assert lin.ids == (2, 1)
    assert lin.kept == {1: 0.0}
    assert lin.born == (2,)
    assert lin.retired == (0,)
    assert lin.merged == lin.split == ()
    assert lin.next_id == 3
    # The same move under a larger threshold is kept.
    lin = match_centres(old, [0, 1], np.array([[0.0, 2.5], [100.0, 0.0]]), 2, threshold=3.0)
    assert lin.ids == (0, 1)


def test_more_matches_win_over_a_smaller_total_distance() -> None:
    # Pairing A-Y (beyond the threshold) and B-X is shorter in total than A-X and B-Y,
    # but only the second keeps both ids.
    old = np.array([[0.0, 0.0], [1.0, 0.1]])
    new = np.array([[1.0, 0.0], [0.7, 0.8]])
    lin = match_centres(old, [0, 1], new, next_id=2, threshold=1.0)
    assert lin.ids == (0, 1)
    assert lin.kept == {0: pytest.approx(1.0), 1: pytest.approx(np.hypot(0.3, 0.7))}
    assert lin.events() == []


def test_next_id_advances_by_the_number_born_in_new_centre_order() -> None:
    new = np.array([[50.0, 0.0], [0.0, 0.0], [60.0, 0.0], [70.0, 0.0]])
    lin = match_centres(OLD[:1], [3], new, next_id=40, threshold=1.0)
    assert lin.ids == (40, 3, 41, 42)
    assert lin.born == (40, 41, 42)
    assert lin.next_id == 43


def test_born_retired_merged_and_split_together() -> None:
    old = np.array([[0.0, 0.0], [10.0, 0.0], [1.5, 0.0], [-30.0, 0.0]])
    new = np.array([[10.0, 1.0], [0.2, 0.0], [10.0, -1.5], [40.0, 40.0]])
    lin = match_centres(old, (0, 1, 2, 6), new, next_id=7, threshold=2.0)
    assert lin.ids == (1, 0, 7, 8)
    assert lin.kept == {1: 1.0, 0: pytest.approx(0.2)}
    assert lin.born == (7, 8)
    assert lin.retired == (2, 6)
    assert lin.merged == ((2, 0),)
    assert lin.split == ((7, 1),)
    assert lin.next_id == 9
    assert lin.events() == [
        {"event": "born", "segment": 7},
        {"event": "born", "segment": 8},
        {"event": "retired", "segment": 2},
        {"event": "retired", "segment": 6},
        {"event": "merged", "segment": 2, "into": 0},
        {"event": "split", "segment": 7, "from": 1},
    ]
    assert all(type(v) is int for e in lin.events() for v in e.values() if v != e["event"])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"next_id": 11}, "next_id"),
        ({"next_id": 4}, "next_id"),
        ({"old_ids": [3, 8, 5]}, "old_ids"),
        ({"old_ids": [3, 8, 5, 3]}, "old_ids"),
        ({"old_centres": np.zeros((4, 3))}, "old_centres"),
        ({"old_centres": np.zeros(4)}, "old_centres"),
        ({"new_centres": np.zeros(2)}, "new_centres"),
        ({"old_centres": np.full((4, 2), np.nan)}, "old_centres"),
    ],
)
def test_validation_names_the_argument(kwargs: dict[str, Any], name: str) -> None:
    args: dict[str, Any] = {
        "old_centres": OLD,
        "old_ids": OLD_IDS,
        "new_centres": OLD.copy(),
        "next_id": 12,
        "threshold": 1.0,
    } | kwargs
    with pytest.raises(ValueError, match=f"^{name} "):
        match_centres(**args)
