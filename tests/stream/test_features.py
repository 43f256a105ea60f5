"""Per-user features: event-time windows exact to their grain, de-duplication, replays,
late events, and the state's serialisation."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from stream.events import Event
from stream.feature_registry import PRICE_HALF_LIFE_MS
from stream.features import (
    DAY_MS,
    FEATURE_NAMES,
    HOUR_MS,
    MAX_CATEGORIES,
    MINUTE_MS,
    PERIOD_MS,
    RETENTION_MS,
    WEEK_MS,
    UserState,
    apply_events,
    compute_features,
    event_key,
    price_level,
)
from stream.stored_change import StoredChange

# An instant aligned to a day, so grain offsets below are easy to read.
DAY0 = 19_700 * DAY_MS  # 2023-12-09T00:00:00Z
NOW = DAY0 + 10 * HOUR_MS + 30 * MINUTE_MS + 30_000  # 10:30:30 that day


class Feed:
    """Builds events with increasing offsets, as Kafka would deliver them."""

    def __init__(self) -> None:
        self.offset = 0
        self.n = 0

    def __call__(self, etype: str, ts: int, **kw: Any) -> Event:
        self.n += 1
        self.offset += 1
        kw.setdefault("event_id", f"e{self.n}")
        topic = "shop.purchases" if etype == "purchase" else "shop.clicks"
        if etype == "purchase":
            kw.setdefault("amount", 10.0)
        return Event(
            user_id="u1", type=etype, ts_ms=ts, topic=topic, partition=0, offset=self.offset, **kw
        )


def features_of(events: list[Event]) -> dict[str, float | None]:
    return compute_features(apply_events(None, events).state)


@pytest.mark.parametrize(
    ("window", "age_ms", "expected"),
    [
        ("1h", 59 * MINUTE_MS, 1.0),
        ("1h", 61 * MINUTE_MS, 0.0),
        ("1h", 60 * MINUTE_MS + 30_000, 0.0),
        ("24h", 23 * HOUR_MS, 1.0),
        ("24h", 25 * HOUR_MS, 0.0),
        ("7d", 6 * DAY_MS, 1.0),
        ("7d", 8 * DAY_MS, 0.0),
        ("30d", 29 * DAY_MS, 1.0),
        ("30d", 31 * DAY_MS, 0.0),
        # 13 weeks: always counts 84 days back, never 92.
        ("90d", 84 * DAY_MS, 1.0),
        ("90d", 92 * DAY_MS, 0.0),
        # 13 periods of 28 days: always counts 336 days back, never 364.
        ("365d", 336 * DAY_MS, 1.0),
        ("365d", 364 * DAY_MS, 0.0),
    ],
)
def test_window_edges(window: str, age_ms: int, expected: float) -> None:
    feed = Feed()
    # The old view first (in order, so it is not late), then the latest event.
    f = features_of([feed("view", NOW - age_ms), feed("search", NOW)])
    assert f[f"views_{window}"] == expected
    assert f[f"searches_{window}"] == 1.0
    assert f[f"events_{window}"] == 1.0 + expected


@pytest.mark.parametrize(
    ("window", "inside", "outside"),
    [
        # NOW is 30 s into its minute: the 1 h window starts 59 min 30 s before NOW.
        ("1h", 59 * MINUTE_MS + 30_000, 59 * MINUTE_MS + 31_000),
        # NOW is 30 min 30 s into its hour: the 24 h window starts 23 h 30 min 30 s before.
        ("24h", 23 * HOUR_MS + 30 * MINUTE_MS + 30_000, 23 * HOUR_MS + 30 * MINUTE_MS + 31_000),
        # NOW is 10:30:30 into its day: the 7 d window starts 6 d 10:30:30 before.
        ("7d", 6 * DAY_MS + NOW - DAY0, 6 * DAY_MS + NOW - DAY0 + 1),
        ("30d", 29 * DAY_MS + NOW - DAY0, 29 * DAY_MS + NOW - DAY0 + 1),
        # The 90 d window starts at the start of the week 12 weeks before NOW's.
        ("90d", 12 * WEEK_MS + NOW % WEEK_MS, 12 * WEEK_MS + NOW % WEEK_MS + 1),
        # The 365 d window starts at the start of the period 12 periods before NOW's.
        ("365d", 12 * PERIOD_MS + NOW % PERIOD_MS, 12 * PERIOD_MS + NOW % PERIOD_MS + 1),
    ],
)
def test_windows_are_exact_to_their_grain(window: str, inside: int, outside: int) -> None:
    feed = Feed()
    f = features_of([feed("click", NOW - inside), feed("click", NOW - outside), feed("view", NOW)])
    assert f[f"clicks_{window}"] == 1.0


def test_counts_per_type_in_every_window() -> None:
    feed = Feed()
    evs = [
        feed("view", NOW - 20 * DAY_MS),
        feed("view", NOW - 3 * DAY_MS),
        feed("click", NOW - 5 * HOUR_MS),
        feed("add_to_cart", NOW - 30 * MINUTE_MS),
        feed("remove_from_cart", NOW - 20 * MINUTE_MS),
        feed("search", NOW - 10 * MINUTE_MS),
        feed("view", NOW),
    ]
    f = features_of(evs)
    assert (f["views_1h"], f["views_24h"], f["views_7d"], f["views_30d"]) == (1, 1, 2, 3)
    assert (f["clicks_1h"], f["clicks_24h"], f["clicks_7d"]) == (0, 1, 1)
    assert (f["add_to_cart_1h"], f["remove_from_cart_1h"], f["searches_1h"]) == (1, 1, 1)
    assert (f["events_1h"], f["events_24h"], f["events_7d"], f["events_30d"]) == (4, 5, 6, 7)
    assert f["purchases_30d"] == 0.0


def test_spend_order_value_and_recency() -> None:
    feed = Feed()
    evs = [
        feed("purchase", NOW - 40 * DAY_MS, amount=100.0),  # lifetime only
        feed("purchase", NOW - 29 * DAY_MS, amount=40.0),
        feed("purchase", NOW - 10 * DAY_MS, amount=30.25),
        feed("purchase", NOW - 6 * DAY_MS, amount=20.5),
        feed("purchase", NOW - 36 * HOUR_MS, amount=10.0),
        feed("view", NOW),
    ]
    f = features_of(evs)
    assert f["spend_7d"] == 30.5
    assert f["spend_30d"] == 100.75
    assert f["purchases_7d"] == 2.0
    assert f["purchases_30d"] == 4.0
    assert f["avg_order_value"] == round(200.75 / 5, 2) == 40.15
    assert f["days_since_last_purchase"] == 1.5
    assert f["tenure_days"] == 40.0


def test_spend_is_rounded_to_cents() -> None:
    feed = Feed()
    f = features_of([feed("purchase", NOW, amount=0.1), feed("purchase", NOW, amount=0.2)])
    assert f["spend_30d"] == 0.3
    assert f["avg_order_value"] == 0.15


def test_no_purchase() -> None:
    feed = Feed()
    f = features_of([feed("view", NOW - HOUR_MS), feed("add_to_cart", NOW)])
    assert f["days_since_last_purchase"] is None
    assert f["avg_order_value"] == 0.0
    assert f["spend_30d"] == 0.0
    assert f["conversion_rate_30d"] == 0.0
    assert f["cart_abandonment_30d"] == 1.0


def test_recency_uses_the_latest_purchase_even_if_it_arrives_first() -> None:
    feed = Feed()
    evs = [
        feed("purchase", NOW - DAY_MS),
        feed("purchase", NOW - 5 * DAY_MS),
        feed("view", NOW),
    ]
    assert features_of(evs)["days_since_last_purchase"] == 1.0


@pytest.mark.parametrize(
    ("views", "adds", "purchases", "conversion", "abandonment"),
    [
        (10, 4, 3, 0.3, 0.25),
        (4, 4, 1, 0.25, 0.75),
        (1, 2, 3, 1.0, 0.0),  # conversion capped at 1, abandonment floored at 0
        (0, 0, 2, 1.0, 0.0),  # bought without views
        (0, 0, 0, 0.0, 0.0),
        (5, 0, 0, 0.0, 0.0),
        (0, 3, 0, 0.0, 1.0),
    ],
)
def test_conversion_and_cart_abandonment(
    views: int, adds: int, purchases: int, conversion: float, abandonment: float
) -> None:
    feed = Feed()
    evs = [feed("view", NOW - i * MINUTE_MS) for i in range(views)]
    evs += [feed("add_to_cart", NOW - i * MINUTE_MS) for i in range(adds)]
    evs += [feed("purchase", NOW - i * MINUTE_MS) for i in range(purchases)]
    evs.append(feed("search", NOW))
    f = features_of(evs)
    assert f["conversion_rate_30d"] == pytest.approx(conversion)
    assert f["cart_abandonment_30d"] == pytest.approx(abandonment)


def test_conversion_counts_only_the_30_day_window() -> None:
    feed = Feed()
    evs = [feed("purchase", NOW - 35 * DAY_MS)]  # outside the window
    evs += [feed("view", NOW - i * HOUR_MS) for i in range(4)]
    evs.append(feed("purchase", NOW))
    assert features_of(evs)["conversion_rate_30d"] == 0.25


def test_days_without_purchase_of_a_buyer_are_the_days_since_the_last_purchase() -> None:
    f = compute_features(_shopper())
    assert f["days_without_purchase"] == f["days_since_last_purchase"] == 2.0
    assert f["tenure_days"] == 300.0
    # As of a later watermark, they grow with it alike.
    later = compute_features(_shopper(), now_ms=NOW + 45 * DAY_MS)
    assert later["days_without_purchase"] == later["days_since_last_purchase"] == 47.0


def test_days_without_purchase_of_a_never_buyer_are_their_tenure() -> None:
    feed = Feed()
    st = apply_events(None, [feed("view", NOW - 20 * DAY_MS), feed("add_to_cart", NOW)]).state
    f = compute_features(st)
    assert f["days_since_last_purchase"] is None
    assert f["days_without_purchase"] == f["tenure_days"] == 20.0
    later = compute_features(st, now_ms=NOW + 10 * DAY_MS + 12 * HOUR_MS)
    assert later["days_since_last_purchase"] is None
    assert later["days_without_purchase"] == later["tenure_days"] == 30.5


@pytest.mark.parametrize(
    ("view_days", "purchase_days", "conversion"),
    [
        ((300, 200, 100, 40), (10,), 0.25),  # one order over four views in the year
        ((), (100, 3), 1.0),  # bought without views
        ((), (), 0.0),  # nothing
        ((2,), (), 0.0),  # views, no order
        ((5,), (200, 100, 3), 1.0),  # capped at 1
        ((300, 5), (1,), 0.5),
    ],
)
def test_conversion_over_the_year(
    view_days: tuple[int, ...], purchase_days: tuple[int, ...], conversion: float
) -> None:
    feed = Feed()
    evs = [feed("view", NOW - d * DAY_MS) for d in view_days]
    evs += [feed("purchase", NOW - d * DAY_MS) for d in purchase_days]
    evs.append(feed("search", NOW))
    assert features_of(evs)["conversion_rate_365d"] == pytest.approx(conversion)


def test_conversion_over_the_year_counts_only_the_365_day_window() -> None:
    feed = Feed()
    # Views 370 and 400 days old (applied in order, so not late) are out of the window;
    # the one 100 days old is in it, though not in the 30-day one.
    evs = [feed("view", NOW - d * DAY_MS) for d in (400, 370)]
    evs.append(feed("view", NOW - 100 * DAY_MS))
    evs.append(feed("purchase", NOW))
    r = apply_events(None, evs)
    assert r.late == 0 and len(r.applied) == 4
    f = compute_features(r.state)
    assert f["views_365d"] == 1.0
    assert f["conversion_rate_365d"] == 1.0
    assert f["conversion_rate_30d"] == 1.0
    evs = [feed("view", NOW - d * DAY_MS) for d in (400, 370, 100, 60, 50)]
    evs += [feed("view", NOW - d * HOUR_MS) for d in (5, 4)]
    evs.append(feed("purchase", NOW))
    f = features_of(evs)
    assert f["views_365d"] == 5.0
    assert f["conversion_rate_365d"] == 0.2
    assert f["conversion_rate_30d"] == 0.5


@pytest.mark.parametrize(
    ("view_days", "add_days", "cart_rate"),
    [
        ((300, 200, 100, 40), (10,), 0.25),  # one add-to-cart over four views in the year
        ((), (100, 3), 1.0),  # added without views
        ((), (), 0.0),
        ((2,), (), 0.0),
        ((5,), (200, 100, 3), 1.0),  # capped at 1
        ((400, 5), (1,), 1.0),  # the view 400 days old is out of the window
    ],
)
def test_cart_rate_over_the_year(
    view_days: tuple[int, ...], add_days: tuple[int, ...], cart_rate: float
) -> None:
    feed = Feed()
    # Views first, then adds: the 400-day-old view comes first, so it is not late.
    evs = [feed("view", NOW - d * DAY_MS) for d in view_days]
    evs += [feed("add_to_cart", NOW - d * DAY_MS) for d in add_days]
    evs.append(feed("search", NOW))
    assert features_of(evs)["cart_rate_365d"] == pytest.approx(cart_rate)


def test_active_days_run_from_the_first_event_to_the_last_whatever_the_clock() -> None:
    feed = Feed()
    st = apply_events(
        None, [feed("view", NOW - 20 * DAY_MS), feed("click", NOW - 6 * DAY_MS)]
    ).state
    f = compute_features(st)
    assert f["active_days"] == 14.0 and f["tenure_days"] == 14.0
    # Quiet for 30 more days on the group's clock: tenure grows, the active span does not.
    later = compute_features(st, now_ms=NOW + 24 * DAY_MS)
    assert later["active_days"] == 14.0 and later["tenure_days"] == 44.0
    assert compute_features(apply_events(None, [feed("view", NOW)]).state)["active_days"] == 0.0


def test_category_diversity() -> None:
    feed = Feed()
    evs = [
        feed("view", NOW - 40 * DAY_MS, category="old"),  # older than 30 days
        feed("view", NOW - 3 * DAY_MS, category="books"),
        feed("view", NOW - 2 * DAY_MS, category="books"),
        feed("click", NOW - DAY_MS, category="toys"),
        feed("purchase", NOW - HOUR_MS, category="garden"),
        feed("view", NOW, category=""),  # empty category is no category
        feed("view", NOW),
    ]
    r = apply_events(None, evs)
    assert compute_features(r.state)["category_diversity_30d"] == 3.0
    assert r.state.categories == {
        "books": NOW - 2 * DAY_MS,
        "toys": NOW - DAY_MS,
        "garden": NOW - HOUR_MS,
    }


def test_category_keeps_its_latest_time_when_an_older_event_arrives_later() -> None:
    feed = Feed()
    first = apply_events(None, [feed("view", NOW, category="books")]).state
    r = apply_events(first, [feed("view", NOW - 29 * DAY_MS, category="books")])
    assert len(r.applied) == 1
    assert r.state.categories == {"books": NOW}
    # Later, 31 days on, "books" still counts from its latest sighting, not the older one.
    later = apply_events(r.state, [feed("view", NOW + 2 * DAY_MS)]).state
    assert compute_features(later)["category_diversity_30d"] == 1.0


def test_category_diversity_is_bounded_and_keeps_the_newest() -> None:
    feed = Feed()
    n = MAX_CATEGORIES + 8
    evs = [feed("view", NOW - (n - i) * MINUTE_MS, category=f"c{i}") for i in range(n)]
    random.Random(7).shuffle(evs)
    evs = [Event(**{**_fields(e), "offset": k}) for k, e in enumerate(evs, 1)]
    r = apply_events(None, evs)
    assert MAX_CATEGORIES == 32
    assert compute_features(r.state)["category_diversity_30d"] == 32.0
    assert set(r.state.categories) == {f"c{i}" for i in range(8, n)}


def _fields(e: Event) -> dict[str, Any]:
    return e._asdict()


def test_out_of_order_events_land_in_their_buckets() -> None:
    feed = Feed()
    late_view = NOW - 3 * HOUR_MS - 5 * MINUTE_MS
    evs = [
        feed("view", NOW),
        feed("purchase", NOW - 2 * DAY_MS, amount=7.0),
        feed("view", late_view),
        feed("click", NOW - 10 * MINUTE_MS),
    ]
    r = apply_events(None, evs)
    s = r.state
    assert len(r.applied) == 4 and r.late == 0
    assert s.first_seen_ms == NOW - 2 * DAY_MS
    assert s.last_event_ms == NOW
    # Minute buckets older than the 1 h window are pruned; hour and day buckets kept.
    assert set(s.minutes) == {NOW // MINUTE_MS, (NOW - 10 * MINUTE_MS) // MINUTE_MS}
    assert s.hours[late_view // HOUR_MS][0] == 1.0
    assert s.days[(NOW - 2 * DAY_MS) // DAY_MS][4:] == [1.0, 0.0, 7.0]
    assert s.days[NOW // DAY_MS][:2] == [2.0, 1.0]
    f = compute_features(s)
    assert (f["views_1h"], f["views_24h"], f["clicks_1h"], f["spend_7d"]) == (1, 2, 1, 7.0)


def _random_events(rng: random.Random, n: int) -> list[dict[str, Any]]:
    types = ("view", "view", "view", "click", "add_to_cart", "remove_from_cart", "search")
    specs: list[dict[str, Any]] = [{"etype": "view", "ts": NOW, "category": "latest"}]
    for _ in range(n):
        age = rng.choice((rng.randrange(HOUR_MS), rng.randrange(2 * DAY_MS)))
        age = rng.choice((age, rng.randrange(RETENTION_MS - DAY_MS)))
        spec: dict[str, Any] = {"etype": rng.choice(types), "ts": NOW - age}
        if rng.random() < 0.15:
            spec["etype"] = "purchase"
            spec["amount"] = round(rng.uniform(1, 300), 2)
        if rng.random() < 0.5:
            spec["category"] = f"cat{rng.randrange(40)}"
        if spec["etype"] in ("view", "click") and rng.random() < 0.7:
            spec["price"] = round(rng.uniform(0, 900), 2)
        specs.append(spec)
    return specs


def _feed(specs: list[dict[str, Any]]) -> list[Event]:
    feed = Feed()
    return [
        feed(s["etype"], s["ts"], **{k: v for k, v in s.items() if k not in ("etype", "ts")})
        for s in specs
    ]


@pytest.mark.parametrize("seed", range(12))
def test_shuffle_within_the_window_gives_the_same_features(seed: int) -> None:
    rng = random.Random(seed)
    specs = _random_events(rng, 80)
    # Give every event a distinct time, so "newest category" has no ties.
    for i, s in enumerate(specs):
        s["ts"] -= i
    in_order = sorted(specs, key=lambda s: s["ts"])
    shuffled = list(specs)
    rng.shuffle(shuffled)
    expected = features_of(_feed(in_order))
    assert features_of(_feed(shuffled)) == expected
    # Split into several batches, threading the state through, gives the same too.
    events = _feed(shuffled)
    state: UserState | None = None
    for lo in range(0, len(events), 17):
        state = apply_events(state, events[lo : lo + 17]).state
    assert state is not None
    assert compute_features(state) == expected


def test_late_events_are_counted_and_ignored() -> None:
    feed = Feed()
    first = apply_events(None, [feed("view", NOW, category="a")]).state
    before = compute_features(first)
    late = [
        feed("purchase", NOW - RETENTION_MS, amount=99.0),  # exactly 364 days: late
        feed("view", NOW - RETENTION_MS - 1, category="z"),
        feed("click", NOW - 400 * DAY_MS),
    ]
    r = apply_events(first, late)
    assert (r.late, r.duplicates, r.replayed, r.applied) == (3, 0, 0, ())
    assert compute_features(r.state) == before
    assert r.state.lifetime == first.lifetime
    assert r.state.last_purchase_ms is None
    assert r.state.first_seen_ms == NOW
    # Their offsets are recorded, so a replay of them is skipped without counting as late.
    assert r.state.offsets == {"shop.clicks:0": 4, "shop.purchases:0": 2}
    again = apply_events(r.state, late)
    assert (again.late, again.replayed) == (0, 3)


def test_an_event_just_inside_retention_is_applied() -> None:
    feed = Feed()
    first = apply_events(None, [feed("view", NOW)]).state
    r = apply_events(first, [feed("purchase", NOW - RETENTION_MS + 1, amount=5.0)])
    assert r.late == 0
    assert len(r.applied) == 1
    assert r.state.lifetime[4:] == [1.0, 0.0, 5.0]


def test_duplicates_by_event_id_are_counted_and_skipped() -> None:
    feed = Feed()
    evs = [
        feed("purchase", NOW, event_id="p1", amount=20.0),
        feed("purchase", NOW, event_id="p1", amount=20.0),  # redelivered at a new offset
        feed("view", NOW, event_id="v1"),
    ]
    r = apply_events(None, evs)
    assert (r.duplicates, r.replayed, r.late) == (1, 0, 0)
    assert [e.event_id for e in r.applied] == ["p1", "v1"]
    assert r.state.lifetime[4] == 1.0
    assert compute_features(r.state)["spend_30d"] == 20.0
    # Also across batches, through the state's ring.
    r2 = apply_events(r.state, [feed("view", NOW, event_id="v1")])
    assert (r2.duplicates, r2.applied) == (1, ())
    assert r2.state.offsets["shop.clicks:0"] == 4  # the offset still moves


def test_replays_by_offset_are_counted_and_not_applied() -> None:
    feed = Feed()
    evs = [feed("view", NOW - MINUTE_MS), feed("purchase", NOW), feed("click", NOW)]
    first = apply_events(None, evs)
    assert first.state.offsets == {"shop.clicks:0": 3, "shop.purchases:0": 2}
    again = apply_events(first.state, evs)
    assert (again.replayed, again.duplicates, again.late, again.applied) == (3, 0, 0, ())
    assert again.state == first.state


def test_replay_detection_is_per_topic_partition() -> None:
    base = Event("a", "u1", "view", NOW, "shop.clicks", 0, 10)
    state = apply_events(None, [base]).state
    same_offset_other_partition = Event("b", "u1", "view", NOW, "shop.clicks", 1, 10)
    same_offset_other_topic = Event("c", "u1", "purchase", NOW, "shop.purchases", 0, 10, amount=1.0)
    lower_offset = Event("d", "u1", "view", NOW, "shop.clicks", 0, 9)
    r = apply_events(state, [same_offset_other_partition, same_offset_other_topic, lower_offset])
    assert r.replayed == 1
    assert [e.event_id for e in r.applied] == ["b", "c"]
    assert r.state.offsets == {"shop.clicks:0": 10, "shop.clicks:1": 10, "shop.purchases:0": 10}


def test_dedupe_ring_is_bounded_by_the_window() -> None:
    feed = Feed()
    evs = [feed("view", NOW, event_id=f"x{i}") for i in range(6)]
    r = apply_events(None, evs, dedupe_window=4)
    assert r.state.recent_events == [event_key(f"x{i}") for i in range(2, 6)]
    # x0 fell out of the ring: a redelivery is applied again; x5 is still remembered.
    r2 = apply_events(
        r.state,
        [feed("view", NOW, event_id="x0"), feed("view", NOW, event_id="x5")],
        dedupe_window=4,
    )
    assert [e.event_id for e in r2.applied] == ["x0"]
    assert r2.duplicates == 1
    assert len(r2.state.recent_events) == 4
    assert r2.state.recent_events[-1] == event_key("x0")


def test_dedupe_within_one_batch_is_not_limited_by_the_window() -> None:
    feed = Feed()
    evs = [feed("view", NOW, event_id=f"x{i}") for i in range(6)]
    evs.append(feed("view", NOW, event_id="x0"))
    r = apply_events(None, evs, dedupe_window=2)
    assert r.duplicates == 1
    assert len(r.applied) == 6
    assert len(r.state.recent_events) == 2


def test_event_key_is_a_stable_48_bit_digest() -> None:
    import hashlib

    digest = hashlib.blake2b(b"evt-42", digest_size=8).digest()
    assert event_key("evt-42") == int.from_bytes(digest) >> 16
    assert 0 <= event_key("evt-42") < 2**48
    assert event_key("evt-42") != event_key("evt-43")


def _rich_state() -> UserState:
    feed = Feed()
    evs = [
        feed("view", NOW - 3 * DAY_MS, category="books"),
        feed("purchase", NOW - DAY_MS, amount=12.34, category="toys"),
        feed("add_to_cart", NOW - 5 * MINUTE_MS),
        feed("view", NOW),
    ]
    s = apply_events(None, evs).state
    s.segment, s.segment_name, s.segment_since_ms = 3, "high_value", NOW - HOUR_MS
    s.last_change = StoredChange.from_json("shop.purchases:0", 2, '{"segment":3}')
    return s


def test_state_round_trips_through_orjson() -> None:
    s = _rich_state()
    blob = orjson.dumps(s.to_dict())
    back = UserState.from_dict(orjson.loads(blob))
    assert back == s
    assert compute_features(back) == compute_features(s)
    assert all(isinstance(k, int) for k in back.minutes)
    assert orjson.dumps(back.to_dict()) == blob


def test_empty_state_round_trips() -> None:
    s = UserState()
    back = UserState.from_dict(orjson.loads(orjson.dumps(s.to_dict())))
    assert back == s
    assert back.segment is None and back.last_purchase_ms is None


def test_state_dict_layout() -> None:
    s = _rich_state()
    d = s.to_dict()
    assert set(d) == {
        *("f", "l", "m", "h", "d", "w", "q", "t", "p", "c", "r", "o", "s", "sn", "ss", "lc"),
    }
    assert d["l"] == NOW and d["p"] == NOW - DAY_MS
    assert [NOW // DAY_MS, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0] in d["d"]  # view, add_to_cart
    # Weeks start on Thursdays (the epoch's weekday): NOW is a Saturday, so the view three
    # days before falls in the week before; all four events share NOW's 28-day period.
    week = NOW // WEEK_MS
    assert sorted(d["w"]) == [
        [week - 1, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [week, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 12.34],
    ]
    assert d["q"] == [[NOW // PERIOD_MS, 2.0, 0.0, 1.0, 0.0, 1.0, 0.0, 12.34]]


def test_a_state_without_week_and_period_rows_reads_as_empty_ones() -> None:
    d = _rich_state().to_dict()
    del d["w"], d["q"]
    back = UserState.from_dict(d)
    assert back.weeks == {} and back.periods == {}
    assert back.days == _rich_state().days


def test_apply_events_does_not_mutate_its_input() -> None:
    s = _rich_state()
    snapshot = orjson.dumps(s.to_dict())
    feed = Feed()
    feed.offset, feed.n = 100, 100
    evs = [
        feed("purchase", NOW + DAY_MS, amount=50.0, category="new"),
        feed("view", NOW + DAY_MS, event_id="e1"),  # a duplicate of one in s's ring
    ]
    r = apply_events(s, evs)
    assert r.state is not s
    assert len(r.applied) == 1
    assert orjson.dumps(s.to_dict()) == snapshot
    # A state from replayed events only is still a copy.
    r2 = apply_events(s, [])
    assert r2.state is not s and r2.state == s


def test_apply_result_counts_are_consistent() -> None:
    feed = Feed()
    first = apply_events(None, [feed("view", NOW, event_id="d")]).state
    evs = [
        feed("view", NOW, event_id="d"),  # duplicate
        feed("view", NOW - 400 * DAY_MS),  # late
        feed("click", NOW - HOUR_MS),  # applied
    ]
    r = apply_events(first, evs + evs[:1])  # last one replayed by offset
    assert (len(r.applied), r.duplicates, r.late, r.replayed) == (1, 1, 1, 1)


def test_feature_names_are_what_compute_features_returns() -> None:
    assert tuple(compute_features(UserState(last_event_ms=NOW, first_seen_ms=NOW))) == (
        FEATURE_NAMES
    )


def _shopper() -> UserState:
    """A customer with orders spread over ten months, last seen at NOW."""
    feed = Feed()
    evs = [
        feed("purchase", NOW - 300 * DAY_MS, amount=80.0),
        feed("purchase", NOW - 120 * DAY_MS, amount=40.0),
        feed("purchase", NOW - 20 * DAY_MS, amount=25.5),
        feed("view", NOW - 3 * DAY_MS, category="books"),
        feed("purchase", NOW - 2 * DAY_MS, amount=14.5),
        feed("view", NOW, category="toys"),
    ]
    return apply_events(None, evs).state


def test_long_windows_lifetime_totals_and_rfm() -> None:
    f = compute_features(_shopper())
    assert (f["purchases_7d"], f["purchases_30d"], f["purchases_90d"]) == (1, 2, 2)
    assert (f["purchases_365d"], f["purchases_lifetime"]) == (4, 4)
    assert (f["spend_30d"], f["spend_90d"], f["spend_365d"]) == (40.0, 40.0, 160.0)
    assert f["spend_lifetime"] == 160.0
    assert f["events_365d"] == 6.0 and f["views_90d"] == 2.0
    # RFM frequency and monetary default to the 365 d horizon.
    assert (f["frequency"], f["monetary"]) == (4.0, 160.0)
    assert f["avg_order_value"] == 40.0
    assert f["days_since_last_purchase"] == 2.0
    assert f["days_since_last_event"] == 0.0
    assert f["tenure_days"] == 300.0


@pytest.mark.parametrize(
    ("horizon", "frequency", "monetary"),
    [("30d", 2.0, 40.0), ("90d", 2.0, 40.0), ("365d", 4.0, 160.0), ("lifetime", 4.0, 160.0)],
)
def test_rfm_horizon(horizon: str, frequency: float, monetary: float) -> None:
    f = compute_features(_shopper(), rfm_horizon=horizon)
    assert (f["frequency"], f["monetary"]) == (frequency, monetary)
    # The horizon changes nothing else.
    others = {k: v for k, v in f.items() if k not in ("frequency", "monetary")}
    base = compute_features(_shopper())
    assert others == {k: v for k, v in base.items() if k not in ("frequency", "monetary")}


def test_an_unknown_rfm_horizon_is_refused() -> None:
    with pytest.raises(ValueError, match="rfm_horizon must be one of 30d, 90d, 365d, lifetime"):
        compute_features(_shopper(), rfm_horizon="7d")


def test_features_as_of_a_later_watermark() -> None:
    st = _shopper()
    f = compute_features(st, now_ms=NOW + 45 * DAY_MS)
    # The short windows emptied with no event of the user's own ...
    for w in ("1h", "24h", "7d", "30d"):
        assert f[f"events_{w}"] == 0.0, w
    assert f["spend_30d"] == 0.0 and f["conversion_rate_30d"] == 0.0
    # ... recency and tenure grew with the watermark ...
    assert f["days_since_last_purchase"] == 47.0
    assert f["days_since_last_event"] == 45.0
    assert f["tenure_days"] == 345.0
    # ... categories were seen more than 30 days before it ...
    assert f["category_diversity_30d"] == 0.0
    # ... and the 365 d frequency still counts the older orders, but for the one now 345
    # days old (the 13 periods reach back 337 to 364 days; from here, not that far).
    assert f["frequency"] == 3.0 and f["monetary"] == 80.0
    assert f["purchases_90d"] == 2.0  # 47 and 65 days before the watermark
    # Lifetime totals and the order value never age.
    assert (f["purchases_lifetime"], f["spend_lifetime"], f["avg_order_value"]) == (4, 160, 40)
    # The state itself is what it was: only the clock moved.
    assert compute_features(st) == compute_features(_shopper())


def test_a_year_after_the_last_event_only_lifetime_totals_remain() -> None:
    f = compute_features(_shopper(), now_ms=NOW + 400 * DAY_MS)
    assert all(f[f"events_{w}"] == 0.0 for w in ("1h", "24h", "7d", "30d", "90d", "365d"))
    assert (f["frequency"], f["monetary"]) == (0.0, 0.0)
    assert (
        compute_features(_shopper(), now_ms=NOW + 400 * DAY_MS, rfm_horizon="lifetime")["frequency"]
        == 4.0
    )
    assert f["purchases_lifetime"] == 4.0 and f["spend_lifetime"] == 160.0
    # Days are not capped here (the model caps them): a reader sees the real age.
    assert f["days_since_last_event"] == 400.0 and f["days_since_last_purchase"] == 402.0


def test_a_watermark_behind_the_users_last_event_is_ignored() -> None:
    st = _shopper()
    assert compute_features(st, now_ms=NOW - 10 * DAY_MS) == compute_features(st)
    assert compute_features(st, now_ms=NOW) == compute_features(st)
    assert compute_features(st, now_ms=0) == compute_features(st)


def test_never_bought_has_no_recency_even_as_of_a_later_watermark() -> None:
    feed = Feed()
    st = apply_events(None, [feed("view", NOW)]).state
    f = compute_features(st, now_ms=NOW + 10 * DAY_MS)
    assert f["days_since_last_purchase"] is None
    assert f["days_since_last_event"] == 10.0
    assert (f["frequency"], f["monetary"], f["purchases_lifetime"]) == (0.0, 0.0, 0.0)


def test_a_300_day_old_event_is_not_late_but_a_400_day_old_one_is() -> None:
    feed = Feed()
    first = apply_events(None, [feed("view", NOW)]).state
    r = apply_events(
        first,
        [
            feed("purchase", NOW - 300 * DAY_MS, amount=60.0),
            feed("purchase", NOW - 400 * DAY_MS, amount=99.0),
        ],
    )
    assert r.late == 1
    assert [e.ts_ms for e in r.applied] == [NOW - 300 * DAY_MS]
    f = compute_features(r.state)
    assert (f["purchases_365d"], f["spend_365d"], f["frequency"]) == (1.0, 60.0, 1.0)
    assert (f["purchases_lifetime"], f["spend_lifetime"]) == (1.0, 60.0)
    assert f["days_since_last_purchase"] == 300.0
    assert f["tenure_days"] == 300.0
    assert r.state.first_seen_ms == NOW - 300 * DAY_MS


def test_long_buckets_are_pruned_to_what_the_windows_keep() -> None:
    feed = Feed()
    evs = [feed("view", NOW - d * DAY_MS) for d in range(0, 364, 7)]
    s = apply_events(None, evs).state
    # 13 weeks and 13 periods at most, 30 days; minutes and hours only near the latest.
    assert set(s.weeks) == set(range(NOW // WEEK_MS - 12, NOW // WEEK_MS + 1))
    assert set(s.periods) <= set(range(NOW // PERIOD_MS - 12, NOW // PERIOD_MS + 1))
    assert len(s.days) == 5  # days 0, 7, 14, 21 and 28
    assert len(s.hours) == 1 and len(s.minutes) == 1
    assert s.lifetime[0] == 52.0  # every view counts in the lifetime total


def test_price_level_is_the_geometric_mean_with_older_prices_weighing_less() -> None:
    feed = Feed()
    assert features_of([feed("view", NOW)])["price_level"] == 0.0  # no price seen
    feed = Feed()
    evs = [feed("view", NOW - PRICE_HALF_LIFE_MS, price=99.0), feed("click", NOW, price=9.0)]
    # The older price weighs half: log1p-mean (0.5 ln 100 + ln 10) / 1.5 = ln 10 ** (4 / 3).
    assert features_of(evs)["price_level"] == pytest.approx(10 ** (4 / 3) - 1, abs=0.005)
    # Any event with a price counts, a purchase's too; the watermark does not move it.
    more = [*evs, feed("purchase", NOW, price=9.0, amount=9.0)]
    state = apply_events(None, more).state
    level = compute_features(state)["price_level"]
    assert 9.0 < level < features_of(evs)["price_level"]
    assert compute_features(state, NOW + 400 * DAY_MS)["price_level"] == level == price_level(state)


@pytest.mark.parametrize("seed", range(6))
def test_price_state_is_the_same_bit_for_bit_whatever_the_batches(seed: int) -> None:
    rng = random.Random(seed)
    feed = Feed()
    # Events over most of a year, in order: many half-lives, so the reference moves.
    times = sorted(NOW - rng.randrange(RETENTION_MS - DAY_MS) for _ in range(60))
    events = [feed("view", t, price=round(rng.uniform(0, 900), 2)) for t in times]
    whole = apply_events(None, events).state
    for size in (1, 7, 23):
        state: UserState | None = None
        for lo in range(0, len(events), size):
            state = apply_events(state, events[lo : lo + size]).state
        assert state is not None
        assert (state.price_sum, state.price_weight) == (whole.price_sum, whole.price_weight)


def test_prices_older_than_sixty_half_lives_are_forgotten() -> None:
    feed = Feed()
    old = apply_events(None, [feed("view", NOW, price=1000.0)]).state
    later = NOW + 61 * PRICE_HALF_LIFE_MS
    assert price_level(apply_events(old, [feed("view", later, price=10.0)]).state) == 10.0
    # Within sixty, the old price still weighs: here a 32nd of the new one.
    feed = Feed()
    old = apply_events(None, [feed("view", NOW, price=1000.0)]).state
    near = NOW + 5 * PRICE_HALF_LIFE_MS
    assert price_level(apply_events(old, [feed("view", near, price=10.0)]).state) > 10.0
