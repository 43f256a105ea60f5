from __future__ import annotations

import pytest

from stream.state_gaps import (
    CommitMark,
    Gap,
    commit_metadata,
    find_gaps,
    id_floor,
    parse_metadata,
)

META = commit_metadata("e1", next_id=6, version=30)


def test_metadata_round_trips_and_ignores_what_is_not_ours() -> None:
    assert parse_metadata(META) == CommitMark("e1", 6, 30)
    for other in (None, "", "hello", "seg1;e=e1", "seg1;e=e1;n=6;v=x", "seg2;e=e1;n=6;v=30"):
        assert parse_metadata(other) is None
    assert len(META.encode()) < 64  # committed with every offset of every batch


def test_the_id_floor_is_the_highest_over_all_partitions() -> None:
    metas = [commit_metadata("a", 3, 50), None, commit_metadata("b", 9, 12), "x"]
    assert id_floor(metas) == (9, 50)
    assert id_floor([]) == (0, 0)


def test_no_gap_when_redis_holds_the_committed_offset_or_more() -> None:
    committed = {"c:0": (100, META), "c:1": (100, META), "c:2": (-1001, None)}
    held = {"c:0": 100, "c:1": 140}
    assert find_gaps(committed, "e1", held, {"c:0": 0, "c:1": 0, "c:2": 0}) == []


@pytest.mark.parametrize(
    ("epoch", "meta", "kind"),
    [
        ("e1", META, "behind"),  # same key space, last writes lost (a lagging replica)
        ("e2", META, "replaced"),  # another key space
        (None, META, "empty"),  # nothing at all
        ("e1", None, "behind"),  # offsets committed without metadata
    ],
)
def test_the_kind_of_gap(epoch: str | None, meta: str | None, kind: str) -> None:
    (gap,) = find_gaps({"c:0": (100, meta)}, epoch, {"c:0": 60}, {"c:0": 0})
    assert gap == Gap("c:0", kind, 100, 60, None)
    assert gap.replay == 40


def test_what_kafka_no_longer_retains_is_named() -> None:
    # Redis holds up to 60; Kafka has deleted everything below 80.
    (gap,) = find_gaps({"c:0": (100, META)}, "e1", {"c:0": 60}, {"c:0": 80})
    assert (gap.resume, gap.lost) == (80, (60, 80))
    # Nothing applied at all, and Kafka keeps everything from 0: nothing lost.
    (gap,) = find_gaps({"c:0": (100, META)}, None, {}, {"c:0": 0})
    assert (gap.resume, gap.lost) == (0, None)
    # Retention has moved past the committed offset: nothing left to replay.
    (gap,) = find_gaps({"c:0": (100, META)}, None, {}, {"c:0": 150})
    assert (gap.resume, gap.lost, gap.replay) == (150, (0, 150), 0)


def test_only_users_rebuilt_on_partitions_with_lost_history_are_marked() -> None:
    from stream.batch import UserUpdate
    from stream.features import UserState
    from stream.state_gaps import mark_incomplete

    ups = [
        UserUpdate("a", UserState(offsets={"shop.clicks:0": 4}), {}, None, None, None),
        UserUpdate("b", UserState(offsets={"shop.purchases:2": 9}), {}, None, None, None),
        # Only publishing a change again: nothing of the state is written.
        UserUpdate("c", UserState(offsets={"shop.clicks:2": 1}), {}, None, None, None, write=False),
    ]
    assert mark_incomplete(ups, {2}) == 1
    assert [u.state.incomplete for u in ups] == [False, True, False]
