"""Where a rebuild's replay ends, which starts nothing: messages below a partition's end
of replay are replayed (written, never published) whatever else the same poll brought."""

from __future__ import annotations

from confluent_kafka import Message

from consumers.app import Segmenter
from consumers.rebuild import Rebuild
from stream.settings import Settings

CLICKS = ("shop.clicks", 1)


def _rebuild(ends: dict[tuple[str, int], int]) -> Rebuild:
    rebuild = Segmenter(Settings()).rebuild  # connects to nothing until started
    rebuild.ends = dict(ends)
    return rebuild


def _msgs(topic: str, partition: int, offsets: range) -> list[Message]:
    return [Message(topic=topic, partition=partition, offset=o, value=b"{}") for o in offsets]


def test_an_end_of_partition_in_the_same_poll_does_not_turn_the_rest_of_a_replay_live() -> None:
    # The poll returned offsets 96..119 and then the end of the partition (position 120):
    # 96..99 are still below the committed offset 100, so they are replayed, not published.
    rebuild = _rebuild({CLICKS: 100})
    replay, live, held = rebuild.split(_msgs(*CLICKS, range(96, 120)), {CLICKS: 120})
    assert [m.offset() for m in replay] == [96, 97, 98, 99]
    assert [m.offset() for m in live] == list(range(100, 120)) and held == {}
    assert rebuild.active  # until the replayed messages are written
    rebuild.replayed({CLICKS: 99}, 4, None)
    assert not rebuild.active


def test_the_end_of_partition_ends_a_replay_only_once_its_messages_are_written() -> None:
    # The end reached while other partitions' messages are replayed: the partition stops
    # replaying once that batch is written, not before.
    rebuild = _rebuild({CLICKS: 100, ("shop.purchases", 1): 50})
    replay, live, held = rebuild.split(_msgs("shop.purchases", 1, range(40, 45)), {CLICKS: 100})
    assert len(replay) == 5 and live == [] and held == {}
    assert set(rebuild.ends) == {CLICKS, ("shop.purchases", 1)}
    rebuild.replayed({("shop.purchases", 1): 44}, 5, None)
    assert set(rebuild.ends) == {("shop.purchases", 1)}


def test_an_end_reported_before_the_rewind_ends_nothing() -> None:
    # Delivered after the seek back to offset 0: the position there is below the end.
    rebuild = _rebuild({CLICKS: 100})
    replay, live, held = rebuild.split(_msgs(*CLICKS, range(0, 10)), {CLICKS: 10})
    assert [m.offset() for m in replay] == list(range(10)) and live == [] and held == {}
    rebuild.replayed({CLICKS: 9}, 10, None)
    assert rebuild.active


def test_with_nothing_to_replay_an_end_at_or_past_the_end_of_replay_ends_it_at_once() -> None:
    rebuild = _rebuild({CLICKS: 100})
    replay, live, held = rebuild.split([], {CLICKS: 100})
    assert replay == [] and live == [] and held == {} and not rebuild.active


def test_a_partition_number_waits_until_every_topic_of_it_is_replayed() -> None:
    # clicks:1 replayed to its end, purchases:1 not yet: a user of partition 1 may have
    # purchases still to replay, so their new clicks wait; partition 2 goes on.
    rebuild = _rebuild({("shop.purchases", 1): 50})
    msgs = [
        *_msgs("shop.purchases", 1, range(48, 50)),
        *_msgs(*CLICKS, range(200, 203)),
        *_msgs("shop.clicks", 2, range(7, 9)),
    ]
    replay, live, held = rebuild.split(msgs)
    assert [m.offset() for m in replay] == [48, 49]
    assert [(m.partition(), m.offset()) for m in live] == [(2, 7), (2, 8)]
    assert held == {CLICKS: 200}
    rebuild.replayed({("shop.purchases", 1): 49}, 2, None)
    assert not rebuild.active
    # Read again, they are processed as usual.
    replay, live, held = rebuild.split(_msgs(*CLICKS, range(200, 203)))
    assert replay == [] and len(live) == 3 and held == {}


def test_messages_that_end_every_topic_of_a_number_are_not_held() -> None:
    rebuild = _rebuild({CLICKS: 100, ("shop.purchases", 1): 50})
    msgs = [*_msgs(*CLICKS, range(99, 102)), *_msgs("shop.purchases", 1, range(49, 51))]
    replay, live, held = rebuild.split(msgs)
    assert [m.offset() for m in replay] == [99, 49]
    assert [m.offset() for m in live] == [100, 101, 50] and held == {}
